"""Sweeps: a grid of config values, one run per combination (Masters & Luschi 2018).

A sweep file names a base run config, fixed overrides for every run, and the
grid::

    name: mnist_bs_lr            # runs go to <out_dir>/mnist_bs_lr/<run>
    config: ../mnist_f1.yaml     # relative to this file
    overrides:
      regime.lr_rule: per_sample
    grid:
      data.batch_size: [8, 32, 128]
      optim.lr: [0.001, 0.003]

Each run is named after its grid values (``batch_size=8,lr=0.001``), so a run
directory says what it is. Every combination is validated before anything runs.
"""

from __future__ import annotations

import difflib
import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dist_train.config import Config, check_name, load_config
from dist_train.errors import ConfigError
from dist_train.local_launch import local_torchrun
from dist_train.yamlio import read_yaml_mapping

SWEEP_KEYS = ("name", "config", "overrides", "grid")


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid."""

    label: str
    """The run's directory name, e.g. ``batch_size=8,lr=0.001``."""
    point: dict[str, Any]
    """Its grid values, by dotted key."""
    overrides: tuple[str, ...]
    """Every override on top of the base config (fixed ones, then the point's)."""
    config: Config


@dataclass(frozen=True)
class Sweep:
    name: str
    config_path: Path
    runs: tuple[SweepRun, ...]

    @property
    def directory(self) -> Path:
        """Where the runs go: every run's ``out_dir`` is this directory."""
        return Path(self.runs[0].config.out_dir)


def format_value(value: Any) -> str:
    """A grid value as it appears in run names and overrides (floats in their shortest form)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_label(point: dict[str, Any]) -> str:
    """``key=value,...`` with each key shortened to its last part where that stays unambiguous."""
    short = [key.rsplit(".", 1)[-1] for key in point]
    names = short if len(set(short)) == len(short) else list(point)
    return ",".join(
        f"{name}={format_value(value)}".replace("/", "-") for name, value in zip(names, point.values(), strict=True)
    )


def _mapping_to_overrides(values: dict[str, Any], source: str) -> list[str]:
    overrides = []
    for key, value in values.items():
        if isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a dotted key with one value, got a mapping")
        overrides.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return overrides


def _check_grid(grid: Any, path: Path) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: 'grid' must map config keys to lists of values, e.g. data.batch_size: [8, 32]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key '{key}' needs a non-empty list of values, got {values!r}")
        if any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"{path}: grid key '{key}' must list plain values (numbers, strings, booleans)")
        if len({format_value(v) for v in values}) != len(values):
            raise ConfigError(f"{path}: grid key '{key}' lists a value twice: {values}")
    return grid


def load_sweep(path: str | Path, extra_overrides: tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep file; ``extra_overrides`` (``key=value``) apply to every run."""
    path = Path(path)
    spec = read_yaml_mapping(path, "sweep", f"a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in spec:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (expected {', '.join(SWEEP_KEYS)})"
            raise ConfigError(f"{path}: unknown sweep key '{key}'{hint}")
    if not isinstance(spec.get("config"), str):
        raise ConfigError(f"{path}: 'config' must name the base run config file")
    name = spec.get("name", path.stem)
    if not isinstance(name, str):
        raise ConfigError(f"{path}: 'name' must be a plain directory name, got {name!r}")
    check_name(name, f"{path}: 'name'")
    fixed = spec.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: 'overrides' must map config keys to values")
    grid = _check_grid(spec.get("grid"), path)
    both = [key for key in grid if key in fixed]
    if both:
        raise ConfigError(f"{path}: '{both[0]}' is both in 'overrides' and in 'grid'")

    config_path = path.parent / spec["config"]
    fixed_overrides = [*_mapping_to_overrides(fixed, f"{path}: overrides"), *extra_overrides]
    base = load_config(config_path, fixed_overrides)
    common = [*fixed_overrides, f"out_dir={Path(base.out_dir) / name}"]
    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        label = run_label(point)
        overrides = (*common, *_mapping_to_overrides(point, f"{path}: grid"), f"name={label}")
        try:
            config = load_config(config_path, list(overrides))
        except ConfigError as e:
            raise ConfigError(f"{path}: run {label}: {e}") from None
        runs.append(SweepRun(label, point, overrides, config))
    return Sweep(name, config_path, tuple(runs))


def describe(sweep: Sweep) -> str:
    """The sweep's runs, one line each."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs of {sweep.config_path} in {sweep.directory}"]
    lines += [f"  {run.label}" for run in sweep.runs]
    return "\n".join(lines)


def is_done(run: SweepRun) -> bool:
    return (run.config.run_dir / "summary.json").is_file()


def run_locally(sweep: Sweep, nproc_per_node: int = 1) -> int:
    """Run the sweep here, one run after another (each in its own process, under torchrun when
    ``nproc_per_node`` > 1). Finished runs are skipped and interrupted ones resume, so the same
    command continues a sweep. Returns the number of runs that failed."""
    failed = []
    for index, run in enumerate(sweep.runs, 1):
        prefix = f"[{index}/{len(sweep.runs)}] {run.label}"
        if is_done(run):
            print(f"{prefix}: done already, skipped", flush=True)
            continue
        print(f"{prefix}: training", flush=True)
        launcher = local_torchrun(nproc_per_node) if nproc_per_node > 1 else [sys.executable]
        command = [*launcher, "-m", "dist_train", "train", "--config", str(sweep.config_path), *run.overrides]
        if subprocess.run(command).returncode != 0:
            failed.append(run.label)
            print(f"{prefix}: FAILED", flush=True)
    if failed:
        print(f"{len(failed)} of {len(sweep.runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)
