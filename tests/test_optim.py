"""Optimizer parameter groups and the per-step lr schedule."""

import math
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY, assert_ok, load_weights, run_cli, subprocess_env
from torch import nn

from dist_train.config import OptimConfig, ScheduleConfig
from dist_train.optim import Schedule, build_optimizer, build_scheduler


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_weight_decay_can_exclude_bn_and_bias():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, decay_bn_and_bias=False))
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(exempt["params"]) == 4  # conv bias, bn weight, bn bias, linear bias
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1


def test_sgd_and_adamw_settings():
    sgd = build_optimizer(small_model(), OptimConfig(nesterov=True, momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(small_model(), OptimConfig(name="adamw", lr=1e-3, betas=[0.8, 0.9]))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)


def test_step_schedule_with_warmup():
    cfg = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1, warmup_epochs=1)
    schedule = Schedule.from_config(cfg, steps_per_epoch=10, epochs=5)
    assert schedule(0) == 0.0 and schedule(5) == pytest.approx(0.5)
    assert schedule(10) == 1.0 and schedule(19) == 1.0
    assert schedule(20) == pytest.approx(0.1) and schedule(40) == pytest.approx(0.01)


def test_cosine_schedule_reaches_floor():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_factor=0.1)
    schedule = Schedule.from_config(cfg, steps_per_epoch=10, epochs=11)
    assert schedule(10) == 1.0
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule(110) == pytest.approx(0.1)


def test_scheduler_drives_optimizer_lr():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(lr=0.4))
    scheduler = build_scheduler(opt, Schedule.from_config(ScheduleConfig(warmup_steps=4), 10, 1))
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_step_schedule_with_explicit_factors():
    cfg = ScheduleConfig(name="step", milestones=[60, 120, 140], factors=[0.2, 0.04, 0.001])
    schedule = Schedule.from_config(cfg, steps_per_epoch=1, epochs=160)
    assert [schedule(s) for s in (0, 59, 60, 120, 140, 159)] == pytest.approx([1, 1, 0.2, 0.04, 0.001, 0.001])


def one_step(cfg: OptimConfig) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One optimizer step of ``small_model`` on a fixed batch: the model after it, its weights and gradients
    before."""
    torch.manual_seed(0)
    model = small_model()
    loss = model(torch.randn(8, 3, 3, 3)).square().mean()
    loss.backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    build_optimizer(model, cfg).step()
    return model, before, grads


def test_lars_adapts_weights_by_their_trust_ratio_and_leaves_norms_and_biases_plain_sgd():
    """MLPerf's exclusion (decay_bn_and_bias: false): a conv weight's update is scaled by its trust ratio
    η|w| / (|g| + wd|w| + eps); a BN weight's is momentum SGD's first step, -lr·g."""
    pytest.importorskip("timm", reason="LARS is timm's (pip install 'dist_train[timm]')")
    cfg = OptimConfig(name="lars", lr=0.5, weight_decay=0.01, decay_bn_and_bias=False)
    cfg.lars.trust_coefficient = 0.02
    model, before, grads = one_step(cfg)
    after = dict(model.named_parameters())
    w, g = before["0.weight"], grads["0.weight"]
    trust = 0.02 * w.norm() / (g.norm() + 0.01 * w.norm() + cfg.lars.eps)
    torch.testing.assert_close(after["0.weight"], w - 0.5 * trust * (g + 0.01 * w))
    for name in ("1.weight", "1.bias", "0.bias", "3.bias"):
        torch.testing.assert_close(after[name], before[name] - 0.5 * grads[name])
    assert not torch.allclose(after["0.weight"], w - 0.5 * g)  # the adaptation did something
    cfg.weight_decay = 0.0  # without weight decay the weights are still adapted (timm alone would not)
    model, before, grads = one_step(cfg)
    w, g = before["0.weight"], grads["0.weight"]
    trust = 0.02 * w.norm() / (g.norm() + cfg.lars.eps)
    torch.testing.assert_close(dict(model.named_parameters())["0.weight"], w - 0.5 * trust * g)


def test_lamb_leaves_norms_and_biases_out_of_the_trust_ratio():
    """LAMB's first step on an excluded parameter is Adam's, lr·g/(|g| + eps) elementwise; on a decayed weight
    it is that update (plus the decay) scaled to the weight's norm, |w| / |update|."""
    pytest.importorskip("timm", reason="LAMB is timm's (pip install 'dist_train[timm]')")
    cfg = OptimConfig(name="lamb", lr=0.01, weight_decay=0.1, decay_bn_and_bias=False)
    cfg.lamb.max_grad_norm = 0.0  # no global clipping: the formula below is the update alone
    model, before, grads = one_step(cfg)
    after = dict(model.named_parameters())
    for name in ("1.weight", "1.bias"):
        adam = grads[name] / (grads[name].abs() + cfg.lamb.eps)
        torch.testing.assert_close(after[name], before[name] - 0.01 * adam)
    w, g = before["0.weight"], grads["0.weight"]
    update = g / (g.abs() + cfg.lamb.eps) + 0.1 * w
    torch.testing.assert_close(after["0.weight"], w - 0.01 * (w.norm() / update.norm()) * update)


def test_a_missing_timm_is_one_line_naming_the_extra(tmp_path):
    """Without timm installed (hidden from the import system), optim.name=lars is refused in one line."""
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "from dist_train.cli import main\n"
        "sys.exit(main(['train', 'optim.name=lars', 'train.epochs=1', 'data.synthetic_train_size=256', "
        "'data.num_workers=0', 'out_dir=' + sys.argv[1]]))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "dist-train: error: optim.name=lars needs timm, which is not installed: pip install 'dist_train[timm]' "
        "(or timm)"
    ], result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_poly_schedule_decays_to_its_floor_with_its_power():
    cfg = ScheduleConfig(name="poly", warmup_steps=10, power=2.0, min_lr_factor=0.01)
    schedule = Schedule.from_config(cfg, steps_per_epoch=10, epochs=11)
    assert schedule(5) == pytest.approx(0.5) and schedule(10) == 1.0
    assert schedule(60) == pytest.approx(0.01 + 0.99 * 0.25)  # halfway: (1 - 1/2)^2
    assert schedule(110) == pytest.approx(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_resume_exactly_from_a_mid_epoch_checkpoint(tmp_path, name):
    """A run killed after a step checkpoint resumes with the optimizer's state (momentum buffers, Adam moments)
    and ends with the weights of a run never stopped, bit for bit (poly decay with warm-up, label smoothing)."""
    pytest.importorskip("timm", reason="LARS and LAMB are timm's (pip install 'dist_train[timm]')")
    args = [
        "train",
        *TINY,
        "data.synthetic_train_size=2048",
        f"optim.name={name}",
        "optim.lr=0.02" if name == "lamb" else "optim.lr=2.0",
        "optim.decay_bn_and_bias=false",
        "schedule.name=poly",
        "schedule.warmup_epochs=0.5",
        "train.label_smoothing=0.1",
        "checkpoint.every_steps=10",
        f"out_dir={tmp_path}",
    ]
    assert_ok(run_cli([*args, "name=straight"]))
    process = subprocess.Popen(
        [sys.executable, "-m", "dist_train", *args, "name=cut"],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.kill()
    process.wait()
    state = torch.load(last, weights_only=True)
    assert state["epoch_progress"] is not None and state["optimizer"]["state"]  # its buffers are in it
    assert_ok(run_cli(["unlock", str(tmp_path / "cut")]))
    assert_ok(run_cli([*args, "name=cut"]))
    for key, tensor in load_weights(tmp_path / "straight").items():
        assert torch.equal(tensor, load_weights(tmp_path / "cut")[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_on_a_plugin_model_over_two_ranks_resume_to_the_uninterrupted_weights(tmp_path, name):
    """2 ranks, a plug-in model: 1 epoch, then a resume for the 2nd, ends with the weights of 2 epochs straight."""
    pytest.importorskip("timm", reason="LARS and LAMB are timm's (pip install 'dist_train[timm]')")
    args = ["train", *TINY, f"optim.name={name}", "optim.decay_bn_and_bias=false", "model.width=8"]
    args += ["model.name=examples/own_model/nets.py:build", "schedule.name=constant", "schedule.warmup_steps=4"]
    args += ["optim.lr=0.01" if name == "lamb" else "optim.lr=1.0", f"out_dir={tmp_path}"]
    assert_ok(run_cli([*args, "name=straight"], nproc=2))
    assert_ok(run_cli([*args, "name=split", "train.epochs=1"], nproc=2))
    assert_ok(run_cli([*args, "name=split", "on_config_change=continue"], nproc=2))
    for key, tensor in load_weights(tmp_path / "straight").items():
        assert torch.equal(tensor, load_weights(tmp_path / "split")[key]), key
