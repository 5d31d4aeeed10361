"""The Trainer in one process: accumulation, precision and memory-format paths, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY
from torch import nn
from torch.utils.data import TensorDataset

from dist_train.assemble import build_trainer
from dist_train.config import load_config
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.debug import HostReadCounter
from dist_train.distributed import distributed
from dist_train.monitor import NullMonitor
from dist_train.optim import Schedule, build_optimizer, build_scheduler
from dist_train.trainer import Trainer


def linear_trainer(grad_accum_steps: int, batch_size: int = 32, *overrides: str) -> Trainer:
    """A BN-free model, so that micro-batching cannot change the maths."""
    cfg = load_config(None, [f"train.grad_accum_steps={grad_accum_steps}", f"data.batch_size={batch_size}", *overrides])
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(128, 6, generator=generator), torch.randint(0, 3, (128,), generator=generator))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    loader = build_train_loader(dataset, LoaderOptions(batch_size // grad_accum_steps, grad_accum_steps))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, Schedule.from_config(cfg.schedule, loader.steps_per_epoch, 1))
    with distributed("cpu") as ctx:
        return Trainer(cfg, ctx, model, optimizer, scheduler, loader, None, NullMonitor(), None)


def test_gradient_accumulation_equals_the_large_batch():
    plain, accumulated = linear_trainer(1), linear_trainer(4)
    assert plain.train_loader.steps_per_epoch == accumulated.train_loader.steps_per_epoch == 4
    result_plain, result_accumulated = plain.train_epoch(0), accumulated.train_epoch(0)
    assert plain.step == accumulated.step == 4
    assert result_plain.loss == pytest.approx(result_accumulated.loss, rel=1e-6)
    for a, b in zip(plain.module.parameters(), accumulated.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def train_in_process(tmp_path, *overrides: str) -> tuple[Trainer, dict]:
    cfg = load_config(None, [*TINY, "train.epochs=1", f"out_dir={tmp_path}", *overrides])
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        try:
            return trainer, trainer.fit()
        finally:
            trainer.monitor.close()


@pytest.mark.slow
def test_bf16_autocast_and_channels_last(tmp_path):
    trainer, summary = train_in_process(tmp_path, "train.precision=bf16", "train.channels_last=true")
    conv = next(m for m in trainer.module.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.dtype == torch.float32  # autocast keeps fp32 master weights
    assert math.isfinite(summary["val_loss"]) and summary["steps"] == 16


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first, _ = train_in_process(tmp_path / "a")
    second, _ = train_in_process(tmp_path / "b")
    third, _ = train_in_process(tmp_path / "c", "seed=1")
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    differs = [not torch.equal(a, c) for a, c in zip(first.module.parameters(), third.module.parameters(), strict=True)]
    assert all(differs)


@pytest.mark.slow
def test_torch_compile(tmp_path):
    trainer, summary = train_in_process(tmp_path, "model.name=mnist_f1", "model.width=32", "train.compile=true")
    assert type(trainer.model).__name__ == "OptimizedModule"
    assert math.isfinite(summary["val_loss"]) and summary["steps"] == 16


def test_gradient_clipping_bounds_the_update():
    """Plain SGD with the global gradient norm clipped to c moves the weights by at most lr·c per step."""
    plain = ["optim.momentum=0", "optim.weight_decay=0", "schedule.name=constant", "optim.lr=1.0"]
    clipped = linear_trainer(1, 32, *plain, "train.grad_clip_norm=0.01")
    free = linear_trainer(1, 32, *plain)
    before = torch.cat([p.detach().flatten() for p in clipped.module.parameters()])
    clipped.train_step([next(iter(clipped.train_loader.epoch(0)))])
    free.train_step([next(iter(free.train_loader.epoch(0)))])
    moved = torch.cat([p.detach().flatten() for p in clipped.module.parameters()]) - before
    free_moved = torch.cat([p.detach().flatten() for p in free.module.parameters()]) - before
    assert moved.norm() == pytest.approx(0.01, rel=1e-4)
    assert free_moved.norm() > 0.05  # the unclipped gradient is much larger


@pytest.mark.slow
def test_evaluation_every_n_epochs_and_at_the_end(tmp_path):
    _, summary = train_in_process(tmp_path, "train.epochs=3", "train.eval_every=2")
    assert summary["epochs"] == 3 and math.isfinite(summary["val_acc"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val/acc" in r] == [2, 3]
    assert [r["epoch"] for r in records if "train/loss" in r] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("train.grad_clip_norm=1.0", "bn.ghost_batch_size=8", "train.precision=bf16", "train.channels_last=true"),
    ],
    ids=["plain", "clip-ghostbn-bf16-channels_last"],
)
def test_steps_read_no_tensor_value_and_metrics_are_read_at_log_steps(tmp_path, overrides):
    """No training step brings a tensor's value to the host (on a GPU each such read waits for the device):
    every Python-level read (.item(), float(t), if t:, .tolist(), .cpu(), ...) is recorded by a
    TorchFunctionMode around each step, including the steps that compute the logged gradient norm. The
    trainer itself reads metrics only at train.log_every boundaries (one read) and at the epoch's end."""
    cfg = load_config(None, [*TINY, "train.epochs=1", "train.log_every=4", f"out_dir={tmp_path}", *overrides])
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        in_steps: list[list] = []

        def guard() -> HostReadCounter:
            counter = HostReadCounter(lambda: trainer.step)
            in_steps.append(counter.reads)
            return counter

        trainer.step_guard = guard
        whole_epoch = HostReadCounter(lambda: trainer.step)
        try:
            with whole_epoch:
                trainer.train_epoch(0)
        finally:
            trainer.monitor.close()
    assert trainer.step == len(in_steps) == 16
    assert [reads for reads in in_steps if reads] == []
    by_trainer = [(step, where) for step, where in whole_epoch.reads if "dist_train/trainer.py" in where]
    assert [step for step, _ in by_trainer] == [4, 8, 12, 16, 16], by_trainer  # 4 logs, then the epoch's totals
    assert all(where.startswith("tolist at") for _, where in by_trainer)


@pytest.mark.slow
def test_the_noise_scale_reads_the_host_only_at_its_measured_steps(tmp_path):
    """noise_scale.every_steps=5 (one process, 2 micro-batches): one read inside steps 5, 10 and 15, from the
    measurement itself, and none in the other steps."""
    overrides = ["train.epochs=1", "train.grad_accum_steps=2", "noise_scale.every_steps=5", f"out_dir={tmp_path}"]
    cfg = load_config(None, [*TINY, *overrides])
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        in_steps: list[tuple[int, list]] = []

        def guard() -> HostReadCounter:
            counter = HostReadCounter(lambda: trainer.step)
            in_steps.append((trainer.step + 1, counter.reads))
            return counter

        trainer.step_guard = guard
        try:
            trainer.train_epoch(0)
        finally:
            trainer.monitor.close()
    read = {step: reads for step, reads in in_steps if reads}
    assert sorted(read) == [5, 10, 15]
    assert all(len(reads) == 1 and "noise_scale.py" in reads[0][1] for reads in read.values()), read


def test_host_read_counter_sees_every_kind_of_read():
    t, flag = torch.tensor([1.5]), torch.tensor(True)
    with HostReadCounter(lambda: "here") as counter:
        t.item(), t.tolist(), float(t), int(t), t.cpu(), t.numpy(), f"{t[0]:.1f}"
        if flag:
            pass
    names = [where.split(" at ")[0] for _, where in counter.reads]
    assert names == ["item", "tolist", "__float__", "__int__", "cpu", "numpy", "__format__", "__bool__"]
    assert {label for label, _ in counter.reads} == {"here"}
    assert all("test_trainer.py" in where for _, where in counter.reads)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_gets_the_configured_layout_whatever_the_loader_hands(channels_last):
    """An NHWC-strided batch (as DALI may hand one) reaches the model contiguous, or channels_last when asked:
    a layout the model's parameters do not share makes DDP's gradient buckets copy (torch's "Grad strides do
    not match bucket view strides" warning)."""
    trainer = linear_trainer(1, 32, f"train.channels_last={str(channels_last).lower()}")
    nhwc = torch.randn(4, 6, 6, 3).permute(0, 3, 1, 2)  # N, C, H, W with channels-last strides
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    for given in (nhwc, nhwc.contiguous()):
        images, _ = trainer.to_device(given, torch.zeros(4, dtype=torch.long))
        assert images.is_contiguous(memory_format=wanted) and torch.equal(images, given)
