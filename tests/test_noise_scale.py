"""The gradient noise scale: the estimator, the measurement against per-sample gradients, its logs, and the
prediction the CLI prints from it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY, assert_ok, load_weights, read_metrics, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.func import functional_call, grad, vmap

from dist_train.assemble import build_trainer
from dist_train.batch_prediction import Measured, describe_prediction, estimates, given_noise_scale, parse_batches
from dist_train.config import load_config
from dist_train.distributed import distributed
from dist_train.errors import DistTrainError

# -- the estimator and the prediction ----------------------------------------------------------------------


def test_estimates_recover_the_gradient_and_the_noise_of_gaussian_samples():
    """Per-sample gradients g ~ N(G, Σ): the two-batch estimates, averaged over draws, give |G|² and tr(Σ)."""
    generator = torch.Generator().manual_seed(0)
    dim, small, big, draws = 50, 8, 64, 4000
    mean = torch.randn(dim, generator=generator, dtype=torch.float64) * 0.3
    scales = torch.rand(dim, generator=generator, dtype=torch.float64) * 2
    samples = mean + scales * torch.randn(draws, big, dim, generator=generator, dtype=torch.float64)
    sq_small = samples[:, :small].mean(1).square().sum(1)
    sq_big = samples.mean(1).square().sum(1)
    grad_sq, trace = estimates(small, float(sq_small.mean()), big, float(sq_big.mean()))
    assert grad_sq == pytest.approx(float(mean.square().sum()), rel=0.05)
    assert trace == pytest.approx(float(scales.square().sum()), rel=0.02)


def test_prediction_table_and_critical_batch():
    text = describe_prediction(Measured(256.0, 3, 64, [(1, 100.0), (3, 256.0)]), [64, 256, 1024])
    lines = text.splitlines()
    assert lines[0] == "critical batch ≈ 256 at epoch 3 (this run's batch: 64)"
    assert lines[1] == "B_simple by epoch: 1: 100, 3: 256"
    rows = {int(line.split()[0]): line.split() for line in lines[3:]}
    assert rows[256][1:3] == ["2.00", "2.00"]  # at B = B_noise: twice the minimum steps and samples
    assert rows[64][1:] == ["5.00", "1.25", "1.00×", "<-", "this", "run"]
    assert rows[1024][1:4] == ["1.25", "5.00", "0.25×"]  # 1/4 of this run's steps (1.25 / 5), 5× the minimum samples


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--noise-scale must be a positive number, got 0"),
        ("nan", "must be a positive number"),
        ("no/such/run", "--noise-scale 'no/such/run': neither a number nor a run directory"),
    ],
)
def test_a_bad_noise_scale_is_one_line(value, message):
    with pytest.raises(DistTrainError, match=re.escape(message)):
        given_noise_scale(value, 128)


def test_batch_sizes_parse_or_fail_in_one_line():
    assert parse_batches("256,64, 64,1024") == [64, 256, 1024]
    for bad in ("", "64,x", "0,8"):
        with pytest.raises(DistTrainError, match="--batch-sizes must be positive integers"):
            parse_batches(bad)


@pytest.mark.slow
def test_plan_prints_the_prediction_and_refuses_a_bad_value(tmp_path):
    result = run_cli(["plan", "--config", "configs/quickstart.yaml", "--noise-scale", "512"])
    assert_ok(result)
    assert "total updates" in result.stdout and "critical batch ≈ 512 (this run's batch: 128)" in result.stdout
    assert "    128          5.00            1.25               1.00×  <- this run" in result.stdout
    bad = run_cli(["plan", "--config", "configs/quickstart.yaml", "--noise-scale", "-3"])
    assert bad.returncode == 1 and bad.stdout == ""  # nothing printed before the error
    assert bad.stderr.strip() == "dist-train: error: --noise-scale must be a positive number, got -3"
    unmeasured = tmp_path / "run"
    unmeasured.mkdir()
    missing = run_cli(["noise", str(unmeasured)])
    assert missing.returncode == 1 and "no gradient noise scale measured" in missing.stderr


# -- the measurement against the truth ------------------------------------------------------------------------

# A model without BatchNorm at fixed weights (lr 1e-20 moves no fp32 weight), measured at every step, each
# measurement on its own (ema_decay=0): the mean over 4 epochs against per-sample gradients of the whole set.
FIXED = [
    "data.dataset=synthetic",
    "data.num_workers=0",
    "data.batch_size=256",
    "data.synthetic_train_size=8192",
    "data.synthetic_val_size=256",
    "data.image_size=8",
    f"model.name={REPO}/tests/workers/plain_mlp.py:build",
    "model.kwargs.logit_shift=0.8",  # B_noise ≈ 140 at initialisation, between the two batch sizes
    "optim.lr=1e-20",
    "optim.momentum=0",
    "optim.weight_decay=0",
    "train.log_every=64",
    "train.epochs=4",
    "noise_scale.every_steps=1",
    "noise_scale.ema_decay=0",
]
LAUNCHES = {"2 ranks": (2, []), "1 process, 4 micro-batches": (1, ["train.grad_accum_steps=4"])}


def exact_noise_scale(run_dir: Path) -> float:
    """tr(Σ)/|G|² from every training sample's own gradient (torch.func), at the run's (fixed) weights."""
    cfg = load_config(None, [*FIXED, f"out_dir={run_dir.parent}", "name=exact", "train.rank_health=false"])
    with distributed(cfg.device) as ctx:
        trainer = build_trainer(cfg, ctx)
        try:
            batches = list(trainer.train_loader.epoch(0))
        finally:
            trainer.monitor.close()
    model = trainer.module
    model.load_state_dict(load_weights(run_dir))
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (image[None],)), label[None])

    total, squares, count = 0, 0.0, 0
    for images, labels in batches:
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
        flat = torch.cat([g.reshape(len(labels), -1) for g in per_sample.values()], 1).double()
        total, squares, count = total + flat.sum(0), squares + float(flat.square().sum()), count + len(labels)
    mean = total / count
    grad_sq = float(mean.square().sum())
    return (squares / count - grad_sq) / grad_sq


def mean_measurement(run_dir: Path) -> tuple[float, list[dict]]:
    """The ratio of the mean |G|² and tr(Σ) over a run's measurements, and the measurements."""
    rows = [r for r in read_metrics(run_dir) if "noise/grad_sq" in r and "train/loss" not in r]
    grad_sq = sum(r["noise/grad_sq"] for r in rows) / len(rows)
    return sum(r["noise/trace_sigma"] for r in rows) / len(rows) / grad_sq, rows


@pytest.fixture(scope="module")
def fixed_runs(tmp_path_factory) -> dict[str, Path]:
    """The fixed-weight measurement at 2 ranks and with 4 micro-batches in one process."""
    root = tmp_path_factory.mktemp("noise")
    runs = {}
    for label, (nproc, extra) in LAUNCHES.items():
        name = label.replace(" ", "_").replace(",", "")
        assert_ok(run_cli(["train", *FIXED, *extra, f"out_dir={root}", f"name={name}"], nproc=nproc, timeout=600))
        runs[label] = root / name
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("label", list(LAUNCHES))
def test_the_estimate_matches_per_sample_gradients(fixed_runs, label):
    run_dir = fixed_runs[label]
    measured, rows = mean_measurement(run_dir)
    assert len(rows) == 128 and all(r["step"] == i + 1 for i, r in enumerate(rows))  # every step measured once
    exact = exact_noise_scale(run_dir)
    assert 100 < exact < 200
    assert measured == pytest.approx(exact, rel=0.10), (measured, exact)


@pytest.mark.slow
def test_the_estimate_is_the_same_at_4_ranks_and_without_the_exact_bucket_layout(fixed_runs, tmp_path):
    """At the same global batch, 4 ranks (B_small 64) measure what 2 ranks (B_small 128) do, within the
    sampling error; DDP's own bucket layout changes each measurement only in the last bits."""
    for exact in ("true", "false"):
        args = ["train", *FIXED, "train.epochs=2", f"out_dir={tmp_path}", f"name=exact_{exact}"]
        assert_ok(run_cli([*args, f"dist.exact_reduction={exact}"], nproc=4, timeout=600))
    four, rows = mean_measurement(tmp_path / "exact_true")
    two, _ = mean_measurement(fixed_runs["2 ranks"])
    assert four == pytest.approx(two, rel=0.10), (four, two)
    _, unfixed = mean_measurement(tmp_path / "exact_false")
    for fixed_row, own_row in zip(rows, unfixed, strict=True):
        for key in ("noise/grad_sq", "noise/trace_sigma"):
            assert own_row[key] == pytest.approx(fixed_row[key], rel=1e-4)


# -- in a training run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_logs_the_noise_scale_keeps_it_across_resume_and_trains_bitwise_as_without(tmp_path):
    """3 ranks: the comm hook leaves DDP's reduction exact (the weights equal those of a run without the
    measurement); the noise scale reaches metrics.jsonl, TensorBoard (Overview too), the epoch line and the
    summary, survives a resume, and ``dist-train noise`` predicts from it."""
    common = ["train", *TINY, "data.batch_size=48", f"out_dir={tmp_path}", "train.epochs=1"]  # 10 steps an epoch
    assert_ok(run_cli([*common, "name=plain"], nproc=3))
    measured = run_cli([*common, "name=noise", "noise_scale.every_steps=2"], nproc=3)
    assert_ok(measured)
    plain_weights, noise_weights = load_weights(tmp_path / "plain"), load_weights(tmp_path / "noise")
    assert all(torch.equal(plain_weights[k], noise_weights[k]) for k in plain_weights)
    assert any(line.startswith("epoch 1/1") and "noise scale " in line for line in measured.stdout.splitlines())
    rows = [r for r in read_metrics(tmp_path / "noise") if "noise/trace_sigma" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10] and all(r["noise/trace_sigma"] > 0 for r in rows)
    events = EventAccumulator(str(tmp_path / "noise"))
    events.Reload()
    assert {"noise/b_simple", "noise/grad_sq", "Overview/noise scale (B_simple)"} <= set(events.Tags()["scalars"])
    first = json.loads((tmp_path / "noise" / "summary.json").read_text())["noise_scale"]
    assert (first["batch"], first["b_small"], len(first["per_epoch"])) == (48, 16, 1)
    more = ["name=noise", "noise_scale.every_steps=2", "train.epochs=2", "on_config_change=continue"]
    resumed = run_cli([*common, *more], nproc=3)
    assert_ok(resumed)
    second = json.loads((tmp_path / "noise" / "summary.json").read_text())["noise_scale"]
    assert second["per_epoch"][0] == first["per_epoch"][0] and len(second["per_epoch"]) == 2
    prediction = run_cli(["noise", str(tmp_path / "noise")])
    assert_ok(prediction)
    assert (
        prediction.stdout.startswith("critical batch ≈ ") and "at epoch 2 (this run's batch: 48)" in prediction.stdout
    )
    assert math.isfinite(second["b_simple"])


@pytest.mark.slow
def test_one_process_without_accumulation_says_why_it_cannot_measure(tmp_path):
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=one", "train.epochs=1", "noise_scale.every_steps=2"])
    assert_ok(result)
    lines = [line for line in result.stdout.splitlines() if line.startswith("noise_scale:")]
    assert lines == [
        "noise_scale: not measured: one process without gradient accumulation sees gradients over one batch size "
        "only; run 2 or more ranks, or set train.grad_accum_steps to 2 or more"
    ]
    assert not [r for r in read_metrics(tmp_path / "one") if "noise/b_simple" in r]


@pytest.mark.slow
def test_the_documented_commands_measure_and_predict(tmp_path):
    """docs/papers/noise-scale.md: a quickstart that measures, then ``dist-train noise`` on its run directory."""
    args = ["train", "--config", "configs/quickstart.yaml", "noise_scale.every_steps=8", "train.epochs=1"]
    assert_ok(run_cli([*args, f"out_dir={tmp_path}/runs"], nproc=2))
    prediction = run_cli(["noise", "runs/quickstart"], cwd=tmp_path)
    assert_ok(prediction)
    assert prediction.stdout.startswith("critical batch ≈ ") and "<- this run" in prediction.stdout


def test_the_prediction_skips_epochs_whose_noise_scale_was_unresolved(tmp_path):
    """An epoch whose averaged |G|² was ≤ 0 is null in summary.json: the prediction uses the last resolved one."""
    (tmp_path / "config.yaml").write_text("data:\n  batch_size: 128\n")
    per_epoch = [[1, 120.0], [2, 480.0], [3, None]]
    (tmp_path / "summary.json").write_text(json.dumps({"noise_scale": {"batch": 128, "per_epoch": per_epoch}}))
    result = run_cli(["noise", str(tmp_path)])
    assert_ok(result)
    assert result.stdout.splitlines()[0] == "critical batch ≈ 480 at epoch 2 (this run's batch: 128)"
