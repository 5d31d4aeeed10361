"""The bad-input suite: bad config, data, checkpoints, cluster state and faults against a real run directory.

Every case runs the real command line in a fresh process against a copy of one finished run and asserts:
a non-zero exit, stderr's last line is one ``dist-train: error:`` line naming the problem, no traceback,
and every file of the run directory byte-for-byte as it was (hashed before and after).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_ok, load_weights, read_metrics, run_cli, subprocess_env, torchrun_cmd

from dist_train.rundir import LOCK, STALE_AFTER_S

RUN = "run"


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished TINY run (1 process): what every case copies and must leave as it was."""
    out = tmp_path_factory.mktemp("finished")
    assert_ok(run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}"]))
    return out / RUN


@pytest.fixture
def out(tmp_path: Path, finished_run: Path) -> Path:
    """A private copy of the finished run under ``tmp_path/out/run``."""
    shutil.copytree(finished_run, tmp_path / "out" / RUN)
    return tmp_path / "out"


def assert_refused(result: subprocess.CompletedProcess, fragment: str, ranks: int = 1) -> str:
    """Exit non-zero; stderr's last line (the workers' last lines under torchrun) is one error line naming
    the problem; no traceback from our processes."""
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    errors = [line for line in lines if "dist-train: error:" in line]
    assert len(errors) == ranks, result.stderr[-3000:]
    last = lines[-1] if ranks == 1 else next(line for line in reversed(lines) if "dist-train: error:" in line)
    assert "dist-train: error:" in last, result.stderr[-3000:]
    assert fragment in last, last
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if ranks > 1:  # dist_train.torchrun's line on the failed workers ends it, not torchrun's report
        assert re.fullmatch(r"torchrun: worker rank \d failed first \(exit status 1, pid \d+\).*", lines[-1]), lines[-1]
    return last


# -- cases: (id, extra arguments, fragment, setup) ------------------------------------------------
@dataclass
class Case:
    id: str
    args: list[str]
    fragment: str
    setup: Callable[[Path], None] | None = None
    """Damages or prepares ``out`` (the copied run lives in ``out/run``) before the command."""
    env: dict[str, str] = field(default_factory=dict)
    name: str = "new"
    """The run the command names: a new one, or the finished run (``RUN``)."""


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def config_file(text: str) -> Callable[[Path], None]:
    return lambda out: write(out / "bad.yaml", text)


def idx_files(images: bytes, labels: bytes) -> Callable[[Path], None]:
    def setup(out: Path) -> None:
        write(out / "mnist" / "t10k-images-idx3-ubyte.gz", gzip.compress(images))
        write(out / "mnist" / "t10k-labels-idx1-ubyte.gz", gzip.compress(labels))

    return setup


IDX_IMAGES = b"\x00\x00\x08\x03" + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(4 * 784)
IDX_LABELS = b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])


class Exploit:
    """A pickle that would run a shell command when loaded."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/dist_train_exploited",))


def malicious_checkpoint(out: Path) -> None:
    torch.save({"model": Exploit(), "optimizer": {}, "scheduler": {}, "epoch": 0, "step": 0}, out / "evil.pt")


def malicious_cifar(out: Path) -> None:
    write(out / "cifar" / "cifar-10-batches-py" / "data_batch_1", pickle.dumps({b"data": Exploit()}))


def checkpoint_edit(edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    """A checkpoint derived from the run's last.pt, written to ``out/edited.pt``."""

    def setup(out: Path) -> None:
        state = torch.load(out / RUN / "checkpoints" / "last.pt", weights_only=True)
        torch.save(edit(state), out / "edited.pt")

    return setup


def truncated_checkpoint(out: Path) -> None:
    data = (out / RUN / "checkpoints" / "last.pt").read_bytes()
    write(out / "half.pt", data[: len(data) // 2])


def lock_of(host: str, pid: int, age_s: float = 0.0, job: str = "") -> Callable[[Path], None]:
    def setup(out: Path) -> None:
        holder = {"host": host, "pid": pid, "started": time.time() - age_s, "process_start": "", "job": job}
        path = out / RUN / LOCK
        write(path, json.dumps(holder))
        os.utime(path, (time.time() - age_s, time.time() - age_s))

    return setup


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


BAD_YAML = ["--config", "{out}/bad.yaml"]

CASES = [
    # config
    Case("lr-nan", ["optim.lr=nan"], "optim.lr must be a finite number, got nan"),
    Case("lr-inf", ["optim.lr=inf"], "optim.lr must be a finite number, got inf"),
    Case("clip-nan", ["train.grad_clip_norm=nan"], "train.grad_clip_norm must be a finite number"),
    Case("betas-inf", ["optim.betas=[0.9,.inf]"], "optim.betas[1] must be a finite number"),
    Case("lr-negative", ["optim.lr=-0.1"], "optim.lr must be positive"),
    Case("lr-text", ["optim.lr=fast"], "bad value for 'optim.lr'"),
    Case("misspelt-key", ["optim.lrr=0.1"], "did you mean 'optim.lr'"),
    Case("batch-zero", ["data.batch_size=0"], "data.batch_size must be at least 1"),
    Case("unknown-model", ["model.name=resnet200"], "unknown model 'resnet200'"),
    Case("unknown-dataset", ["data.dataset=imagenet21k"], "unknown data.dataset 'imagenet21k'"),
    Case("milestones-decrease", ["schedule.milestones=[2,1]"], "schedule.milestones must be increasing"),
    Case("factors-length", ["schedule.factors=[0.1,0.2]"], "schedule.factors has 2 values for 1 schedule.milestones"),
    Case("name-with-slash", ["name=a/b"], "name must be a plain directory name"),
    Case("override-without-value", ["optim.lr"], "bad override 'optim.lr'"),
    Case("val-fraction", ["data.val_fraction=1.5"], "data.val_fraction must be in [0, 1)"),
    Case("ghost-too-large", ["bn.ghost_batch_size=64"], "bn.ghost_batch_size=64 is larger than the per-process batch"),
    Case("no-cuda", ["device=cuda"], "no CUDA device is available"),
    Case("nccl-on-cpu", ["dist.backend=nccl"], "dist.backend=nccl needs CUDA"),
    Case("config-missing", ["--config", "{out}/nope.yaml"], "config file not found"),
    Case("config-is-a-directory", ["--config", "{out}"], "config file expected, {out} is a directory"),
    Case(
        "plugin-syntax-error",
        ["model.name={out}/mynet.py:build", "model.width=0"],
        "importing {out}/mynet.py raised SyntaxError: invalid syntax (at {out}/mynet.py:1)",
        lambda out: write(out / "mynet.py", "def build(:\n    pass\n"),
    ),
    Case(
        "yaml-syntax",
        ["--config", "{out}/bad.yaml"],
        "bad.yaml:2:5: not valid YAML: mapping values are not allowed here",
        config_file("a: 1\nb: c: d\n"),
    ),
    Case("yaml-not-mapping", ["--config", "{out}/bad.yaml"], "expected a mapping", config_file("- 1\n- 2\n")),
    Case(
        "yaml-base-cycle", ["--config", "{out}/bad.yaml"], "'base' files form a cycle", config_file("base: bad.yaml\n")
    ),
    # data
    Case("data-dir-missing", ["data.dataset=cifar10", "data.root={out}/nope"], "cifar10: directory not found"),
    Case("idx-truncated", ["data.dataset=mnist", "data.root={out}/mnist"], "is truncated", idx_files(b"\x00\x00", b"")),
    Case(
        "idx-magic",
        ["data.dataset=mnist", "data.root={out}/mnist"],
        "has magic number",
        idx_files(IDX_LABELS, IDX_IMAGES),
    ),
    Case(
        "idx-count",
        ["data.dataset=mnist", "data.root={out}/mnist"],
        "holds 4 images but",
        idx_files(IDX_IMAGES, IDX_LABELS[:7] + b"\x03" + bytes(3)),
    ),
    Case(
        "cifar-malicious-pickle",
        ["data.dataset=cifar10", "data.root={out}/cifar"],
        "names posix.system (refused, not loaded)",
        malicious_cifar,
    ),
    Case(
        "imagefolder-no-train",
        ["data.dataset=imagefolder", "data.root={out}/images"],
        "has no train/ folder",
        lambda out: (out / "images").mkdir(),
    ),
    # checkpoints
    Case(
        "checkpoint-garbage",
        [],
        "cannot read checkpoint",
        lambda out: write(out / RUN / "checkpoints" / "last.pt", b"PK\x03\x04 not a zip"),
        name=RUN,
    ),
    Case(
        "checkpoint-truncated",
        ["resume={out}/half.pt"],
        "half.pt: the file is truncated or corrupted (an interrupted write or copy); use another checkpoint",
        truncated_checkpoint,
    ),
    Case(
        "checkpoint-malicious",
        ["resume={out}/evil.pt"],
        "holds objects that a checkpoint never holds (posix.system); refused without loading them",
        malicious_checkpoint,
    ),
    Case(
        "checkpoint-not-ours",
        ["resume={out}/edited.pt"],
        "is not a dist_train checkpoint",
        checkpoint_edit(lambda state: {"weights": state["model"]}),
    ),
    Case("checkpoint-missing", ["resume={out}/nope.pt"], "checkpoint not found"),
    Case("resume-never", ["resume=never"], "exists and resume=never", name=RUN),
    Case("changed-width", ["model.width=16"], "was trained with another config (model.width: 8 → 16)", name=RUN),
    Case("changed-lr", ["optim.lr=0.1"], "(optim.lr: 0.05 → 0.1)", name=RUN),
    Case("changed-seed", ["seed=1"], "(seed: 0 → 1)", name=RUN),
    Case("changed-batch", ["data.batch_size=64"], "(data.batch_size: 32 → 64)", name=RUN),
    Case(
        "foreign-weights",
        ["resume={out}/edited.pt", "on_config_change=continue"],
        "does not fit this run's model: missing keys: 17.weight, 17.bias",
        checkpoint_edit(lambda state: {**state, "model": {k: v for k, v in state["model"].items() if "17." not in k}}),
    ),
    Case(
        "mid-epoch-other-world",
        ["resume={out}/edited.pt"],
        "it resumes only with the same world size",
        checkpoint_edit(lambda state: {**state, "epoch_progress": {"steps": 3, "totals": [[0.0] * 3] * 2}}),
    ),
    # resources
    Case("out-of-memory", ["data.synthetic_train_size=10000000000000"], "out of host memory (could not allocate"),
    Case(
        "out-dir-is-a-file",
        ["out_dir={out}/blocker"],
        "Not a directory",
        lambda out: write(out / "blocker", "a file where the runs should go"),
    ),
    # cluster state and locks
    Case(
        "lock-other-host-live",
        [],
        "is in use by another run (pid 4242 on host gpu-node-7",
        lock_of("gpu-node-7", 4242),
        name=RUN,
    ),
    Case(
        "lock-other-host-stale",
        [],
        "has a stale lock: its holder (pid 4242 on host gpu-node-7, started",
        lock_of("gpu-node-7", 4242, age_s=STALE_AFTER_S + 60),
        name=RUN,
    ),
    Case(
        "lock-dead-process",
        [],
        "is no longer running; if no run uses this directory, clear it with: dist-train unlock",
        lambda out: lock_of(socket.gethostname(), dead_pid())(out),
        name=RUN,
    ),
    Case("lock-garbage", [], "is not a readable lock", lambda out: write(out / RUN / LOCK, "{half"), name=RUN),
    Case(
        "env-no-master",
        [],
        "WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set",
        env={"WORLD_SIZE": "2", "RANK": "0"},
    ),
    Case("env-rank-text", [], "environment variable RANK='one' is not an integer", env={"RANK": "one"}),
    Case(
        "env-rank-range",
        [],
        "RANK=3, LOCAL_RANK=0, WORLD_SIZE=2 do not describe a job",
        env={"WORLD_SIZE": "2", "RANK": "3"},
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, out: Path) -> None:
    if case.setup is not None:
        case.setup(out)
    before = tree_hash(out)
    args = [arg.replace("{out}", str(out)) for arg in case.args]
    config = [] if "--config" in args else TINY
    env = {**subprocess_env(), **case.env}
    command = [sys.executable, "-m", "dist_train", "train", *config, f"out_dir={out}", f"name={case.name}", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert_refused(result, case.fragment.replace("{out}", str(out)))
    assert tree_hash(out) == before
    assert not Path("/tmp/dist_train_exploited").exists()


def test_suite_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


# -- cases that need more than one process or a real fault ----------------------------------------
@pytest.mark.slow
def test_mid_epoch_checkpoint_refuses_another_world_size_on_every_rank(out: Path) -> None:
    """A checkpoint taken inside an epoch by one process, resumed by two: both ranks say why."""
    checkpoint_edit(lambda state: {**state, "epoch_progress": {"steps": 3, "totals": [[0.0] * 3]}})(out)
    before = tree_hash(out)
    result = run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}", f"resume={out}/edited.pt"], nproc=2)
    assert_refused(result, "it resumes only with the same world size (this run has 2)", ranks=2)
    assert tree_hash(out) == before


@pytest.mark.slow
def test_second_run_on_a_live_run_directory_fails_at_once(tmp_path: Path) -> None:
    """Two real runs, one directory: the second (another seed) fails naming the holder; the first is intact."""
    args = ["train", *TINY, f"out_dir={tmp_path}", "name=shared", "train.epochs=60", "train.eval_every=60"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dist_train", *args], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    lock = tmp_path / "shared" / LOCK
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    holder = json.loads(lock.read_text())
    second = run_cli([*args, "seed=1"])
    assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    stdout, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and "done: val acc" in stdout
    assert_refused(second, f"is in use by another run (pid {holder['pid']} on host {socket.gethostname()}, started")
    records = read_metrics(tmp_path / "shared")
    assert [r["event"] for r in records if "event" in r] == ["start", "end"]
    assert json.loads((tmp_path / "shared" / "summary.json").read_text())["config"]["seed"] == 0
    assert not lock.exists()  # released at the end


@pytest.mark.slow
def test_refused_resume_keeps_history(out: Path, tmp_path: Path) -> None:
    """Finding 1: a foreign checkpoint is refused before the records are rewound; metrics and events stay."""
    small = tmp_path / "small"
    assert_ok(run_cli(["train", *TINY, "train.epochs=1", "model.width=4", f"out_dir={small}", "name=s"]))
    before = tree_hash(out)
    result = run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}", f"resume={small}/s/checkpoints/last.pt"])
    assert_refused(result, "was trained with another config")
    assert tree_hash(out) == before and len(read_metrics(out / RUN)) > 2


@pytest.mark.slow
def test_rewound_records_are_moved_aside_not_deleted(out: Path) -> None:
    """Resuming from an earlier checkpoint cuts the later records out of metrics.jsonl into history/."""
    run = out / RUN
    early = run / "early.pt"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    records = read_metrics(run)
    torch.save({**state, "epoch": 1, "step": 16, "epoch_progress": None}, early)
    result = run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}", f"resume={early}"])
    assert_ok(result)
    assert "record(s) after the checkpoint moved to" in result.stdout
    (moved,) = (run / "history").glob("*/metrics.jsonl")
    cut = [json.loads(line) for line in moved.read_text().splitlines()]
    assert cut == [r for r in records if r["step"] > 16]
    assert (moved.parent / "tb").is_dir()


@pytest.mark.slow
def test_killed_checkpoint_write_leaves_nothing_behind(out: Path) -> None:
    """Finding 7: the temporary file of a write a SIGKILL interrupted is removed by the next start."""
    leftover = out / RUN / "checkpoints" / ".last.pt.1a2b3c4d.tmp"
    leftover.write_bytes(b"")
    result = run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}"])
    assert_ok(result)
    assert "removed 1 unfinished write(s)" in result.stdout and not leftover.exists()
    assert "the run has finished (2 of 2 epochs): nothing to train" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args", [[], ["on_config_change=continue", "optim.lr=0.1"]], ids=["same", "changed"])
def test_finished_run_keeps_its_config_and_summary(out: Path, args: list[str]) -> None:
    """A finished run is evaluated again, trains nothing, and rewrites neither config.yaml nor summary.json
    (whose train_seconds stay those of the training, whose config stays the one trained)."""
    kept = {name: (out / RUN / name).read_bytes() for name in ("config.yaml", "summary.json")}
    result = run_cli(["train", *TINY, f"out_dir={out}", f"name={RUN}", *args])
    assert_ok(result)
    assert "nothing to train; evaluating it (config.yaml and summary.json are kept)" in result.stdout
    assert {name: (out / RUN / name).read_bytes() for name in kept} == kept
    assert not (out / RUN / "history").exists()


@pytest.mark.slow
def test_changed_config_without_checkpoint_continues_keeping_the_old_records(out: Path) -> None:
    """A run whose last.pt is gone restarts with a changed config only when told to; its old config.yaml and
    summary.json are moved to history/, not lost."""
    run = out / RUN
    (run / "checkpoints" / "last.pt").unlink()
    old = {name: (run / name).read_bytes() for name in ("config.yaml", "summary.json")}
    args = ["train", *TINY, f"out_dir={out}", f"name={RUN}", "train.epochs=1", "on_config_change=continue"]
    result = run_cli(args)
    assert_ok(result)
    assert "starting afresh with a changed config: train.epochs: 2 → 1" in result.stdout
    for name, data in old.items():
        assert [path.read_bytes() for path in (run / "history").glob(f"*/{name}")] == [data]
    assert json.loads((run / "summary.json").read_text())["config"]["train"]["epochs"] == 1


@pytest.mark.slow
def test_immutable_metrics_refused_before_any_write(out: Path) -> None:
    """An immutable metrics.jsonl (chattr +i) is refused before config.yaml or a TensorBoard file is written."""
    metrics = out / RUN / "metrics.jsonl"
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(metrics)], capture_output=True).returncode:
        pytest.skip("needs root and a file system with immutable files")
    try:
        before = tree_hash(out)
        args = ["train", *TINY, f"out_dir={out}", f"name={RUN}", "train.epochs=3", "on_config_change=continue"]
        result = run_cli(args)
        assert_refused(result, f"Operation not permitted: {metrics}")
        assert tree_hash(out) == before
    finally:
        subprocess.run(["chattr", "-i", str(metrics)], check=True)


@pytest.mark.slow
def test_checkpoints_follow_the_umask(finished_run: Path) -> None:
    """Finding 10: last.pt is group/world readable under the default umask (not mkstemp's 0600)."""
    mode = (finished_run / "checkpoints" / "last.pt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.slow
def test_records_are_strict_json_when_the_run_diverges(tmp_path: Path) -> None:
    """Finding 4: a run whose loss becomes NaN writes null, never bare NaN, in metrics.jsonl and summary.json."""
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=diverged", "optim.lr=1e6"])
    assert_ok(result)

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))

    summary = strict((tmp_path / "diverged" / "summary.json").read_text())
    assert summary["diverged"] is True and summary["train_loss"] is None
    lines = (tmp_path / "diverged" / "metrics.jsonl").read_text().splitlines()
    assert any(record.get("train/loss", 0) is None for record in map(strict, lines))


@pytest.mark.slow
def test_checkpoint_frequency_does_not_change_training(reference_run: Path, tmp_path: Path) -> None:
    """Finding 8: saving every step (2 ranks) ends with the same weights, BN statistics and val loss."""
    args = ["train", *TINY, f"out_dir={tmp_path}", "name=often", "checkpoint.every_steps=1"]
    assert_ok(run_cli(args, nproc=2))
    often, reference = load_weights(tmp_path / "often"), load_weights(reference_run)
    for key in reference:
        assert torch.equal(often[key], reference[key]), key
    summary = json.loads((tmp_path / "often" / "summary.json").read_text())
    assert summary["val_loss"] == json.loads((reference_run / "summary.json").read_text())["val_loss"]


# -- resource faults on a real (tiny) file system -------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 6 MB tmpfs mounted for the test (root only), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    """Fill ``disk`` until about ``leave_bytes`` are free."""
    free = shutil.disk_usage(disk).free
    with (disk / "filler").open("wb") as f:
        f.write(bytes(max(0, free - leave_bytes)))


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_stops_every_rank_with_one_line(small_disk: Path, finished_run: Path) -> None:
    """Finding 5: 2 ranks, the disk fills up: one line per rank, exit 1, no hang, the last checkpoint intact."""
    shutil.copytree(finished_run, small_disk / RUN)
    last = small_disk / RUN / "checkpoints" / "last.pt"
    before = last.read_bytes()
    fill(small_disk, 60_000)  # room for the records, not for a new checkpoint
    args = ["train", *TINY, f"out_dir={small_disk}", f"name={RUN}", "train.epochs=3", "on_config_change=continue"]
    started = time.monotonic()
    result = run_cli(args, nproc=2, timeout=180)
    assert time.monotonic() - started < 150
    assert_refused(result, "No space left on device", ranks=2)
    assert f"cannot write checkpoint {last}: No space left on device" in result.stderr
    assert "stopped because rank 0 failed" in result.stderr
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*.tmp"))


@pytest.mark.slow
def test_sharding_onto_a_full_disk_names_the_file_and_leaves_no_partial_shard(small_disk: Path) -> None:
    """4,096 noise images as PNG (~12 MB) onto a 6 MB disk: one line naming the shard, the disk freed."""
    result = run_cli(["shard", "synthetic", str(small_disk / "shards"), "--shard-size", "1MiB"])
    line = assert_refused(result, f"No space left on device while writing (unfinished file removed): {small_disk}/")
    assert re.search(r"/shards/(train|val)-\d{6}\.tar$", line), line
    assert not list((small_disk / "shards").glob(".*.tmp"))
    assert shutil.disk_usage(small_disk).free > 100_000  # the unfinished shard no longer fills the disk


@pytest.mark.slow
def test_read_only_run_directory_is_one_line(small_disk: Path, finished_run: Path) -> None:
    """A run directory on a file system mounted read-only: one line, nothing changed."""
    shutil.copytree(finished_run, small_disk / RUN)
    before = tree_hash(small_disk)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run_cli(["train", *TINY, f"out_dir={small_disk}", f"name={RUN}"])
    assert_refused(result, "Read-only file system")
    assert tree_hash(small_disk) == before


# -- refused before any work: the command line run in this process ---------------------------------
def base_and_config(base: bytes) -> Callable[[Path], None]:
    def setup(out: Path) -> None:
        write(out / "base.yaml", base)
        write(out / "bad.yaml", "base: base.yaml\n")

    return setup


def alias_bomb(out: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level, previous in zip("bcdefghij", "abcdefghi", strict=True):
        lines.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")
    write(out / "bad.yaml", "\n".join(lines) + "\n")


def summary_edit(text: bytes) -> Callable[[Path], None]:
    return lambda out: write(out / RUN / "summary.json", text)


RANGE_CASES = [
    Case("momentum-negative", ["optim.momentum=-1"], "optim.momentum must be in [0, 1], got -1"),
    Case("betas-one", ["optim.name=adamw", "optim.betas=[0.9]"], "optim.betas must hold 2 values, got 1: [0.9]"),
    Case("seed-huge", ["seed=99999999999999999999"], "seed must be in [0, 9223372036854775807], got 9999"),
    Case("timeout-zero", ["dist.timeout_s=0"], "dist.timeout_s must be in [1, 2592000], got 0"),
    Case("timeout-negative", ["dist.timeout_s=-5"], "dist.timeout_s must be in [1, 2592000], got -5"),
    Case("workers-negative", ["data.num_workers=-1"], "data.num_workers must be in [0, 256], got -1"),
    Case(
        "pad-negative", ["data.pad=-3", "on_config_change=continue"], "data.pad must be in [0, 4096], got -3", name=RUN
    ),
    Case("val-size-zero", ["data.synthetic_val_size=0"], "data.synthetic_val_size must be at least 1, got 0"),
    Case("eval-batch-negative", ["data.eval_batch_size=-1"], "data.eval_batch_size must be at least 0, got -1"),
    Case("cutout-negative", ["data.cutout=-2"], "data.cutout must be in [0, 4096], got -2"),
    Case("warmup-steps-negative", ["schedule.warmup_steps=-1"], "schedule.warmup_steps must be at least 0, got -1"),
    Case("clip-negative", ["train.grad_clip_norm=-1"], "train.grad_clip_norm must be at least 0, got -1"),
    Case("gamma-zero", ["schedule.gamma=0"], "schedule.gamma must be positive, got 0"),
    Case("swap-acc", ["swap.phase1_train_acc=1.5"], "swap.phase1_train_acc must be in [0, 1], got 1.5"),
    Case("milestone-negative", ["schedule.milestones=[-1]"], "schedule.milestones[0] must be at least 0, got -1"),
    Case("too-many-milestones", [f"schedule.milestones=[{','.join(['1'] * 1001)}]"], "holds 1001 values; at most 1000"),
    Case("name-comment", ["name=a #b"], "'#' starts a YAML comment; quote the value"),
    Case("name-hash", ["name='a #b'"], "name must be a plain directory name (printable characters, no '/' or '#')"),
    Case("name-newline", ["name=a\nb"], "the value holds a newline or another control character"),
    Case("yaml-name-newline", BAD_YAML, "got 'a\\nb'", config_file('name: "a\\nb"\n')),
    Case(
        "yaml-duplicate-key",
        BAD_YAML,
        "bad.yaml:3:1: duplicate key 'optim'",
        config_file("optim: {}\nseed: 1\noptim: {}\n"),
    ),
    Case("yaml-alias-bomb", BAD_YAML, "more than 100000 values (aliases expanded); refused", alias_bomb),
    Case(
        "yaml-million-list",
        BAD_YAML,
        "bad.yaml: larger than 1048576 bytes",
        config_file(f"schedule:\n  milestones: [{', '.join(map(str, range(1_000_000)))}]\n"),
    ),
    Case("yaml-not-utf8", BAD_YAML, "bad.yaml: not UTF-8 text (byte 0xff at offset 6)", config_file(b"seed: \xff\n")),
    Case("base-not-utf8", BAD_YAML, "base.yaml: not UTF-8 text (byte 0xe9", base_and_config(b"name: caf\xe9\n")),
    Case("base-duplicate-key", BAD_YAML, "base.yaml:2:1: duplicate key 'seed'", base_and_config(b"seed: 1\nseed: 2\n")),
    Case(
        "checkpoint-field-type",
        ["resume={out}/edited.pt"],
        "is not a dist_train checkpoint: its 'epoch' is 'x'",
        checkpoint_edit(lambda state: {**state, "epoch": "x"}),
    ),
    Case("lock-pid-text", [], "is not a readable lock (TypeError)", lock_of(socket.gethostname(), "12x"), name=RUN),  # type: ignore[arg-type]
    Case(
        "changed-config-without-checkpoint",
        ["optim.lr=0.1"],
        "(its checkpoint is gone) recorded in {out}/run/config.yaml was trained with another config",
        lambda out: (out / RUN / "checkpoints" / "last.pt").unlink(),
        name=RUN,
    ),
    # other commands: the first argument names it
    Case("sweep-not-utf8", ["sweep", "{out}/bad.yaml", "--dry-run"], "bad.yaml: not UTF-8 text", config_file(b"\xfe")),
    Case("report-not-utf8", ["report", "{out}/run", "--no-plot"], "not UTF-8 text", summary_edit(b'{"a": "\xff"}')),
    Case(
        "report-config-not-mapping",
        ["report", "{out}/run", "--no-plot"],
        "is not a dist_train summary (its 'config' is not a mapping)",
        summary_edit(b'{"name": "run", "config": [1, 2]}'),
    ),
]
COMMANDS = ("sweep", "report", "unlock")


@pytest.mark.slow
@pytest.mark.parametrize("case", RANGE_CASES, ids=[case.id for case in RANGE_CASES])
def test_refused_before_any_work_is_one_line(case: Case, out: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Values and files refused before anything is read or written, by the command line in this process."""
    from dist_train.cli import main

    if case.setup is not None:
        case.setup(out)
    before = tree_hash(out)
    args = [arg.replace("{out}", str(out)) for arg in case.args]
    if not args or args[0] not in COMMANDS:  # a config file names its run itself
        config = ["train", *args] if "--config" in args else ["train", *TINY, f"name={case.name}", *args]
        args = [*config, f"out_dir={out}"]
    capfd.readouterr()
    assert main(args) == 1
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-train: error:"), lines
    assert case.fragment.replace("{out}", str(out)) in lines[0], lines[0]
    assert tree_hash(out) == before


@pytest.mark.slow
def test_disk_full_while_writing_records_is_one_line_naming_the_path(small_disk: Path) -> None:
    """The disk fills up while a new run writes its records (TensorBoard events, metrics.jsonl): one line naming
    what could not be written, no writer-thread traceback."""
    fill(small_disk, 16_384)
    result = run_cli(["train", *TINY, f"out_dir={small_disk}", "name=new"])
    line = assert_refused(result, "No space left on device")
    assert f"cannot write {small_disk / 'new'}" in line


@pytest.mark.slow
def test_disk_full_at_lock_creation_leaves_no_lock(small_disk: Path) -> None:
    """No room for the lock: one line, no run directory or empty .lock left; and an unreadable lock (an empty one
    from an older version) is what `dist-train unlock` removes."""
    fill(small_disk, 0)
    result = run_cli(["train", *TINY, f"out_dir={small_disk}", "name=new"])
    assert_refused(result, "No space left on device")
    assert not (small_disk / "new").exists()
    (small_disk / "filler").unlink()
    write(small_disk / "old" / LOCK, b"")
    assert_ok(unlocked := run_cli(["unlock", str(small_disk / "old")]))
    assert "removed an unreadable lock" in unlocked.stdout and not (small_disk / "old" / LOCK).exists()


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of torchrun ``launcher`` whose RANK is ``rank``, once it runs."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


@pytest.mark.slow
def test_hung_peer_is_one_line_naming_it(tmp_path: Path) -> None:
    """Rank 1 stops (SIGSTOP) mid-run: rank 0 gives up after dist.timeout_s with one line naming rank 1 and the
    operation, not gloo's traceback."""
    args = ["train", *TINY, f"out_dir={tmp_path}", "name=hung", "train.epochs=50", "dist.timeout_s=10"]
    command = [*torchrun_cmd(2), "-m", "dist_train", *args]
    launcher = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    stopped = None
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "hung" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # into the training steps
        stopped = rank_pid(launcher.pid, 1)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        watchdog = threading.Timer(150, launcher.kill)
        watchdog.start()
        lines = []
        for text in launcher.stderr:
            lines.append(text)
            if "closing signal SIGTERM" in text:  # torchrun noted rank 0's failure; no need to wait 30 s for rank 1
                os.kill(stopped, signal.SIGKILL)
        launcher.wait()
        watchdog.cancel()
        stderr = "".join(lines)
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0
    errors = [line for line in stderr.splitlines() if "dist-train: error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    line = errors[0]
    assert line.startswith("[rank 0] dist-train: error: rank 1 stopped answering: no reply within 10 s"), line
    assert "Traceback" not in stderr and "Timed out waiting" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("torchrun: worker rank 0 failed first (exit status 1"), stderr[-3000:]
