"""The run directory's integrity: one run at a time, nothing touched before everything is checked, nothing deleted.

A run directory (``out_dir/name``) holds ``config.yaml``, ``checkpoints/``,
``metrics.jsonl``, TensorBoard's event files and ``summary.json``. Three rules keep it whole:

1. **One writer.** Rank 0 holds ``.lock`` (host, pid, start time, job) for the life
   of the run; a second run on the directory fails at once naming the holder.
   A restarted attempt of the *same* job (torchrun ``--max-restarts``, a SLURM
   requeue) takes its own lock back; a lock left by a dead process of another job
   is reported with how to clear it.
2. **Check first, write later.** :func:`check_resume` compares the checkpoint's
   config with this run's before anything is written; a refused command leaves the
   directory byte-for-byte as it was.
3. **Move aside, never delete.** When a resume rewinds the records past its
   checkpoint, or a run continues with a changed config, what is replaced goes to
   ``history/<time>/`` (metrics lines, a copy of the event files in ``tb/``, the old ``config.yaml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dist_train.config import Config, flatten, to_dict
from dist_train.errors import CheckpointError, DistTrainError
from dist_train.jsonio import write_json
from dist_train.yamlio import read_yaml_mapping

LOCK = ".lock"
HEARTBEAT_S = 30.0
"""How often the holder refreshes the lock file's modification time."""
STALE_AFTER_S = 600.0
"""A lock from another host not refreshed for this long belongs to a process that is gone."""

FREE_KEYS = (
    "name",
    "out_dir",
    "resume",
    "on_config_change",
    "device",
    "data.num_workers",
    "data.eval_batch_size",
    "data.download",
    "train.log_every",
    "train.eval_every",
    "train.compile",
    "train.deterministic",
    "train.channels_last",
    "train.stop_on_divergence",
    "checkpoint.",
    "dist.",
    "diffusion.",
    "noise_scale.",
)
"""Config keys that may change between a run's attempts without changing what is trained."""


class RunLockedError(DistTrainError):
    """Another process holds (or held, and died holding) the run directory's lock."""


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def process_stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...); [] if it has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """When process ``pid`` started (kernel clock ticks), to tell a reused pid from the holder; '' if unknown."""
    fields = process_stat(pid)
    return fields[19] if fields else ""


def _alive(pid: int, started: str) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = process_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped (a SIGKILLed worker whose agent died too)
        return False
    return not started or not fields or fields[19] == started


def current_job() -> str:
    """What stays the same across restarts of this job: its SLURM job, else its torchrun agent or run id."""
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = os.environ.get("SLURM_ARRAY_JOB_ID") if array else os.environ["SLURM_JOB_ID"]
        return f"slurm:{job}" + (f"_{array}" if array else "")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun:{run_id}"
    if run_id:  # torchrun without --rdzv-id: its agent (the parent) survives worker restarts
        return f"torchrun-agent:{socket.gethostname()}:{os.getppid()}:{_process_start(os.getppid())}"
    return ""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: float
    process_start: str
    job: str

    @classmethod
    def me(cls) -> LockHolder:
        return cls(socket.gethostname(), os.getpid(), time.time(), _process_start(os.getpid()), current_job())

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {_utc(self.started)}"


def read_lock(path: Path) -> tuple[LockHolder, float]:
    """The holder recorded in lock file ``path`` and the seconds since it was last refreshed."""
    try:
        holder = LockHolder(**json.loads(path.read_text()))
        kinds = (str, int, (int, float), str, str)
        if not all(isinstance(getattr(holder, f.name), kind) for f, kind in zip(fields(holder), kinds, strict=True)):
            raise TypeError("a field of the wrong type")
        return holder, time.time() - path.stat().st_mtime
    except (OSError, ValueError, TypeError) as e:
        raise RunLockedError(
            f"{path} is not a readable lock ({type(e).__name__}); if no run uses {path.parent}, remove it"
        ) from None


def holder_alive(holder: LockHolder, age_s: float) -> bool:
    """On this host: whether the process runs; elsewhere: whether it refreshed the lock recently."""
    if holder.host == socket.gethostname():
        return _alive(holder.pid, holder.process_start)
    return age_s < STALE_AFTER_S


def in_use(path: Path, holder: LockHolder) -> RunLockedError:
    return RunLockedError(
        f"{path.parent} is in use by another run ({holder.describe()}); wait for it to end, or use another name=..."
    )


def clear_stale_lock(run_dir: Path) -> str | None:
    """Remove the lock of ``run_dir`` if its holder is gone (what ``dist-train unlock`` does); refuse while
    it may still run. Returns what was removed, None when there was no lock."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    try:
        holder, age = read_lock(path)
    except RunLockedError:  # a holder writes its lock whole (RunLock.acquire): this one's writer is gone
        path.unlink(missing_ok=True)
        return f"{run_dir}: removed an unreadable lock"
    if holder_alive(holder, age):
        raise in_use(path, holder)
    path.unlink(missing_ok=True)
    return f"{run_dir}: removed the stale lock of {holder.describe()}"


class RunLock:
    """The lock of one run directory, held by rank 0 from start-up to exit."""

    def __init__(self, run_dir: Path, holder: LockHolder, created_dir: bool, note: str = "") -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK
        self.holder = holder
        self.created_dir = created_dir
        self.note = note
        """A line to print: why a lock that was already there was taken over."""
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock of ``run_dir`` (created if missing), or fail with one line naming the holder."""
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        me = LockHolder.me()
        path = run_dir / LOCK
        note = ""
        # Written whole to a file of our own, then linked into place: the lock exists only complete (a full
        # disk fails before it exists), and only one of two racing runs can create it.
        tmp = path.with_name(f"{LOCK}.{me.pid}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(me)) + "\n")
            os.link(tmp, path)
        except FileExistsError:
            note = cls._take_over(path, me)
        except OSError:
            tmp.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return cls(run_dir, me, created, note)

    @staticmethod
    def _take_over(path: Path, me: LockHolder) -> str:
        """Replace a lock left by an earlier attempt of this job; refuse any other."""
        holder, age = read_lock(path)
        alive = holder_alive(holder, age)
        if holder.job and holder.job == me.job and not (holder.host == me.host and alive and holder.pid != me.pid):
            tmp = path.with_name(f"{LOCK}.{me.pid}.tmp")
            tmp.write_text(json.dumps(asdict(me)) + "\n")
            os.replace(tmp, path)
            return f"took over the run lock of an earlier attempt of this job ({holder.describe()})"
        if alive:
            raise in_use(path, holder)
        gone = "is no longer running" if holder.host == me.host else f"has not refreshed it for {age / 60:.0f} min"
        raise RunLockedError(
            f"{path.parent} has a stale lock: its holder ({holder.describe()}) {gone}; "
            f"if no run uses this directory, clear it with: dist-train unlock {path.parent}"
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Drop the lock if it is still ours; remove the run directory if this run created it and left it empty."""
        self._stop.set()
        try:
            if LockHolder(**json.loads(self.path.read_text())) == self.holder:
                self.path.unlink()
        except (OSError, ValueError, TypeError):
            pass
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                self.run_dir.rmdir()


# -- config against checkpoint -----------------------------------------------------------------------
def _is_free(key: str) -> bool:
    return any(key == free or (free.endswith(".") and key.startswith(free)) for free in FREE_KEYS)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every key that matters for training and differs (free keys ignored). A key the
    checkpoint predates (a setting added since) is no change while it has its default value."""
    old, new = flatten(saved), flatten(current)
    defaults = flatten(to_dict(Config()))
    keys = [key for key in new if not _is_free(key)] + [key for key in old if key not in new and not _is_free(key)]
    return [
        f"{key}: {old.get(key, '(absent)')} → {new.get(key, '(absent)')}"
        for key in keys
        if old.get(key) != new.get(key) and not (key not in old and key in defaults and new[key] == defaults[key])
    ]


@dataclass(frozen=True)
class ResumeCheck:
    changes: list[str]
    """Differences the user allowed (``on_config_change=continue``); printed, then training continues."""
    notes: list[str]
    """Other things worth a line (a different world size)."""


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config that ``run_dir/config.yaml`` records (None without one): what a run directory whose
    checkpoint is gone was trained with."""
    path = run_dir / "config.yaml"
    return read_yaml_mapping(path, "run config", "not a run's config.yaml") if path.is_file() else None


def check_resume(
    current: dict[str, Any],
    state: dict[str, Any],
    source: Path,
    world_size: int,
    on_change: str,
    what: str = "checkpoint",
) -> ResumeCheck:
    """Whether the run of ``current`` may continue from the checkpoint ``state`` read from ``source``
    (``what`` names it: a run directory without a checkpoint is checked against its ``config.yaml``).

    Refuses (one CheckpointError line, before anything is written) when the configs differ in a
    key that matters and ``on_change`` is ``refuse``.
    """
    saved = state.get("config")
    changes = config_changes(saved, current) if isinstance(saved, dict) else []
    if changes and on_change != "continue":
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise CheckpointError(
            f"{what} {source} was trained with another config ({shown}); nothing was changed. "
            "To continue it with the new values pass on_config_change=continue; to start a new run, "
            "pass another name=..."
        )
    saved_world = state.get("world_size")
    notes = []
    if isinstance(saved_world, int) and saved_world != world_size:
        notes.append(
            f"world size {saved_world} → {world_size}: continuing; per-rank random streams restart, "
            "so the run is no longer bitwise the same as an uninterrupted one"
        )
    return ResumeCheck(changes, notes)


def check_model_fits(model_state: dict[str, Any], saved: dict[str, Any], source: Path) -> None:
    """One line naming the first missing/unexpected keys or shape mismatches when ``saved`` does not fit."""
    missing = [key for key in model_state if key not in saved]
    unexpected = [key for key in saved if key not in model_state]
    shapes = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(value.shape)} here"
        for key, value in model_state.items()
        if key in saved and hasattr(saved[key], "shape") and tuple(saved[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit this run's model: {'; '.join(problems)}")


# -- writing, once everything is checked --------------------------------------------------------------
class History:
    """``history/<time>/`` of a run directory: where replaced records go instead of being deleted."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            self._folder = self.run_dir / "history" / stamp
            self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def keep_copy(self, path: Path) -> None:
        if path.is_dir():
            shutil.copytree(path, self.folder / path.name)
        elif path.exists():
            shutil.copy2(path, self.folder / path.name)


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Temporary files of writes a killed process never finished (the target files are whole)."""
    leftovers = [
        *run_dir.glob("checkpoints/.*.tmp"),
        *run_dir.glob("*.json.tmp"),
        *run_dir.glob("*.jsonl.tmp"),
        *run_dir.glob("*.yaml.tmp"),
        *run_dir.glob(f"{LOCK}.*.tmp"),
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def events_dir(run_dir: Path) -> Path:
    """Where the run's TensorBoard events are: the run directory itself, so that ``tensorboard --logdir`` on
    its parent lists the run by its name (``tb/`` in a run directory started before that)."""
    old = run_dir / "tb"
    return old if old.is_dir() else run_dir


def rewind_metrics(run_dir: Path, step: int, history: History) -> int:
    """Keep ``metrics.jsonl`` up to ``step`` (the checkpoint resumed from; -1 for a fresh start).

    The lines after it, and a copy (in ``tb/``) of the TensorBoard events the writer will purge, go to
    ``history``; a line cut short by a killed process is dropped. Returns the lines moved.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    kept, cut = [], []
    for line in path.read_text().splitlines():
        try:
            (kept if json.loads(line).get("step", 0) <= step else cut).append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    if not cut:
        return 0
    (history.folder / "metrics.jsonl").write_text("".join(f"{line}\n" for line in cut))
    copies = history.folder / "tb"
    copies.mkdir(exist_ok=True)
    for events in events_dir(run_dir).glob("events.out.tfevents.*"):
        shutil.copy2(events, copies / events.name)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)
    return len(cut)


def write_config(run_dir: Path, text: str, history: History) -> None:
    """``config.yaml`` of the run; a different earlier one is kept in ``history``."""
    path = run_dir / "config.yaml"
    if path.exists() and path.read_text() != text:
        history.keep_copy(path)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_summary(run_dir: Path, summary: dict[str, Any], history: History) -> None:
    """``summary.json`` of the run; a different earlier one is kept in ``history``."""
    path = run_dir / "summary.json"
    if path.exists():
        history.keep_copy(path)
    write_json(path, summary)
