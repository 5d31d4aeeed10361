"""Which checkpoint a run resumes from (``resume: auto | never | PATH``), decided without reading one.

No torch here: ``dist-train submit`` checks ``resume=never`` before it queues a job.
"""

from __future__ import annotations

from pathlib import Path

from dist_train.errors import CheckpointError

LAST = "last.pt"
"""The run's latest checkpoint, in ``RUN/checkpoints/``."""


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
