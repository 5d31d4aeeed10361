"""The range mini-language of the schema: which values a numeric key accepts, and how that reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEED_MAX = 2**63 - 1
"""The largest seed (and any integer key's largest value): torch and the loaders take 64-bit signed seeds."""
MAX_LIST = 1000
"""The most values a list key may hold."""


@dataclass(frozen=True)
class Range:
    """The values a numeric config key accepts (each element, for a list key)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    """A list key's exact length."""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """``at least 1``, ``positive``, ``in [0, 1)``."""
        low, high = number_text(self.low or 0), number_text(self.high or 0)
        if self.high is None:
            return (
                "positive" if self.low == 0 and self.low_open else f"{'above' if self.low_open else 'at least'} {low}"
            )
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def number_text(value: float) -> str:
    """``1`` for 1.0, ``0.5`` for 0.5."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def limits(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    length: int | None = None,
) -> dict[str, Range]:
    """A schema field's metadata giving its valid range (read by validation)."""
    return {"range": Range(low, high, low_open, high_open, length)}


def bounded(default: float, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A numeric schema field with its default and valid range (list fields: ``field(metadata=limits(...))``)."""
    return field(default=default, metadata=limits(low, high, **options))
