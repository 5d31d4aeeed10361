"""The weight-distance monitor: the log fit, and a run that logs and resumes it."""

import json
import math

import pytest
import torch
from conftest import TINY, assert_ok, read_metrics, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_train.techniques.diffusion import fit_log, layer_labels, layer_of


def test_fit_recovers_a_log_curve():
    steps = list(range(1, 500, 7))
    slope, intercept, r2 = fit_log(steps, [0.37 * math.log(t) + 1.5 for t in steps])
    assert slope == pytest.approx(0.37) and intercept == pytest.approx(1.5) and r2 == pytest.approx(1.0)


def test_fit_of_noisy_and_non_log_curves():
    generator = torch.Generator().manual_seed(0)
    steps = list(range(1, 1000, 10))
    noisy = [2 * math.log(t) + 0.3 * float(torch.randn((), generator=generator)) for t in steps]
    slope, _, r2 = fit_log(steps, noisy)
    assert slope == pytest.approx(2, rel=0.05) and 0.9 < r2 < 1
    _, _, r2_linear = fit_log(steps, [0.01 * t for t in steps])  # a straight line in t is not log-like
    assert r2_linear < 0.9
    assert all(math.isnan(v) for v in fit_log([5], [1.0]))


def test_layer_names():
    assert layer_of("layer1.0.conv1.weight") == "layer1.0.conv1" and layer_of("bias") == "bias"
    nn = torch.nn
    stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    model = nn.Sequential(stem, nn.Flatten(), nn.Linear(4, 2))
    assert layer_labels(model) == {"0.0": "0.conv1", "0.1": "0.bn1", "0.3": "0.conv2", "2": "fc1"}


@pytest.mark.slow
def test_distance_logged_fitted_and_kept_across_resume(tmp_path):
    args = ["train", *TINY, f"out_dir={tmp_path}", "name=diff", "diffusion.every_steps=2"]
    assert_ok(run_cli([*args, "train.epochs=1"]))
    first = torch.load(tmp_path / "diff" / "checkpoints" / "last.pt", weights_only=True)["callbacks"]
    result = run_cli([*args, "on_config_change=continue"])  # 2 epochs now
    assert_ok(result)
    state = torch.load(tmp_path / "diff" / "checkpoints" / "last.pt", weights_only=True)
    second = state["callbacks"]["weight_distance"]
    for name, tensor in first["weight_distance"]["initial"].items():
        assert torch.equal(second["initial"][name], tensor)  # w_0 survived the resume
    assert second["steps"] == list(range(2, 33, 2))
    # The first milestone is epoch 1.5 = step 24: the fit covers the points up to there.
    fit = json.loads((tmp_path / "diff" / "summary.json").read_text())["diffusion_fit"]
    assert fit["until_step"] == 24 and fit["slope"] > 0 and 0 < fit["r2"] <= 1
    assert "diffusion:" in result.stdout
    distances = [r["diffusion/distance"] for r in read_metrics(tmp_path / "diff") if "diffusion/distance" in r]
    assert len(distances) == 16 and distances[-1] > distances[0] > 0
    events = EventAccumulator(str(tmp_path / "diff"))
    events.Reload()
    tags = events.Tags()["scalars"]
    # Layers by name (c1 is a Sequential: by kind and count), the fit as text rather than one-point charts.
    layers = [t.removeprefix("diffusion/layer/") for t in tags if t.startswith("diffusion/layer/")]
    assert layers == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc1"]
    assert not any(t.startswith("diffusion/fit") for t in tags)
    fit_text = events.Tensors("diffusion/fit/text_summary")[-1]  # the 1-epoch run fitted its 8 points too
    assert fit_text.step == 24 and "up to step 24" in fit_text.tensor_proto.string_val[0].decode()
    assert [e.step for e in events.Scalars("diffusion/distance")] == list(range(2, 33, 2))
