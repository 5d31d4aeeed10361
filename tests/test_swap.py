"""SWAP: phases, replicas across 2 'nodes' × 2 processes, the average, BN recomputation, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, assert_ok, free_port, read_metrics, run_cli, subprocess_env
from torch.nn.utils import vector_to_parameters
from torch.optim.swa_utils import update_bn

from dist_train.config import load_config
from dist_train.data import build_datasets
from dist_train.distributed import DistContext
from dist_train.models import build_model
from dist_train.regime import bn_recompute_plan
from dist_train.swap import bn_recompute_batches, recompute_bn, unaugmented

SWAP = [
    *TINY,
    "swap.enabled=true",
    "swap.phase1_max_epochs=2",
    "swap.phase1_train_acc=0.99",
    "swap.phase2.batch_size=16",
    "swap.phase2.epochs=1",
    "swap.phase2.lr=0.02",
    "data.batch_size=32",
]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """4 processes as 2 nodes × 2 (two torchrun agents, c10d on localhost): one replica per node."""
    out = tmp_path_factory.mktemp("swap")
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        "--rdzv-id=swap-test",
        str(REPO / "tests" / "workers" / "swap_check.py"),
        str(out),
        *SWAP,
    ]
    agents = [
        subprocess.Popen(
            cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(4)]


@pytest.mark.slow
def test_phase2_replicas_are_independent(two_nodes):
    _, ranks = two_nodes
    assert [r["replica"] for r in ranks] == [0, 0, 1, 1]
    assert torch.equal(ranks[0]["after2"], ranks[1]["after2"]) and torch.equal(ranks[2]["after2"], ranks[3]["after2"])
    assert not torch.allclose(ranks[0]["after2"], ranks[2]["after2"])  # own seeds and data orders
    assert all(r["ddp_group_size"] == 2 for r in ranks)  # DDP inside the replica
    assert all(r["world_calls"] == [] for r in ranks)  # no collective on the world group in phase 2


@pytest.mark.slow
def test_phase3_average_and_bn_recomputation(two_nodes):
    out, ranks = two_nodes
    expected = (ranks[0]["after2"] + ranks[2]["after2"]) / 2
    for r in ranks:
        torch.testing.assert_close(r["after3"], expected, rtol=0, atol=1e-6)
    for name in ranks[0]["buffers"]:
        assert all(torch.equal(r["buffers"][name], ranks[0]["buffers"][name]) for r in ranks), name
    # One process recomputing over the same batches (every rank's) gives the same statistics, and so does
    # torch.optim.swa_utils.update_bn.
    cfg = load_config(None, SWAP)
    data = build_datasets(unaugmented(cfg).data)
    batches = [batch for rank in range(4) for batch in bn_recompute_batches(cfg, cpu_rank(rank, 4), data)]
    assert len(batches) == 4 * (512 // 32)  # the whole set: fewer batches than swap.bn_recompute_batches
    torch.manual_seed(0)
    model = build_model("c1", data.num_classes, data.in_channels, data.image_size, cfg.model.width)
    vector_to_parameters(expected, model.parameters())
    assert recompute_bn(model, batches, torch.device("cpu")) == len(batches)
    for name, value in model.named_buffers():
        torch.testing.assert_close(ranks[0]["buffers"][name].to(value.dtype), value, rtol=1e-4, atol=1e-5, msg=name)
    summary_ok = (out / "run" / "checkpoints" / "swap_final.pt").exists()
    assert summary_ok


def cpu_rank(rank: int, world_size: int) -> DistContext:
    return DistContext(rank, world_size, rank, torch.device("cpu"), "gloo")


@pytest.mark.slow
def test_bn_recompute_is_bounded_and_equals_update_bn():
    """swap.bn_recompute_batches unaugmented batches per rank from the run's loader; over the same batches,
    recompute_bn (one process) gives torch.optim.swa_utils.update_bn's statistics."""
    cfg = load_config(None, [*SWAP, "swap.bn_recompute_batches=5", "data.num_workers=2"])
    data = build_datasets(unaugmented(cfg).data)
    batches = list(bn_recompute_batches(cfg, cpu_rank(1, 2), data))
    assert len(batches) == 5 and all(images.shape[0] == 16 for images, _ in batches)  # 32 over 2 ranks
    assert batches[0][0].shape[1:] == (3, 32, 32)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model("c1", data.num_classes, data.in_channels, data.image_size, cfg.model.width))
    for m in models:  # away from the initial statistics
        m.train()
        with torch.no_grad():
            m(torch.randn(16, 3, 32, 32) * 3 + 1)
    assert recompute_bn(models[0], batches, torch.device("cpu")) == 5
    update_bn(batches, models[1])
    for (name, ours), (_, theirs) in zip(models[0].named_buffers(), models[1].named_buffers(), strict=True):
        torch.testing.assert_close(ours.to(theirs.dtype), theirs, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_plan_shows_the_bn_recompute():
    cfg = load_config(None, [*SWAP, "swap.bn_recompute_batches=4"])
    line = "SWAP phase 3 BN recompute: 4 batches × 32 = 128 images (25.0% of the training set)"
    assert bn_recompute_plan(cfg, 512) == line
    whole = load_config(None, SWAP)
    assert (
        bn_recompute_plan(whole, 512)
        == "SWAP phase 3 BN recompute: 16 batches × 32 = 512 images (the whole training set)"
    )
    result = run_cli(["plan", *[f"{o}" for o in SWAP if "=" in o]])
    assert_ok(result)
    assert "SWAP phase 3 BN recompute: 16 batches × 32 = 512 images" in result.stdout


@pytest.mark.slow
def test_swap_run_reports_phases_and_replicas(tmp_path):
    result = run_cli(["train", *SWAP, "swap.replica_size=1", f"out_dir={tmp_path}", "name=s"], nproc=2)
    assert_ok(result)
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert len(summary["replicas"]) == 2 and summary["phase1"]["epochs"] == 2
    assert not summary["phase1"]["reached_threshold"]  # 99 % is out of reach: stopped at the epoch limit
    assert "stopped at its epoch limit (2)" in result.stdout
    assert summary["sequential_steps"] == 32 + 32  # phase 1: 2 × 16 steps; phase 2: 512 / 16 steps
    assert 0.0 < summary["val_acc"] <= 1.0 and summary["bn_recompute_batches"] == 512 // 32  # global batches
    for replica in (0, 1):  # phase 2's replicas print side by side: each line says whose it is
        assert f"[replica {replica}] epoch 1/1 step 32 |" in result.stdout, result.stdout[-3000:]
    phases = [r["phase"] for r in read_metrics(tmp_path / "s") if r.get("event") == "phase"]
    assert phases == [1]
    for replica in (0, 1):
        assert (tmp_path / "s" / "phase2" / f"replica{replica}" / "checkpoints" / "last.pt").exists()
    # Run again: every phase is already checkpointed, so the result is recomputed, not retrained.
    again = run_cli(["train", *SWAP, "swap.replica_size=1", f"out_dir={tmp_path}", "name=s"], nproc=2)
    assert_ok(again)
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["val_acc"] == summary["val_acc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["swap.replica_size=3"], "swap.replica_size=3 does not divide the world size 2"),
        (["swap.replica_size=2", "swap.phase2.batch_size=15"], "swap.phase2.batch_size=15 does not divide"),
    ],
)
def test_swap_configuration_errors(tmp_path, overrides, fragment):
    result = run_cli(["train", *SWAP, *overrides, f"out_dir={tmp_path}"], nproc=2)
    assert result.returncode != 0
    assert sum(fragment in line for line in result.stderr.splitlines()) == 2  # on every rank


KILL_RUN = [*SWAP, "swap.replica_size=1", "swap.phase2.epochs=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final SWAP model of a run nobody interrupts."""
    out = tmp_path_factory.mktemp("swap-reference")
    assert_ok(run_cli(["train", *KILL_RUN, f"out_dir={out}", "name=reference"], nproc=2))
    return torch.load(out / "reference" / "checkpoints" / "swap_final.pt", weights_only=True)["model"]


def kill_during(tmp_path, metrics_dir: str) -> list[dict]:
    """Run KILL_RUN under torchrun --max-restarts=1, SIGKILL one worker once ``metrics_dir`` logs epoch 2."""
    import os
    import signal
    import time

    from test_training import children

    env = {**subprocess_env(), "NPROC_PER_NODE": "2", "MAX_RESTARTS": "1", "PYTHON": sys.executable}
    launcher = subprocess.Popen(
        ["bash", str(REPO / "launch" / "train.sh"), *KILL_RUN, f"out_dir={tmp_path}", "name=killed"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "killed" / metrics_dir
    try:
        killed = False
        deadline = time.time() + 180
        while not killed and time.time() < deadline and launcher.poll() is None:
            if (metrics / "metrics.jsonl").exists() and any(
                r.get("epoch") == 2 and "train/step_loss" in r for r in read_metrics(metrics)
            ):
                os.kill(children(launcher.pid)[-1], signal.SIGKILL)
                killed = True
            time.sleep(0.01)
        output, _ = launcher.communicate(timeout=240)
    finally:
        launcher.kill()
    assert killed and launcher.returncode == 0, output[-4000:]
    return [r for r in read_metrics(metrics) if r.get("event") == "start"]


@pytest.mark.slow
@pytest.mark.parametrize("metrics_dir, epoch_steps", [(".", 16), ("phase2/replica0", 32)], ids=["phase1", "phase2"])
def test_sigkill_resumes_inside_the_phase(tmp_path, uninterrupted, metrics_dir, epoch_steps):
    """SIGKILL a worker in phase 1 or 2 under torchrun --max-restarts=1: the same final model as without it."""
    starts = kill_during(tmp_path, metrics_dir)
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("last.pt")  # resumed inside the phase
    # From the phase's epoch-1 checkpoint; or, in phase 2, where this replica stopped when torchrun sent it
    # SIGTERM after the other replica's worker died (it trains alone, so it could checkpoint that step).
    stopped = [r["step"] for r in read_metrics(tmp_path / "killed" / metrics_dir) if r.get("event") == "stopped"]
    assert starts[1]["step"] == (stopped[0] if stopped else epoch_steps)
    assert not stopped or metrics_dir != "."  # in phase 1 the survivor's peer is gone: no checkpoint there
    final = torch.load(tmp_path / "killed" / "checkpoints" / "swap_final.pt", weights_only=True)["model"]
    for name, value in uninterrupted.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)


def test_average_keeps_channels_last_and_recompute_uses_the_trainers_input_path():
    """train.channels_last: averaging copies into the parameters in place (parameters_to_vector cannot flatten
    channels_last weights); the BN recompute feeds images through the given to_device/autocast."""
    import torch.distributed as dist

    from dist_train.swap import average_parameters

    torch.manual_seed(0)
    model = build_model("c1", 10, 3, 32, 8).to(memory_format=torch.channels_last)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        average_parameters(model)  # one process: the mean is the value
    finally:
        dist.destroy_process_group()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, msg=name)
    seen = []

    def to_device(images, labels):
        seen.append(images.shape)
        return images.contiguous(memory_format=torch.channels_last), labels

    batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    assert recompute_bn(model, batches, torch.device("cpu"), to_device=to_device) == 3
    assert len(seen) == 3
