"""How a global batch splits: into each process's micro-batches, and an epoch into optimizer steps.

Arithmetic only (no torch): the plan, the SLURM submitter and every loader backend share it.
"""

from __future__ import annotations

from dist_train.errors import ConfigError


def micro_batch_size(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Per-process micro-batch: the global batch split over ranks and accumulation steps."""
    parts = world_size * grad_accum_steps
    if batch_size % parts:
        raise ConfigError(
            f"data.batch_size={batch_size} does not divide by world size {world_size} × "
            f"train.grad_accum_steps {grad_accum_steps}"
        )
    return batch_size // parts


def steps_per_epoch(length: int, batch_size: int, across_epochs: bool) -> int:
    """Optimizer steps in one epoch of ``length`` samples at global batch ``batch_size`` (one process).

    Per epoch (drop-last) ``length // batch_size``; across epochs the nearest whole number of batches
    to one pass, at least 1 (the stream, not the epoch, decides which samples a batch holds).
    """
    if across_epochs:
        return max(1, (2 * length + batch_size) // (2 * batch_size))
    return length // batch_size
