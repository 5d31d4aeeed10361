"""End-to-end runs under torchrun (2 processes, gloo on CPU): accuracy, outputs, resume, restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    TINY,
    assert_ok,
    free_port,
    load_weights,
    read_metrics,
    run_cli,
    subprocess_env,
    torchrun_cmd,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("quickstart")
    result = run_cli(["train", "--config", "configs/quickstart.yaml", f"out_dir={out}"], nproc=2)
    assert_ok(result)
    return out / "quickstart", result


def test_quickstart_learns_and_writes_a_run_directory(quickstart):
    run_dir, result = quickstart
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_acc"] >= 0.5, summary  # 10 classes: chance is 0.1
    assert summary["world_size"] == 2 and summary["steps"] == 6 * 32
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert "model:\n  name: c1" in (run_dir / "config.yaml").read_text()
    # Only rank 0 writes: one event file (in the run directory, so TensorBoard lists the run by its name), one
    # config, no temporary files.
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert sorted(p.name for p in run_dir.iterdir() if p not in events) == [
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
    ]
    assert result.stdout.count("epoch 6/6") == 1
    # Not a terminal: no progress bar redraws.
    assert "\r" not in result.stdout + result.stderr and "it/s" not in result.stderr


def test_tensorboard_events_read_back(quickstart):
    run_dir, _ = quickstart
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "train/lr",
        "train/images_per_s",
        "train/epoch_time_s",
        "train/grad_norm",
        "train/step_loss",
    }
    assert expected <= tags
    # What TensorBoard opens on: the Overview group (sorted first), the custom-scalars layout, each rank's pace.
    overview = ["accuracy (val)", "loss (train)", "lr", "throughput (images per s)"]
    assert sorted(t for t in tags if t.startswith("Overview/")) == [f"Overview/{name}" for name in overview]
    assert [e.value for e in events.Scalars("Overview/accuracy (val)")] == [e.value for e in events.Scalars("val/acc")]
    assert {f"ranks/step_s/rank{r}" for r in (0, 1)} <= tags
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    (hosts,) = events.Tensors("hosts/text_summary")
    assert f"| {socket.gethostname()} | 0, 1 |" in hosts.tensor_proto.string_val[0].decode()
    grid = events.Images("augment/views")[0]  # 8 samples × 1 view of 32 px in 3 columns, 3 times larger, named
    assert grid.height == 3 * (3 * 33 + 1) and grid.width > 3 * 3 * (33 + 1) and grid.width >= grid.height
    val_acc = events.Scalars("val/acc")
    assert [e.step for e in val_acc] == [32 * (i + 1) for i in range(6)]
    assert val_acc[-1].value > val_acc[0].value
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(0.2, rel=0.05) and lrs[-1] < 0.05  # warm-up then cosine decay
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(0.2)
    assert start.session_start_info.hparams["model"].string_value == "c1"
    assert "_hparams_/experiment" in hparams


def test_metrics_jsonl_matches_tensorboard(quickstart):
    run_dir, _ = quickstart
    records = read_metrics(run_dir)
    assert records[0]["event"] == "start" and records[0]["world_size"] == 2 and records[0]["backend"] == "gloo"
    assert records[-1]["event"] == "end"
    epochs = [r for r in records if "val/acc" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert epochs[-1]["val/acc"] == summary["val_acc"]


def test_resume_reproduces_an_uninterrupted_run(reference_run, tmp_path):
    """1 epoch, then resume=auto for the 2nd: the same weights as 2 epochs straight."""
    args = ["train", *TINY, f"out_dir={tmp_path}", "name=split"]
    assert_ok(run_cli([*args, "train.epochs=1"], nproc=2))
    first = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and len(first["rng"]) == 2
    refused = run_cli(args, nproc=2)  # 2 epochs now: a change of what is trained, so the user must say so
    assert refused.returncode != 0 and "train.epochs: 1 → 2" in refused.stderr
    result = run_cli([*args, "on_config_change=continue"], nproc=2)
    assert_ok(result)
    assert (
        "resumed from" in result.stdout
        and "changed config (on_config_change=continue): train.epochs: 1 → 2" in result.stdout
    )
    resumed, reference = load_weights(tmp_path / "split"), load_weights(reference_run)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6, msg=key)
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "val/acc" in r]
    assert steps == [r["step"] for r in read_metrics(reference_run) if "val/acc" in r]


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.fixture(scope="module")
def reference_run_4(tmp_path_factory) -> Path:
    """The TINY run on 4 processes, uninterrupted and without step checkpoints."""
    out = tmp_path_factory.mktemp("reference4")
    assert_ok(run_cli(["train", *TINY, f"out_dir={out}", "name=ref"], nproc=4))
    return out / "ref"


def test_sigkill_of_a_worker_restarts_and_resumes(reference_run_4, tmp_path):
    """torchrun --max-restarts=1 with 4 workers: SIGKILL one mid-epoch 2; the job resumes from the last step
    checkpoint and ends with exactly the uninterrupted run's weights (bitwise: with more than two ranks the
    gradient sums must not depend on DDP's bucket layout, which a restarted process builds anew)."""
    run_dir = tmp_path / "killed"
    env = {**subprocess_env(), "NPROC_PER_NODE": "4", "MAX_RESTARTS": "1", "PYTHON": sys.executable}
    # One record per step so the kill lands inside the epoch; a checkpoint every 4 steps (same numerics).
    args = [*TINY, "train.log_every=1", "checkpoint.every_steps=4", f"out_dir={tmp_path}", "name=killed"]
    env["TORCHELASTIC_ERROR_FILE"] = str(tmp_path / "error.json")
    launcher = subprocess.Popen(
        ["bash", str(REPO / "launch" / "train.sh"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        killed_at = None
        deadline = time.time() + 120
        while killed_at is None and time.time() < deadline and launcher.poll() is None:
            if (run_dir / "metrics.jsonl").exists():
                steps = [r for r in read_metrics(run_dir) if r.get("epoch") == 2 and "train/step_loss" in r]
                if steps and steps[-1]["step"] >= 22:
                    workers = children(launcher.pid)
                    assert len(workers) == 4, workers
                    os.kill(workers[1], signal.SIGKILL)
                    killed_at = steps[-1]["step"]
            time.sleep(0.01)
        output, _ = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert killed_at is not None, "the run ended before step 22"
    assert launcher.returncode == 0, output[-4000:]
    starts = [r for r in read_metrics(run_dir) if r.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["restarts"] == 1
    # Resumed inside epoch 2, from a step checkpoint (every 4 steps), not from epoch 1's end.
    assert starts[1]["resumed_from"].endswith("last.pt") and 16 < starts[1]["step"] <= killed_at + 1
    assert starts[1]["step"] % 4 == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((reference_run_4 / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] == 32
    assert summary["val_loss"] == reference["val_loss"]
    weights, expected = load_weights(run_dir), load_weights(reference_run_4)
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key
    # TensorBoard shows each step once: the killed attempt's events after the checkpoint are purged.
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [16, 32]
    assert [r["step"] for r in read_metrics(run_dir) if "val/acc" in r] == [16, 32]


SIGNAL_IN_EVAL = """
import os
import signal

from torch import nn


class SignalsInEvaluation(nn.Module):
    # A linear model whose rank 0, with SIGNAL_IN_EVAL=1, sends itself SIGTERM during its first evaluation.

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))
        self.sent = False

    def forward(self, images):
        signal_now = os.environ.get("SIGNAL_IN_EVAL") == "1" and os.environ.get("RANK") == "0"
        if signal_now and not self.training and len(images) > 2 and not self.sent:  # not the factory's probe
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self.net(images)
"""


def test_sigterm_after_the_last_step_stops_every_rank_after_the_epoch_checkpoint(tmp_path):
    """SIGTERM reaching rank 0 alone during the epoch-end evaluation (outside the steps): the evaluation and the
    epoch's checkpoint complete on both ranks, which then stop together (exit 143) with one line, not a
    lost-contact error; the run resumes from that epoch and finishes."""
    (tmp_path / "signals.py").write_text(SIGNAL_IN_EVAL)
    args = ["train", *TINY, "model.width=0", "model.name=signals.py:SignalsInEvaluation", "out_dir=out", "name=run"]
    stopped = run_cli(args, nproc=2, cwd=tmp_path, env={"SIGNAL_IN_EVAL": "1"})
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGTERM and "lost contact" not in output, output[-3000:]
    run_dir = tmp_path / "out" / "run"
    checkpoint = Path("out", "run", "checkpoints", "last.pt")  # as out_dir was given
    line = (
        f"dist-train: stopped by SIGTERM at the end of epoch 1 (step 16): checkpoint {checkpoint} written; "
        "the run resumes there"
    )
    assert stopped.stderr.splitlines()[-2:] == [line, stopped.stderr.splitlines()[-1]], output[-3000:]
    assert "stopped by SIGTERM first (exit status 143, pid " in stopped.stderr.splitlines()[-1]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 16 and state["epoch_progress"] is None
    assert not (run_dir / ".lock").exists()
    resumed = run_cli(args, nproc=2, cwd=tmp_path)
    assert_ok(resumed)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 32


# 64 steps an epoch: long enough to signal the run inside its second epoch.
LONGER = [*TINY, "data.synthetic_train_size=2048", "train.log_every=1"]


def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """SIGTERM to torchrun (what ``timeout`` and SLURM send): both ranks stop after the same step, the step
    is checkpointed, the lock is released and rank 0 says so in one line; the run then resumes there and
    ends with the weights of a run never stopped."""
    args = ["train", *LONGER, f"out_dir={tmp_path}"]
    assert_ok(run_cli([*args, "name=straight"], nproc=2))
    run_dir = tmp_path / "stopped"
    launcher = subprocess.Popen(
        [*torchrun_cmd(2), "-m", "dist_train", *args, "name=stopped"],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and launcher.poll() is None:
            metrics = run_dir / "metrics.jsonl"
            steps = [r["step"] for r in read_metrics(run_dir) if "train/step_loss" in r] if metrics.exists() else []
            if steps and steps[-1] >= 70:
                launcher.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        output, _ = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    lines = [line for line in output.splitlines() if "dist-train: stopped by SIGTERM" in line]
    assert len(lines) == 1, output[-4000:]
    stopped = re.fullmatch(
        r"dist-train: stopped by SIGTERM after step (\d+) \(epoch 2, step (\d+) of it\): "
        r"checkpoint \S+last.pt written in [\d.]+ s; the run resumes there",
        lines[0],
    )
    assert stopped, lines[0]
    assert "Traceback" not in output and output.splitlines()[-1] == "torchrun: stopped by SIGTERM", output[-4000:]
    assert launcher.returncode == 128 + signal.SIGTERM
    assert not (run_dir / ".lock").exists()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == int(stopped.group(1)) and state["epoch_progress"]["steps"] == int(stopped.group(2))
    assert read_metrics(run_dir)[-1] == {
        "step": state["step"],
        "event": "stopped",
        "signal": "SIGTERM",
        "checkpoint": True,
    }
    resumed = run_cli([*args, "name=stopped"], nproc=2)
    assert_ok(resumed)
    assert f"at epoch 1, step {state['step']}" in resumed.stdout + resumed.stderr
    for name, tensor in load_weights(tmp_path / "straight").items():
        assert torch.equal(tensor, load_weights(run_dir)[name]), name


def test_two_nodes_with_c10d_rendezvous(tmp_path):
    """launch/train.sh as two 'nodes' of one process each, meeting at a c10d rendezvous on localhost."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = {
        **subprocess_env(),
        "NNODES": "2",
        "NPROC_PER_NODE": "1",
        "RDZV_ENDPOINT": endpoint,
        "RDZV_ID": "two-nodes",
        "PYTHON": sys.executable,
    }
    cmd = ["bash", str(REPO / "launch" / "train.sh"), *TINY, "train.epochs=1", f"out_dir={tmp_path}", "name=nodes"]
    nodes = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    start = next(r for r in read_metrics(tmp_path / "nodes") if r.get("event") == "start")
    assert start["world_size"] == 2
    assert json.loads((tmp_path / "nodes" / "summary.json").read_text())["steps"] == 16


@pytest.mark.skipif(not (REPO.parent / "shared/data/mnist-t10k").is_dir(), reason="real MNIST not present")
def test_real_mnist_f1_two_processes(tmp_path):
    """configs/mnist_f1.yaml on the real MNIST digits (8,000/2,000 split), shortened to 2 epochs."""
    result = run_cli(["train", "--config", "configs/mnist_f1.yaml", f"out_dir={tmp_path}", "train.epochs=2"], nproc=2)
    assert_ok(result)
    summary = json.loads((tmp_path / "mnist_f1" / "summary.json").read_text())
    assert summary["val_acc"] >= 0.9 and summary["steps"] == 2 * 62


def test_resume_from_an_explicit_checkpoint_path(reference_run, tmp_path):
    """resume=PATH starts a new run directory from another run's checkpoint (here: 2 ranks -> 1 process)."""
    source = reference_run / "checkpoints" / "last.pt"
    args = ["train", *TINY, "train.epochs=3", f"out_dir={tmp_path}", "name=more", f"resume={source}"]
    result = run_cli([*args, "on_config_change=continue"])
    assert_ok(result)
    assert f"resumed from {source} at epoch 2, step 32" in result.stdout
    assert "world size 2 → 1: continuing" in result.stdout
    summary = json.loads((tmp_path / "more" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 16  # the same global batch: 16 steps an epoch


# Regime adaptation in updates, with batches across epochs: 4,010 images at batch 32 (125.3 per epoch) for
# the reference's 2 × 125 updates; the batches of the second epoch straddle the first permutation's end.
ACROSS_EPOCHS = ["data.synthetic_train_size=4010", "regime.reference_batch_size=32", "regime.adapt=true"]


@pytest.mark.parametrize("loader", ["workers=0", "workers=2", "dali", "across-epochs"])
def test_mid_epoch_checkpoint_resumes_exactly(tmp_path: Path, loader: str, request: pytest.FixtureRequest) -> None:
    """checkpoint.every_steps: SIGKILL the run after a checkpoint inside an epoch; running it again starts that
    epoch's data at the checkpoint (the batches before it are not loaded) and ends with the same weights as a
    run never stopped."""
    if loader == "dali":
        request.getfixturevalue("dali")
    args = [
        "train",
        "--config",
        "configs/quickstart.yaml",
        *TINY,
        "data.synthetic_train_size=4096",
        "data.backend=dali" if loader == "dali" else f"data.num_workers={loader.removeprefix('workers=')}",
        "model.width=16",
        "checkpoint.every_steps=10",
        f"out_dir={tmp_path}",
    ]
    if loader == "across-epochs":
        args[args.index("data.num_workers=across-epochs")] = "data.num_workers=0"
        args += ACROSS_EPOCHS
    steps_per_epoch = 125 if loader == "across-epochs" else 128
    assert_ok(run_cli([*args, "name=straight"]))
    command = [sys.executable, "-m", "dist_train", *args, "name=cut"]
    process = subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.kill()
    process.wait()
    progress = torch.load(last, weights_only=True)["epoch_progress"]
    assert progress is not None and 0 < progress["steps"] < steps_per_epoch  # the run stopped inside epoch 1

    # A killed process cannot release its lock: the next run says so, and how to clear it.
    refused = run_cli([*args, "name=cut"])
    assert refused.returncode == 1 and "has a stale lock" in refused.stderr
    assert_ok(run_cli(["unlock", str(tmp_path / "cut")]))
    resumed = run_cli([*args, "name=cut"])
    assert_ok(resumed)
    assert f"at epoch 0, step {progress['steps']}" in resumed.stdout + resumed.stderr
    straight, cut = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("straight", "cut"))
    assert cut["steps"] == straight["steps"] == 2 * steps_per_epoch
    assert cut["train_loss"] == straight["train_loss"]  # the epoch's totals survive the restart too
    for name, tensor in load_weights(tmp_path / "straight").items():
        assert torch.equal(tensor, load_weights(tmp_path / "cut")[name]), name
