"""The functions behind :mod:`dist_train`'s public names that have no other home: train, plan, read a run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dist_train.config import Config

if TYPE_CHECKING:  # torch and the data stack load when a run is trained or planned, not on import
    from torch import nn

    from dist_train.regime import Plan


def train(config: Config, model: nn.Module | Any = None, dataset: Any = None) -> dict[str, Any]:
    """Train (or continue) the run ``config`` describes, inside the process group of the environment.

    Call it on every rank of a ``torchrun`` job (or alone). ``model``: an ``nn.Module`` (copied) or a model
    factory, used instead of ``config.model``; ``dataset``: a data-set factory's answer (``ArraySplits``,
    ``DatasetPair``) or the factory itself, used instead of ``config.data.dataset``. Objects that are not
    importable by path are recorded as ``given:NAME`` in the run's config.yaml. Returns the run's summary
    (what ``summary.json`` holds); errors are raised as :class:`dist_train.errors.DistTrainError`.
    """
    from dist_train.plugins import given
    from dist_train.run import train as run

    with given(model=model, dataset=dataset) as names:
        if "model" in names:
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=names["model"], width=0))
        if "dataset" in names:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=names["dataset"]))
        return run(config)


def make_plan(config: Config, train_size: int = 0) -> Plan:
    """The learning-rate regime ``config`` would follow (what ``dist-train plan`` prints), for ``train_size``
    training images (0: counted as ``dist-train plan`` counts them, calling a data-set factory if need be)."""
    from dist_train.data.sizes import train_size as count
    from dist_train.regime import plan_from_config

    return plan_from_config(config, count(config.data, train_size).count)


@dataclass
class RunRecord:
    """What a run directory holds, read back."""

    run_dir: Path
    config: dict[str, Any]
    """The resolved config (config.yaml)."""
    summary: dict[str, Any] | None
    """Final figures (summary.json); None while the run has not finished."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Every logged step/epoch record (metrics.jsonl), in order."""


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory (``out_dir/name``): its config, summary and metrics."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    metrics_path = run_dir / "metrics.jsonl"
    lines = metrics_path.read_text().splitlines() if metrics_path.is_file() else []
    return RunRecord(run_dir, config, summary, [json.loads(line) for line in lines if line.strip()])
