"""Against a real SLURM (slurm/local_cluster.sh starts one): jobs, arrays, requeues, refusals.

Every test here skips when no SLURM answers, and fails instead where DIST_TRAIN_REQUIRE_SLURM is set (CI).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_ok, load_weights, read_metrics, run_cli, write_sweep
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = [pytest.mark.usefixtures("slurm"), pytest.mark.slow]

QUICKSTART = ["--config", "configs/quickstart.yaml", "device=cpu"]
TWO_TASKS = ["--tasks-per-node", "2", "--time", "10"]


def job_id_of(result: subprocess.CompletedProcess) -> str:
    assert_ok(result)
    match = re.search(r"submitted job (?:array )?(\d+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (empty once SLURM has forgotten the job)."""
    result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    first = result.stdout.splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""
    return dict(item.split("=", 1) for item in first.split() if "=" in item)


def queued_jobs() -> list[str]:
    return subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True).stdout.split()


def wait_until(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart as one 2-task SLURM job, uninterrupted."""
    out = tmp_path_factory.mktemp("slurm_quickstart")
    assert_ok(run_cli(["submit", *QUICKSTART, *TWO_TASKS, "--wait", f"out_dir={out}"], timeout=600))
    return out / "quickstart"


def test_two_task_job_trains_the_quickstart(quickstart_run: Path) -> None:
    summary = json.loads((quickstart_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6 * 32
    assert summary["val_acc"] > 0.6  # chance is 0.1
    logs = quickstart_run / "slurm"
    rank0 = next(logs.glob("*_0_log.out")).read_text()
    assert "2 process(es), gloo on cpu" in rank0 and "Job completed successfully" in rank0
    assert next(logs.glob("*_1_log.out")).is_file()  # the second task ran too
    events = EventAccumulator(str(quickstart_run))
    events.Reload()
    val_acc = events.Scalars("val/acc")
    assert [e.step for e in val_acc] == [32 * epoch for epoch in range(1, 7)]
    assert val_acc[-1].value == pytest.approx(summary["val_acc"])


def release_requeued(job_id: str) -> None:
    """SLURM holds a requeued job for two minutes; let it start now."""
    wait_until(
        lambda: job_info(job_id).get("JobState") == "PENDING" and int(job_info(job_id).get("Restarts", 0)) >= 1,
        what=f"job {job_id} to be requeued",
    )
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


@pytest.mark.parametrize("interrupt", ["timeout_signal", "scontrol_requeue"])
def test_requeued_job_resumes_from_its_checkpoint(tmp_path: Path, quickstart_run: Path, interrupt: str) -> None:
    """USR2 is what SLURM sends before the time limit (submitit calls TrainJob.checkpoint and requeues);
    ``scontrol requeue`` is an operator's requeue. Either way the run continues from its last checkpoint
    and ends like the uninterrupted one."""
    job = job_id_of(run_cli(["submit", *QUICKSTART, *TWO_TASKS, f"out_dir={tmp_path}"]))
    run_dir = tmp_path / "quickstart"
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), what="the first checkpoint")
    if interrupt == "timeout_signal":
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    else:
        subprocess.run(["scontrol", "requeue", job], check=True)
    release_requeued(job)
    wait_until(lambda: job not in queued_jobs(), what=f"job {job} to finish")

    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((quickstart_run / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] == 6 * 32
    rank0 = next((run_dir / "slurm").glob("*_0_log.out")).read_text()
    resumed = re.search(r"resumed from \S+ at epoch (\d+)", rank0)
    assert resumed and 1 <= int(resumed.group(1)) < 6, rank0[-2000:]
    if interrupt == "timeout_signal":
        assert "Calling checkpoint method" in rank0
    for name, tensor in load_weights(quickstart_run).items():
        assert torch.equal(tensor, load_weights(run_dir)[name]), name
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [32 * epoch for epoch in range(1, 7)]  # no duplicates


def test_sweep_goes_out_as_one_array_and_is_reported(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"data.batch_size": [16, 64], "optim.lr": [0.02, 0.1]})
    result = run_cli(["submit", "--sweep", str(path), "--array-parallelism", "2", "--wait", "device=cpu"], timeout=600)
    array = job_id_of(result)
    assert "4 runs, at most 2 at once" in result.stdout
    sweep_dir = tmp_path / "runs" / "grid"
    assert "#SBATCH --array=0-3%2" in (sweep_dir / "slurm" / f"{array}_submission.sh").read_text()
    assert sorted(p.name for p in (sweep_dir / "slurm").glob(f"{array}_*_0_result.pkl")) == [
        f"{array}_{i}_0_result.pkl" for i in range(4)
    ]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    assert set(summaries) == {f"batch_size={b},lr={lr}" for b in (16, 64) for lr in (0.02, 0.1)}
    assert all(s["steps"] == 2 * 512 // s["batch_size"] for s in summaries.values())
    again = run_cli(["submit", "--sweep", str(path), "device=cpu"])
    assert_ok(again)
    assert "4 of 4 runs have finished already; not submitted" in again.stdout and "submitted job" not in again.stdout

    assert_ok(run_cli(["report", str(sweep_dir)]))
    with (sweep_dir / "report.csv").open() as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(summaries)
    assert "| optim.lr \\ data.batch_size | 16 | 64 |" in (sweep_dir / "report.md").read_text()
    assert (sweep_dir / "heatmap.png").stat().st_size > 5000


def test_dry_run_prints_the_sbatch_options_and_submits_nothing(tmp_path: Path) -> None:
    before = queued_jobs()
    path = write_sweep(tmp_path, {"optim.lr": [0.01, 0.1, 1.0]})
    options = ["--partition", "debug", "--time", "1:30:00", "--cpus-per-task", "2", "--mem-gb", "4"]
    result = run_cli(["submit", "--sweep", str(path), "--dry-run", *TWO_TASKS[:2], *options, "--sbatch", "exclusive"])
    assert_ok(result)
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --partition=debug",
        "#SBATCH --time=90",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4GB",
        "#SBATCH --exclusive",
        "#SBATCH --signal=USR2@90",
    ):
        assert line in result.stdout
    assert "lr=1" in result.stdout and "batch_size: 32" in result.stdout  # the runs and the resolved config
    assert queued_jobs() == before and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "nope"], "SLURM partition 'nope' does not exist (partitions: "),
        (["--sbatch", "constraint=no_such_feature"], "sbatch refused the job: "),
        (["--tasks-per-node", "3"], "data.batch_size=128 does not divide by world size 3"),
        (["data.root=/no/such/dir", "data.dataset=mnist"], "data.root not found: /no/such/dir"),
    ],
)
def test_refused_submissions_fail_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    before = queued_jobs()
    result = run_cli(["submit", *QUICKSTART, f"out_dir={tmp_path}", *args])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert queued_jobs() == before


def test_malformed_sweep_is_refused_before_submitting(tmp_path: Path) -> None:
    before = queued_jobs()
    path = write_sweep(tmp_path, {"optim.lr": [0.1, "fast"]})
    result = run_cli(["submit", "--sweep", str(path)])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dist-train: error: {path}: run lr=fast: override 'optim.lr=fast': bad value for 'optim.lr': "
        "Value 'fast' of type 'str' could not be converted to Float"
    ]
    assert queued_jobs() == before and not (tmp_path / "runs").exists()


def test_tiny_job_on_one_task(tmp_path: Path) -> None:
    """A single-task job (no process group) with the Python API's wait()."""
    result = run_cli(["submit", "--config", "configs/quickstart.yaml", *TINY, f"out_dir={tmp_path}", "--wait"])
    job_id_of(result)
    assert "done: 1 job(s) finished" in result.stdout and ": quickstart: val acc " in result.stdout
    assert json.loads((tmp_path / "quickstart" / "summary.json").read_text())["world_size"] == 1


SWAP_RUN = [
    "--config",
    "configs/quickstart.yaml",
    *TINY,
    "device=cpu",
    "swap.enabled=true",
    "swap.replica_size=1",
    "swap.phase1_max_epochs=2",
    "swap.phase1_train_acc=0.99",
    "swap.phase2.batch_size=8",
    "swap.phase2.epochs=8",
    "swap.phase2.lr=0.02",
]


def test_requeued_swap_job_resumes_inside_phase2(tmp_path: Path) -> None:
    """A SWAP job preempted while its replicas train goes on from the replicas' checkpoints (phase 1 is not
    redone) and ends with the same averaged model as an uninterrupted torchrun run."""
    assert_ok(run_cli(["train", *SWAP_RUN, f"out_dir={tmp_path}", "name=reference"], nproc=2))
    job = job_id_of(run_cli(["submit", *SWAP_RUN, *TWO_TASKS, f"out_dir={tmp_path}", "name=requeued"]))
    replica = tmp_path / "requeued" / "phase2" / "replica0"
    wait_until(lambda: (replica / "checkpoints" / "last.pt").exists(), what="a phase-2 checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    release_requeued(job)
    wait_until(lambda: job not in queued_jobs(), what=f"job {job} to finish")

    phase1_starts = [r for r in read_metrics(tmp_path / "requeued") if r.get("event") == "start"]
    replica_starts = [r for r in read_metrics(replica) if r.get("event") == "start"]
    assert len(phase1_starts) == 1  # phase 1 ran once
    assert len(replica_starts) == 2 and replica_starts[1]["resumed_from"].endswith("last.pt")
    assert replica_starts[1]["step"] % 64 == 0 and replica_starts[1]["step"] >= 64  # an epoch-end checkpoint
    final, reference = (
        torch.load(tmp_path / name / "checkpoints" / "swap_final.pt", weights_only=True)["model"]
        for name in ("requeued", "reference")
    )
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)


def test_scancel_stops_the_job_with_a_checkpoint_and_no_lock(tmp_path: Path, quickstart_run: Path) -> None:
    """``scancel`` sends SIGTERM to every task: both ranks stop after the same step, checkpoint it, release
    the lock and say so in one line each (no traceback in the job's logs); submitted again, the run resumes
    there and ends with the weights of the uninterrupted job."""
    args = [*QUICKSTART, *TWO_TASKS, "train.log_every=1", f"out_dir={tmp_path}"]
    job = job_id_of(run_cli(["submit", *args]))
    run_dir = tmp_path / "quickstart"
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and any(r.get("epoch") == 2 for r in read_metrics(run_dir)), what="epoch 2")
    subprocess.run(["scancel", job], check=True)
    wait_until(lambda: job not in queued_jobs(), what=f"job {job} to end")

    assert not (run_dir / ".lock").exists()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch_progress"] is not None  # stopped inside an epoch, at the step it was told
    assert read_metrics(run_dir)[-1]["event"] == "stopped"
    for rank in (0, 1):
        log = next((run_dir / "slurm").glob(f"*_{rank}_log.err")).read_text()
        lines = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
        assert len(lines) == 1 and f"after step {state['step']} " in lines[0], log[-2000:]
        assert lines[0].startswith(f"[rank {rank}] dist-train: stopped by SIGTERM"), lines[0]  # not an error
        assert "Traceback" not in log, log[-3000:]
    assert_ok(run_cli(["submit", *args, "--wait"], timeout=600))
    for name, tensor in load_weights(quickstart_run).items():
        assert torch.equal(tensor, load_weights(run_dir)[name]), name


def test_jobs_are_named_after_their_runs(tmp_path: Path) -> None:
    """``squeue`` lists a job by its run's name, or by ``--job-name`` when given."""
    args = ["submit", *QUICKSTART, "--time", "10", f"out_dir={tmp_path}"]
    jobs = {
        job_id_of(run_cli([*args, "name=bs128-lr0.2"])): "bs128-lr0.2",
        job_id_of(run_cli([*args, "name=second", "--job-name", "my-sweep"])): "my-sweep",
    }
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--format=%i %j", f"--jobs={','.join(jobs)}"], capture_output=True, text=True
        ).stdout
        assert dict(line.split() for line in listed.splitlines()) == jobs
    finally:
        subprocess.run(["scancel", *jobs], check=True)
    wait_until(lambda: not set(jobs) & set(queued_jobs()), what="the jobs to end")
