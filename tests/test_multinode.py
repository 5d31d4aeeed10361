"""Many nodes on one machine: jobs across the nodes of the local SLURM and torchrun across network namespaces.

The SLURM tests need the many-node cluster (``sudo slurm/local_cluster.sh start --nodes 2``: every node a
network namespace with its own hostname, address and slurmd); the torchrun test makes its own two nodes
(``slurm/local_nodes.sh``) and removes them when it ends, also when it fails. Both need root. Each skips with
its reason elsewhere; DIST_TRAIN_REQUIRE_MULTINODE=1 (set in CI) makes them fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, assert_ok, load_weights, read_metrics, run_cli, subprocess_env
from test_slurm import job_id_of, job_info, queued_jobs, release_requeued, wait_until

NODES_SH = REPO / "slurm" / "local_nodes.sh"
CLUSTER_SH = REPO / "slurm" / "local_cluster.sh"
CLUSTER_NODES = "dtslurm"
"""LOCAL_NODES_NAME of the cluster's nodes (slurm/local_cluster.sh)."""
SLURM_STATE = Path("/var/spool/dist_train_slurm")

TWO_BY_TWO = ["--nodes", "2", "--tasks-per-node", "2", "--time", "10"]

# The commands the docs show for many nodes (docs/many-gpus-and-nodes.md). The tests run them as written, adding
# only out_dir=<a temporary folder>; test_readme_shows_the_commands_run_here keeps the two in step.
TORCHRUN = (
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 dist-torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d "
    "--rdzv-endpoint=node0:29400 --rdzv-id=exp1 --max-restarts=1 "
    "-m dist_train train --config configs/quickstart.yaml train.epochs=2"
)
LAUNCH = (
    "NNODES=2 NPROC_PER_NODE=1 RDZV_ENDPOINT=node0:29400 RDZV_ID=exp1 MAX_RESTARTS=1 "
    "launch/train.sh --config configs/quickstart.yaml train.epochs=2"
)
SUBMIT = "dist-train submit --config configs/quickstart.yaml --nodes 2 --tasks-per-node 2 --wait train.epochs=2"
SWEEP = (
    "dist-train submit --sweep configs/sweeps/quickstart_lr.yaml --nodes 2 --tasks-per-node 1 "
    "--array-parallelism 2 --wait"
)
SWAP = (
    "dist-train submit --config configs/quickstart.yaml --nodes 2 --tasks-per-node 2 "
    "data.synthetic_train_size=512 data.batch_size=32 swap.enabled=true swap.phase1_max_epochs=2 "
    "swap.phase2.batch_size=16 swap.phase2.epochs=4 swap.phase2.lr=0.02"
)
"""SWAP on 2 nodes × 2 tasks, one replica per node (the default): 16 steps per phase-1 epoch, 32 per replica
epoch (8 samples per rank)."""
VENV_BIN = str(Path(sys.executable).parent)


def command_line(text: str, *extra: str) -> tuple[dict[str, str], list[str]]:
    """A README command as (environment, argv): leading NAME=value words go to the environment, ``dist-train``,
    ``dist-torchrun`` and ``torchrun`` are this environment's (as after ``source .venv/bin/activate``), and
    ``extra`` words are appended."""
    words = shlex.split(text)
    env = {}
    while "=" in words[0] and not words[0].startswith(("-", "/")):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] in ("dist-train", "dist-torchrun", "torchrun"):
        words[0] = str(Path(VENV_BIN) / words[0])
    return env, [*words, *extra]


def run_command(text: str, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env, argv = command_line(text, *extra)
    return subprocess.run(argv, cwd=REPO, env=subprocess_env() | env, capture_output=True, text=True, timeout=timeout)


def require(reason: str) -> None:
    """Skip with ``reason``, or fail where DIST_TRAIN_REQUIRE_MULTINODE is set (CI)."""
    if os.environ.get("DIST_TRAIN_REQUIRE_MULTINODE"):
        pytest.fail(f"the many-node tests are required here (DIST_TRAIN_REQUIRE_MULTINODE) but {reason}")
    pytest.skip(reason)


def namespaces_unavailable() -> str:
    """Empty when this process can make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found (iproute2, util-linux)" if missing else ""


def cluster_nodes() -> list[str]:
    """The nodes of the running SLURM cluster (empty when none answers)."""
    if shutil.which("sinfo") is None:
        return []
    result = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N"], capture_output=True, text=True)
    return sorted(set(result.stdout.split())) if result.returncode == 0 else []


@pytest.fixture(scope="session")
def cluster() -> list[str]:
    """The many-node local SLURM: at least 2 nodes, each a namespace of slurm/local_nodes.sh."""
    reason = namespaces_unavailable()
    nodes = cluster_nodes()
    if not reason and len(nodes) < 2:
        reason = "no many-node SLURM answers here (sudo slurm/local_cluster.sh start --nodes 2)"
    if not reason and not all(Path(f"/run/netns/{CLUSTER_NODES}-{node}").exists() for node in nodes):
        reason = f"the SLURM nodes ({', '.join(nodes)}) are not local namespaces (slurm/local_cluster.sh)"
    if reason:
        require(reason)
    return nodes


def nodes_command(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOCAL_NODES_NAME=name)
    return subprocess.run(["bash", str(NODES_SH), *args], env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def own_nodes() -> Iterator[str]:
    """Two nodes (node0, node1) made for this test, on their own bridge and subnet; removed however it ends."""
    reason = namespaces_unavailable()
    if reason:
        require(reason)
    name = f"dtt{os.getpid() % 10000}"
    subnet = f"10.78.{os.getpid() % 250}"
    env = dict(os.environ, LOCAL_NODES_NAME=name, LOCAL_NODES_SUBNET=subnet)
    try:
        subprocess.run(["bash", str(NODES_SH), "up", "2"], env=env, capture_output=True, text=True, check=True)
        yield name
    finally:
        subprocess.run(["bash", str(NODES_SH), "down"], env=env, capture_output=True, text=True)


def node_processes(name: str, node: str, marker: str) -> list[int]:
    """Pids of the processes on ``node`` whose command line holds ``marker``."""
    result = subprocess.run(["ip", "netns", "pids", f"{name}-{node}"], capture_output=True, text=True)
    pids = []
    for pid in result.stdout.split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command:
            pids.append(int(pid))
    return pids


def link_bytes(name: str, node_index: int) -> int:
    """Bytes into and out of a node's link (its veth on the bridge), from the kernel's counters."""
    folder = Path(f"/sys/class/net/{name}v{node_index}/statistics")
    return sum(int((folder / f"{way}_bytes").read_text()) for way in ("rx", "tx"))


def starts(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("event") == "start"]


# -- jobs across SLURM nodes ------------------------------------------------------------------------


def submit_two_by_two(out: Path, *overrides: str) -> Path:
    """Run SUBMIT (2 nodes × 2 tasks, 2 epochs) into ``out``; check it trained 64 steps on 4 ranks over both hosts
    to better than chance, and return its run directory."""
    result = run_command(SUBMIT, f"out_dir={out}", *overrides)
    assert_ok(result)
    assert re.search(r"job \d+: quickstart: val acc \d+\.\d+% after 64 steps", result.stdout), result.stdout
    run_dir = out / "quickstart"
    (start,) = starts(run_dir)
    assert start["world_size"] == 4 and start["hosts"] == ["node0", "node0", "node1", "node1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 * 32 and summary["val_acc"] > 0.3  # chance is 0.1
    return run_dir


@pytest.mark.slow
def test_two_node_job_trains_the_quickstart(cluster: list[str], tmp_path: Path) -> None:
    """4 ranks on 2 hosts (gloo over the bridge); one run directory written once, by rank 0; --wait prints the
    validation accuracy."""
    run_dir = submit_two_by_two(tmp_path)
    records = read_metrics(run_dir)
    steps = [r["step"] for r in records if "train/step_loss" in r]
    assert steps == list(range(8, 65, 8))  # every logged step once: only rank 0 writes
    assert [r["step"] for r in records if "val/acc" in r] == [32, 64]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt"]
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 64
    logs = sorted(p.name for p in (run_dir / "slurm").glob("*_log.out"))
    assert [name.split("_")[1] for name in logs] == ["0", "1", "2", "3"]
    rank2 = next((run_dir / "slurm").glob("*_2_log.out")).read_text()
    assert "hostname=node1" in rank2 and "global_rank=2(4)" in rank2


PLUGINS = (
    "dist-train submit --config examples/own_data/config.yaml --nodes 2 --tasks-per-node 1 --wait "
    "model.name=examples/own_model/nets.py:build model.width=0 train.epochs=1"
)


@pytest.mark.slow
def test_two_node_job_imports_the_users_model_and_data_set(cluster: list[str], tmp_path: Path) -> None:
    """A model and a data set from the user's .py files, imported by every rank on both nodes."""
    dry = run_command(PLUGINS.replace(" --wait", " --dry-run"), f"out_dir={tmp_path}")
    assert_ok(dry)
    assert f"model.name=examples/own_model/nets.py:build imports from {REPO}/examples/own_model/nets.py" in dry.stdout
    assert f"working directory of the job (plug-in paths are relative to it): {REPO}" in dry.stdout
    result = run_command(PLUGINS, f"out_dir={tmp_path}", "data.kwargs.train_size=128")
    assert_ok(result)
    assert re.search(r"job \d+: own_data: val acc \d+\.\d+% after 4 steps", result.stdout), result.stdout
    (start,) = starts(tmp_path / "own_data")
    assert start["hosts"] == ["node0", "node1"]


@pytest.mark.slow
def test_two_node_job_array_of_a_sweep(cluster: list[str], tmp_path: Path) -> None:
    """A sweep of 2 runs as one job array whose every task spans both nodes."""
    result = run_command(SWEEP, f"out_dir={tmp_path}")
    array = job_id_of(result)
    assert "2 runs, at most 2 at once, 2 rank(s) on 2 node(s) each" in result.stdout
    assert len(re.findall(r"job \d+_\d: lr=0\.\d+: val acc ", result.stdout)) == 2, result.stdout
    sweep_dir = tmp_path / "quickstart_lr"
    assert "#SBATCH --nodes=2" in (sweep_dir / "slurm" / f"{array}_submission.sh").read_text()
    for run in ("lr=0.05", "lr=0.2"):
        (start,) = starts(sweep_dir / run)
        assert start["hosts"] == ["node0", "node1"]
        assert json.loads((sweep_dir / run / "summary.json").read_text())["steps"] == 2 * 32


LONG = [*TINY, "train.epochs=10", "checkpoint.every_steps=8", "dist.timeout_s=60"]
"""160 steps, a checkpoint every 8; the tests below pause the ranks while SLURM acts, so the run's length does not
have to outlast SLURM's reaction time (up to 30 s for a time-limit check, 30 s or more to find a node lost)."""


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LONG run on 4 local processes, never interrupted: the weights every requeued 2 × 2 job must end with
    (bitwise: the gradient sums of 4 ranks do not depend on where the ranks run or when they restarted)."""
    out = tmp_path_factory.mktemp("long_reference")
    assert_ok(run_cli(["train", "--config", "configs/quickstart.yaml", *LONG, f"out_dir={out}"], nproc=4))
    return out / "quickstart"


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    weights, expected = load_weights(run_dir), load_weights(reference)
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def job_ranks(run_dir: Path) -> list[int]:
    """Pids of the job's ranks (submitit's task processes, whose command line names the run's log folder)."""
    logs = str(run_dir / "slurm")
    found = []
    for node in ("node0", "node1"):
        for pid in node_processes(CLUSTER_NODES, node, "submitit.core._submit"):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if logs in command and not command.startswith("srun"):
                found.append(pid)
    return found


def signal_all(pids: list[int], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, number)


@contextlib.contextmanager
def paused_long_job(tmp_path: Path) -> Iterator[tuple[str, Path, list[int]]]:
    """Submit the 160-step quickstart on 2 nodes × 2 tasks, wait for its first checkpoint and pause its 4 ranks
    (SIGSTOP); yield (job id, run directory, rank pids). On exit the ranks get SIGCONT and the job is cancelled."""
    job = job_id_of(
        run_cli(["submit", "--config", "configs/quickstart.yaml", *LONG, *TWO_BY_TWO, f"out_dir={tmp_path}"])
    )
    run_dir = tmp_path / "quickstart"
    ranks: list[int] = []
    try:
        wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), what="the first checkpoint")
        ranks.extend(job_ranks(run_dir))
        assert len(ranks) == 4, ranks
        signal_all(ranks, signal.SIGSTOP)
        yield job, run_dir, ranks
    finally:
        signal_all(ranks, signal.SIGCONT)
        subprocess.run(["scancel", job], capture_output=True)


@pytest.mark.slow
def test_time_limit_requeues_and_resumes(cluster: list[str], tmp_path: Path, long_reference: Path) -> None:
    """A 2-node job reaches its time limit: SLURM signals it (USR2, --signal-delay-s before the limit), submitit
    requeues it, and the requeued job resumes from its last checkpoint to the uninterrupted run's step count.
    The ranks are paused (SIGSTOP) from the first checkpoint on; SLURM resumes them (SIGCONT) with its signal."""
    with paused_long_job(tmp_path) as (job, run_dir, _):
        # 2 minutes: less than the 90 s of --signal-delay-s remain from 30 s on, so SLURM signals at its first
        # time-limit check after that (it checks every 30 s).
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=2"], check=True)
        limited = time.monotonic()
        release_requeued(job)
        print(f"SLURM signalled, the job requeued {time.monotonic() - limited:.0f} s after the limit was lowered")
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
        wait_until(lambda: job not in queued_jobs(), what=f"job {job} to finish")
    rank0 = next((run_dir / "slurm").glob("*_0_log.out")).read_text()
    assert "Calling checkpoint method" in rank0, rank0[-3000:]
    _, resumed = starts(run_dir)
    assert resumed["restarts"] == 1 and resumed["resumed_from"].endswith("last.pt")
    assert 0 < resumed["step"] < 160 and resumed["step"] % 8 == 0  # inside the run, at a checkpoint
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 160 and summary["world_size"] == 4
    assert_same_weights(run_dir, long_reference)


ENDED = ("FAILED", "NODE_FAIL", "CANCELLED", "TIMEOUT")


def requeued_or_ended(job: str) -> bool:
    info = job_info(job)
    return int(info.get("Restarts", 0)) >= 1 or info.get("JobState") in ENDED


def step_daemons(job: str) -> list[str]:
    """Pids of the slurmstepd processes of ``job`` still alive on this machine (on any node)."""
    found = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."], capture_output=True, text=True)
    return found.stdout.split()


@pytest.mark.slow
def test_killed_slurmd_requeues_cleanly(cluster: list[str], tmp_path: Path, long_reference: Path) -> None:
    """node1's slurmd dies mid-run: SLURM sets the node down and requeues the job; no rank outlives the job by
    more than dist.timeout_s, the checkpoint stays readable, and once the node is back the job resumes and ends
    with the uninterrupted run's step count. The ranks are paused (SIGSTOP) from the kill until SLURM has acted,
    then let go: those SLURM did not kill must find their peers gone and stop by themselves."""
    pid_file = SLURM_STATE / "slurmd-node1.pid"
    try:
        with paused_long_job(tmp_path) as (job, run_dir, ranks):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            killed = time.monotonic()
            wait_until(
                lambda: requeued_or_ended(job), timeout=180, what="SLURM to set node1 down, requeue or end the job"
            )
            noticed = time.monotonic()
            signal_all(ranks, signal.SIGCONT)
            wait_until(lambda: not job_ranks(run_dir), timeout=60 + 30, what="every rank to exit")  # dist.timeout_s
            ranks_gone = time.monotonic()
            # The ranks that outlived node1 stopped with one line each, not a traceback (read now: the requeued
            # job writes the same log files).
            errors = {p.name: p.read_text() for p in (run_dir / "slurm").glob("*_log.err")}
            assert len(errors) == 4, sorted(errors)
            for name, text in errors.items():
                assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
            # Each either found its peers gone (one error line) or, when SLURM's SIGTERM reached every rank
            # before that, stopped with the others after a checkpoint (the clean-stop line).
            ended = ("dist-train: error:", "dist-train: stopped by SIGTERM")
            assert any(line in text for text in errors.values() for line in ended), errors
            state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
            assert 0 < state["step"] < 160
            # Bring node1 back only once SLURM has finished requeuing: node1 then registers with the first run's
            # step still on it and SLURM aborts that step, before the requeued job starts. (Back earlier, the
            # abort of the first run can reach node1 after the requeued job's step has started there, and kill
            # it: the step id is the same.)
            settled = ("PENDING", *ENDED)
            wait_until(lambda: job_info(job).get("JobState") in settled, what=f"job {job} to be pending")
            assert job_info(job).get("JobState") == "PENDING", job_info(job)  # requeued, not failed
            subprocess.run(["bash", str(CLUSTER_SH), "slurmd", "node1"], check=True, capture_output=True)
            wait_until(lambda: not step_daemons(job), timeout=120, what=f"job {job}'s old slurmstepd to exit")
            # node1's slurmd goes on aborting the first run's job for a moment after its step daemon has exited,
            # and kills a step of that job launched meanwhile (seen within 1 s): give it time to finish.
            time.sleep(10)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            wait_until(lambda: job not in queued_jobs(), timeout=400, what=f"job {job} to finish")
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["steps"] == 160
            resumed = starts(run_dir)[-1]
            assert resumed["resumed_from"].endswith("last.pt") and resumed["step"] == state["step"]
            assert_same_weights(run_dir, long_reference)
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "slurmd", "node1"], capture_output=True)  # back up in any case
    print(f"SLURM noticed after {noticed - killed:.0f} s; every rank gone {ranks_gone - noticed:.0f} s later")


# -- SWAP across nodes ------------------------------------------------------------------------------


def replica_records(run_dir: Path, replica: int) -> list[dict]:
    path = run_dir / "phase2" / f"replica{replica}" / "metrics.jsonl"
    return read_metrics(path.parent) if path.exists() else []


def epochs_done(run_dir: Path, replica: int) -> int:
    return max((r["epoch"] for r in replica_records(run_dir, replica) if "val/acc" in r), default=0)


def epochs_checkpointed(run_dir: Path, replica: int) -> int:
    """The epoch of the replica's last checkpoint (written atomically, after the epoch's record)."""
    path = run_dir / "phase2" / f"replica{replica}" / "checkpoints" / "last.pt"
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else 0


@pytest.fixture(scope="module")
def swap_run(cluster: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """An uninterrupted 2-node SWAP job, and the bytes that crossed the nodes' links in phase 1 and in phase 2
    (each between two epoch ends, sampled while the job runs)."""
    out = tmp_path_factory.mktemp("swap_nodes")
    job = job_id_of(run_command(SWAP, f"out_dir={out}"))
    run_dir = out / "quickstart"
    index = {node: i for i, node in enumerate(cluster)}["node1"]

    def phase1_epochs() -> int:
        found = run_dir / "metrics.jsonl"
        return max((r["epoch"] for r in read_metrics(run_dir) if "val/acc" in r), default=0) if found.exists() else 0

    try:
        wait_until(lambda: phase1_epochs() >= 1, what="phase 1's first epoch")
        before = link_bytes(CLUSTER_NODES, index)
        wait_until(lambda: phase1_epochs() >= 2, what="phase 1's second epoch")
        phase1 = link_bytes(CLUSTER_NODES, index) - before
        # Phase 2: from both replicas' first epoch end to their third (the average comes after the fourth).
        wait_until(lambda: min(epochs_done(run_dir, r) for r in (0, 1)) >= 1, what="phase 2's first epoch")
        before = link_bytes(CLUSTER_NODES, index)
        wait_until(lambda: min(epochs_done(run_dir, r) for r in (0, 1)) >= 3, timeout=120, what="phase 2's third")
        phase2 = link_bytes(CLUSTER_NODES, index) - before
        assert min(epochs_done(run_dir, r) for r in (0, 1)) < 4, "sampled too late: phase 3 may have begun"
        wait_until(lambda: job not in queued_jobs(), what=f"job {job} to finish")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    return run_dir, phase1, phase2


@pytest.mark.slow
def test_swap_replicas_train_one_per_node_without_crossing(swap_run: tuple[Path, int, int]) -> None:
    """Each replica is one node's two ranks; while they train, nothing but SLURM's heartbeats crosses the nodes
    (phase 1 sends every gradient across)."""
    run_dir, phase1, phase2 = swap_run
    print(f"bytes across node1's link: phase 1 epoch {phase1}, phase 2 two epochs {phase2}")
    for replica, node in ((0, "node0"), (1, "node1")):
        (start,) = [r for r in replica_records(run_dir, replica) if r.get("event") == "start"]
        assert start["hosts"] == [node, node] and start["world_size"] == 2
    assert phase1 > 1_000_000, phase1  # 16 all-reduces of 60 kB of gradients, at least
    assert phase2 < 50_000, f"{phase2} bytes crossed the nodes during phase 2 (phase 1: {phase1})"


@pytest.mark.slow
def test_swap_average_is_the_mean_of_the_replicas(swap_run: tuple[Path, int, int]) -> None:
    """The averaged model's weights are the mean of the weights each replica saved at its end; phase 3 ran once."""
    run_dir, _, _ = swap_run
    final = torch.load(run_dir / "checkpoints" / "swap_final.pt", weights_only=True)["model"]
    replicas = [
        torch.load(run_dir / "phase2" / f"replica{r}" / "checkpoints" / "last.pt", weights_only=True)["model"]
        for r in (0, 1)
    ]
    parameters = [key for key in final if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert parameters
    for key in parameters:
        torch.testing.assert_close(final[key], (replicas[0][key] + replicas[1][key]) / 2, rtol=0, atol=1e-6)
    assert not torch.equal(replicas[0][parameters[0]], replicas[1][parameters[0]])  # they did train apart
    ends = [r for r in read_metrics(run_dir) if r.get("event") == "end"]
    assert len(ends) == 1 and len(starts(run_dir)) == 1  # phase 3 once, phase 1 once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 4 and len(summary["replicas"]) == 2
    assert summary["sequential_steps"] == 2 * 16 + 4 * 32


@pytest.mark.slow
def test_requeued_swap_job_resumes_inside_phase2(swap_run: tuple[Path, int, int], tmp_path: Path) -> None:
    """`scontrol requeue` of the 2-node SWAP job while the replicas train: phase 1 is not redone, each replica
    resumes from its own checkpoint, and the average equals the uninterrupted job's."""
    reference, _, _ = swap_run
    job = job_id_of(run_command(SWAP, f"out_dir={tmp_path}"))
    run_dir = tmp_path / "quickstart"
    try:
        wait_until(lambda: min(epochs_checkpointed(run_dir, r) for r in (0, 1)) >= 1, what="a phase-2 checkpoint")
        subprocess.run(["scontrol", "requeue", job], check=True)
        release_requeued(job)
        wait_until(lambda: job not in queued_jobs(), what=f"job {job} to finish")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert len(starts(run_dir)) == 1  # phase 1 ran once
    for replica in (0, 1):
        begun = [r for r in replica_records(run_dir, replica) if r.get("event") == "start"]
        assert len(begun) == 2 and begun[1]["resumed_from"].endswith("last.pt") and begun[1]["step"] >= 32
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["sequential_steps"] == expected["sequential_steps"]
    final, uninterrupted = (
        torch.load(d / "checkpoints" / "swap_final.pt", weights_only=True)["model"] for d in (run_dir, reference)
    )
    for key, value in uninterrupted.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-6, msg=key)


# -- torchrun across namespaces -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", [TORCHRUN, LAUNCH], ids=["torchrun", "launch-train-sh"])
def test_torchrun_across_two_nodes_restarts_after_a_killed_worker(own_nodes: str, tmp_path: Path, command: str) -> None:
    """The README's two-node commands as written (c10d rendezvous at node0:29400, one process per node), run on
    node0 and on node1: a worker SIGKILLed on node1 mid-epoch, both agents restart (--max-restarts), and the run
    resumes from its epoch-1 checkpoint to the uninterrupted run's step count."""
    env, argv = command_line(command, f"out_dir={tmp_path}")
    env = subprocess_env() | env | {"LOCAL_NODES_NAME": own_nodes}
    if command == TORCHRUN:  # `source .venv/bin/activate` first; launch/train.sh finds the environment itself
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    agents = [
        subprocess.Popen(
            ["bash", str(NODES_SH), "exec", node, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in ("node0", "node1")
    ]
    run_dir = tmp_path / "quickstart"
    try:
        killed_at = None
        deadline = time.monotonic() + 180
        while killed_at is None and time.monotonic() < deadline and all(a.poll() is None for a in agents):
            if (run_dir / "metrics.jsonl").exists():
                steps = [r for r in read_metrics(run_dir) if r.get("epoch") == 2 and "train/step_loss" in r]
                workers = set(node_processes(own_nodes, "node1", "dist_train train"))
                for agent in ("dist_train.torchrun", "bin/dist-torchrun"):  # launch/train.sh's agent, dist-torchrun
                    workers -= set(node_processes(own_nodes, "node1", agent))
                if steps and workers:
                    os.kill(min(workers), signal.SIGKILL)
                    killed_at = steps[-1]["step"]
            time.sleep(0.01)
        outputs = [agent.communicate(timeout=240)[0] for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert killed_at is not None, "the run ended before epoch 2 started"
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    first, resumed = starts(run_dir)
    assert first["hosts"] == resumed["hosts"] == ["node0", "node1"]
    assert resumed["restarts"] == 1 and resumed["resumed_from"].endswith("last.pt") and resumed["step"] == 32
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 * 32 and summary["world_size"] == 2


def test_readme_shows_the_commands_run_here() -> None:
    """The many-node commands of the docs (docs/many-gpus-and-nodes.md) are these tests' commands, word for word
    (tests/test_docs.py checks every other command the README and the docs show)."""
    page = (REPO / "docs" / "many-gpus-and-nodes.md").read_text()
    shown = " ".join(page.replace("\\\n", " ").split())  # continued lines joined
    for command in (TORCHRUN, LAUNCH, SUBMIT, SWEEP, SWAP):
        assert command in shown, command
