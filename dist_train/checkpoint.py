"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
the safe unpickler reads it; a reader never sees a half-written file because
the data goes to a temporary file in the same directory that is fsynced and
then renamed over the target.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from dist_train.errors import CheckpointError

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step")
LAST = "last.pt"


def atomic_save(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; any problem is one CheckpointError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a dist_train checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    return state


def find_resume(resume: str, checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` (the run's last.pt if any), ``never``, or a path."""
    last = checkpoint_dir / LAST
    if resume == "auto":
        return last if last.exists() else None
    if resume == "never":
        if last.exists():
            raise CheckpointError(
                f"{last} exists and resume=never; pick another name=... or resume=auto to continue it"
            )
        return None
    return Path(resume)
