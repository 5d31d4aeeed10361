"""The loop and its seams: the trainer knows no technique, each technique is one registered module, and a
callback sees every event of a real run in order (and is checkpointed)."""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

import pytest
import torch
from conftest import REPO, TINY

from dist_train.assemble import build_trainer
from dist_train.callbacks import Callback
from dist_train.config import Config, load_config
from dist_train.distributed import distributed
from dist_train.techniques import TECHNIQUES
from dist_train.techniques.diffusion import WeightDistance
from dist_train.techniques.ghost_bn import GhostBN
from dist_train.techniques.rank_health import StragglerReport

PACKAGE = REPO / "dist_train"


def test_the_trainer_is_a_loop_that_names_no_technique():
    source = (PACKAGE / "trainer.py").read_text()
    assert len(source.splitlines()) <= 250
    for word in ("ghost", "swap", "straggler", "diffusion"):
        assert word not in source.lower(), f"trainer.py mentions {word}"


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"


def test_every_technique_is_one_module_with_its_method_card_and_a_config_section():
    sections = {f.name for f in fields(Config)}
    assert len({t.name for t in TECHNIQUES}) == len(TECHNIQUES)
    for technique in TECHNIQUES:
        module = importlib.import_module(technique.module)
        assert "Method card" in (module.__doc__ or ""), f"{technique.module} has no method card"
        assert technique.section in sections, technique


class Recorder(Callback):
    """Records every event with what the loop shows at that point."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.loaded: dict[str, Any] | None = None

    def setup(self, model: torch.nn.Module) -> None:
        self.events.append(("setup", type(model).__name__))

    def on_epoch_start(self, trainer, epoch):
        self.events.append(("on_epoch_start", epoch))

    def step_batches(self, trainer, batches):
        self.events.append(("step_batches", trainer.step))
        return batches

    def before_optimizer_step(self, trainer):
        grads = [p.grad for p in trainer.module.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        self.events.append(("before_optimizer_step", (trainer.step, norm)))

    def on_step_end(self, trainer):
        self.events.append(("on_step_end", trainer.step))

    def on_log(self, trainer, values):
        values["recorder/step"] = float(trainer.step)
        self.events.append(("on_log", trainer.step))

    def on_epoch_end(self, trainer, values):
        self.events.append(("on_epoch_end", trainer.epoch))

    def on_fit_end(self, trainer):
        self.events.append(("on_fit_end", trainer.step))
        return {"recorded_events": len(self.events)}

    def state_dict(self):
        return {"events": len(self.events)}

    def load_state_dict(self, state):
        self.loaded = state


@pytest.mark.slow
def test_a_callback_sees_every_event_in_order_and_is_checkpointed(tmp_path):
    overrides = [*TINY, "train.epochs=1", "train.grad_clip_norm=1e-6", f"out_dir={tmp_path}", "name=seam"]
    cfg = load_config(None, overrides)
    recorder = Recorder()
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx, [recorder])
        try:
            summary = trainer.fit()
        finally:
            trainer.monitor.close()
    kinds = [kind for kind, _ in recorder.events]
    steps = trainer.step
    assert kinds[:3] == ["setup", "step_batches", "on_epoch_start"]
    assert kinds.count("before_optimizer_step") == kinds.count("on_step_end") == steps == 16
    assert kinds[-2:] == ["on_epoch_end", "on_fit_end"]
    # before the optimizer step: this step's gradients, not yet clipped to grad_clip_norm
    norms = [value[1] for kind, value in recorder.events if kind == "before_optimizer_step"]
    assert all(norm > 1e-3 for norm in norms)
    logged = [value for kind, value in recorder.events if kind == "on_log"]
    assert logged == list(range(cfg.train.log_every, steps + 1, cfg.train.log_every))
    metrics = (tmp_path / "seam" / "metrics.jsonl").read_text()
    assert '"recorder/step": 4.0' in metrics  # what on_log added was logged with the step's record
    assert summary["recorded_events"] == len(recorder.events)
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    assert state["callbacks"]["recorder"] == {"events": len(recorder.events) - 1}  # saved before on_fit_end

    again = Recorder()  # the same run again resumes from its checkpoint: the callback gets its state back
    with distributed(cfg.device) as ctx:
        build_trainer(load_config(None, overrides), ctx, [again]).monitor.close()
    assert again.loaded == {"events": len(recorder.events) - 1}


@pytest.mark.slow
def test_the_techniques_a_config_switches_on_are_its_callbacks(tmp_path):
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}", "diffusion.every_steps=4", "bn.ghost_batch_size=8"])
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        trainer.monitor.close()
    kinds = [type(c) for c in trainer.callbacks]
    assert kinds == [GhostBN, WeightDistance, StragglerReport]
    assert any(type(m).__name__ == "GhostBatchNorm2d" for m in trainer.module.modules())
    plain = load_config(None, [*TINY, f"out_dir={tmp_path}", "name=plain"])
    with distributed(plain.device) as ctx:
        trainer = build_trainer(plain, ctx)
        trainer.monitor.close()
    assert [type(c) for c in trainer.callbacks] == [GhostBN, StragglerReport]
    quiet = load_config(None, [*TINY, f"out_dir={tmp_path}", "name=quiet", "train.rank_health=false"])
    with distributed(quiet.device) as ctx:
        trainer = build_trainer(quiet, ctx)
        trainer.monitor.close()
    assert [type(c) for c in trainer.callbacks] == [GhostBN]
