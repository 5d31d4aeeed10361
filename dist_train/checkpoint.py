"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
the safe unpickler reads it; a reader never sees a half-written file because
the data goes to a temporary file in the same directory that is fsynced and
then renamed over the target. Files get the permissions of the user's umask.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from dist_train.errors import CheckpointError, ResourceError, describe_os_error, one_line

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step")
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "epoch": int,
    "step": int,
    "best_accuracy": (int, float),
    "stop_requested": bool,
    "diverged": bool,
    "train_loss": (int, float),
    "world_size": int,
    "config": dict,
    "callbacks": dict,
    "bn_buffers": list,
    "rng": list,
    "epoch_progress": (dict, type(None)),
}
"""The type of each top-level field a checkpoint may hold."""


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file next to ``path`` with the permissions the umask gives (not mkstemp's 0600: teammates
    on shared storage must be able to read the run's checkpoints)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _write_failure(path: Path, error: BaseException) -> ResourceError:
    """One line for a checkpoint that could not be written (torch reports a full disk as a RuntimeError)."""
    if isinstance(error, OSError):
        reason = describe_os_error(error)
    else:
        reason = one_line(error)
        try:
            if shutil.disk_usage(path.parent).free < 1 << 20:
                reason = "No space left on device"
        except OSError:
            pass
    return ResourceError(f"cannot write checkpoint {path}: {reason} (the previous checkpoint, if any, is intact)")


def atomic_save(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old or the new file.

    A failed write (full disk, no permission) leaves no temporary file and raises one ResourceError line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as e:
        raise _write_failure(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise _write_failure(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_failure(error: BaseException) -> str:
    """Why torch could not read a checkpoint, without torch's advice to retry with ``weights_only=False``
    (which would run whatever code a malicious file carries)."""
    text = str(error).strip()
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds objects that a checkpoint never holds{what}; refused without loading them"
    if "failed finding central directory" in text or isinstance(error, EOFError):
        return "the file is truncated or corrupted (an interrupted write or copy); use another checkpoint"
    first = text.splitlines()[0] if text else type(error).__name__
    return first.split(". This is an internal")[0]


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; any problem is one CheckpointError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_failure(e)}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a dist_train checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    for key, kind in FIELD_TYPES.items():
        if key in state and not isinstance(state[key], kind):
            raise CheckpointError(f"{path} is not a dist_train checkpoint: its '{key}' is {state[key]!r:.40}")
    return state
