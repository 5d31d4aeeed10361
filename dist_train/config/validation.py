"""Every static check of a config's values: its ranges, its names and what ranges alone cannot express.

:func:`validate` runs when a config is loaded. :func:`check_reference` and :func:`check_plan_inputs` are what
planning needs of its inputs (:func:`dist_train.regime.make_plan`), read from the same declared ranges; checks
that need runtime facts (the training set's size) stay where those are known.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from dist_train.config.ranges import MAX_LIST, SEED_MAX, Range, number_text
from dist_train.config.schema import Config
from dist_train.data.backends import BACKENDS
from dist_train.data.catalog import CATALOG, DATASETS
from dist_train.errors import ConfigError
from dist_train.lr_rules import LR_RULES


def _check_value(key: str, value: Any, bounds: Range | None) -> None:
    """One value of a config key against its type's limits and its range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if bounds is not None and not bounds.contains(value):
        raise ConfigError(f"{key} must be {bounds.describe()}, got {number_text(value)}")
    if isinstance(value, int) and abs(value) > SEED_MAX:
        raise ConfigError(f"{key} must be at most {SEED_MAX} (64-bit), got {value}")


def check_ranges(tree: Any, prefix: str = "") -> None:
    """Every value of a config tree within the range its schema field gives (see ``bounded``), every
    number finite and 64-bit, every list at most ``MAX_LIST`` long; else one ConfigError line."""
    for f in fields(tree):
        key, value = f"{prefix}{f.name}", getattr(tree, f.name)
        bounds = f.metadata.get("range")
        if is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                raise ConfigError(f"{key} holds {len(value)} values; at most {MAX_LIST} are allowed")
            if bounds is not None and bounds.length is not None and len(value) != bounds.length:
                raise ConfigError(f"{key} must hold {bounds.length} values, got {len(value)}: {value}")
            for index, item in enumerate(value):
                _check_value(f"{key}[{index}]", item, bounds)
        else:
            _check_value(key, value, bounds)


def check_name(name: str, what: str = "name") -> None:
    """A run or sweep name: one plain directory name of printable characters, without '/' or '#'."""
    if name in {"", ".", ".."} or "/" in name or "#" in name or not name.isprintable():
        raise ConfigError(f"{what} must be a plain directory name (printable characters, no '/' or '#'), got {name!r}")


def _check_dataset(name: str) -> None:
    """A built-in data set's name or a factory's import path (``module:attr``, ``file.py:attr``)."""
    module, sep, attr = name.partition(":")
    if name not in DATASETS and not (sep and module and attr):
        raise ConfigError(
            f"unknown data.dataset '{name}'; choose one of {', '.join(DATASETS)}, "
            "or a factory: my_pkg.data:build or path/to/data.py:build"
        )


def _check_backend_holds(backend: str, dataset: str) -> None:
    """An in-memory-only backend (``tensor``) refuses a built-in data set that is not decoded into memory."""
    memory_only = backend in BACKENDS and BACKENDS[backend].in_memory_only
    if memory_only and dataset in CATALOG and not CATALOG[dataset].in_memory:
        others = " or ".join(name for name, row in BACKENDS.items() if not row.in_memory_only)
        raise ConfigError(f"data.backend={backend} holds in-memory data sets only; use {others} for {dataset}")


def validate(config: Config) -> None:
    """Every key within its range (declared with the schema), then what ranges alone cannot express."""
    check_ranges(config)
    data = config.data
    _check_backend_holds(data.backend, data.dataset)
    _check_dataset(data.dataset)
    if data.dataset in CATALOG and CATALOG[data.dataset].needs_root and not data.root:
        raise ConfigError(f"data.root is required for data.dataset={data.dataset}")
    schedule = config.schedule
    if schedule.factors and len(schedule.factors) != len(schedule.milestones):
        raise ConfigError(
            f"schedule.factors has {len(schedule.factors)} values for {len(schedule.milestones)} schedule.milestones"
        )
    if sorted(schedule.milestones) != list(schedule.milestones):
        raise ConfigError(f"schedule.milestones must be increasing, got {schedule.milestones}")
    check_name(config.name)


def _no_reference_error(what: str) -> ConfigError:
    return ConfigError(f"{what} needs a reference recipe: set regime.reference_batch_size (it is 0)")


def check_reference(reference_batch_size: int, lr_rule: str, adapt: bool) -> None:
    """The rules that scale from a reference batch (``linear``, ``sqrt``) and ``regime.adapt`` need one (0: none).

    Not part of :func:`validate`: such a config loads, and planning it says what is missing."""
    if reference_batch_size == 0:
        if lr_rule in LR_RULES and LR_RULES[lr_rule].needs_reference:
            raise _no_reference_error(f"regime.lr_rule={lr_rule}")
        if adapt:
            raise _no_reference_error("regime.adapt=true")


@cache
def _declared(key: str) -> Range:
    """The range the schema declares for the dotted key ``section.name``."""
    section, name = key.split(".")
    tree = getattr(Config(), section)
    return next(f.metadata["range"] for f in fields(tree) if f.name == name)


def _check_declared(key: str, value: float) -> None:
    bounds = _declared(key)
    if not bounds.contains(value):
        raise ConfigError(f"{key} must be {bounds.describe()}, got {value}")


def check_plan_inputs(
    lr_rule: str, batch_size: int, reference_batch_size: int, adapt: bool, lr: float, epochs: int, warmup_epochs: float
) -> None:
    """A plan's inputs (those of :func:`dist_train.regime.make_plan`, which need not come from a loaded config)
    within the ranges the schema declares for their keys; ``reference_batch_size`` 0 means none."""
    if lr_rule not in LR_RULES:
        raise ConfigError(f"regime.lr_rule must be one of {', '.join(LR_RULES)}, got '{lr_rule}'")
    _check_declared("data.batch_size", batch_size)
    if not _declared("regime.reference_batch_size").contains(reference_batch_size):
        raise ConfigError(f"regime.reference_batch_size must be positive (or 0 for none), got {reference_batch_size}")
    check_reference(reference_batch_size, lr_rule, adapt)
    _check_declared("optim.lr", lr)
    _check_declared("train.epochs", epochs)
    _check_declared("regime.warmup_epochs", warmup_epochs)
