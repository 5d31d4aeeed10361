"""The training-loader backends, in one table (``data.backend``).

A leaf module (no torch): validation and ``dist-train plan`` read the table's facts without loading any
loader; the builders are imported when a run builds its loaders.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """One loader backend and what it supports."""

    name: str
    """``data.backend``'s value."""
    makes_own_views: bool
    """It makes batch augmentation's M views itself (else the data set does)."""
    in_memory_only: bool
    """It holds the whole split in memory (no ImageFolder, no tar shards)."""


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", makes_own_views=False, in_memory_only=False),
        Backend("dali", makes_own_views=True, in_memory_only=False),
        Backend("tensor", makes_own_views=True, in_memory_only=True),
    )
}
"""Every loader backend by name (``auto`` picks one of these when the run starts)."""
