"""``dist-train report``: runs' summary.json files as a table, a CSV and an error heatmap.

The heatmap is paper 4's figure: validation error over batch size × base
learning rate (any two config keys with ``--x``/``--y``). Several runs in one
cell (e.g. seeds) are averaged. Two kinds of failed run are marked: *diverged*
(the training loss stopped being finite) and *collapsed* (the loss stayed finite
but the model ended at chance level: validation accuracy at most
``COLLAPSE_FACTOR`` × 1 / number of classes, e.g. a constant prediction).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_train.config import flatten
from dist_train.data.catalog import CATALOG
from dist_train.errors import DistTrainError
from dist_train.yamlio import read_text

SUMMARY = "summary.json"
MAX_SUMMARY_BYTES = 16 << 20
"""The largest summary.json read (a real one is a few kB)."""
COLLAPSE_FACTOR = 1.5
"""A finite run whose validation accuracy is at most this many times chance (1 / classes) has collapsed."""
FIXED_CLASSES = {name: info.num_classes for name, info in CATALOG.items() if info.num_classes}
"""The published class counts of the built-in data sets."""


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]

    def config_value(self, dotted: str) -> Any:
        node: Any = self.summary.get("config", {})
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise DistTrainError(f"{self.run_dir / SUMMARY}: its config has no key '{dotted}'")
            node = node[part]
        return node

    @property
    def val_error(self) -> float:
        accuracy = self.summary.get("val_acc", float("nan"))
        return float("nan") if accuracy is None else 100.0 * (1.0 - float(accuracy))

    @property
    def diverged(self) -> bool:
        loss = self.summary.get("train_loss")
        return bool(self.summary.get("diverged")) or (isinstance(loss, float) and not math.isfinite(loss))

    @property
    def num_classes(self) -> int | None:
        """The summary's ``num_classes``, else the dataset's known class count; None when unknown."""
        if self.summary.get("num_classes"):
            return int(self.summary["num_classes"])
        data = self.summary.get("config", {}).get("data", {})
        dataset = data.get("dataset")
        return data.get("synthetic_classes") if dataset == "synthetic" else FIXED_CLASSES.get(dataset)

    @property
    def collapsed(self) -> bool:
        """Finite training loss but chance-level validation accuracy (distinct from diverged)."""
        accuracy, classes = self.summary.get("val_acc"), self.num_classes
        if self.diverged or accuracy is None or not classes or not math.isfinite(accuracy):
            return False
        return accuracy <= COLLAPSE_FACTOR / classes

    @property
    def status(self) -> str:
        return "diverged" if self.diverged else "collapsed" if self.collapsed else "ok"


def find_runs(paths: list[str | Path]) -> list[RunResult]:
    """Every run under ``paths`` (run directories, or directories holding them, at any depth)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise DistTrainError(f"no such run directory: {path}")
        found += [path / SUMMARY] if (path / SUMMARY).is_file() else sorted(path.rglob(SUMMARY))
    if not found:
        raise DistTrainError(f"no {SUMMARY} under {', '.join(map(str, paths))} (have the runs finished?)")
    runs = []
    for summary_path in dict.fromkeys(found):
        try:
            summary = json.loads(read_text(summary_path, DistTrainError, MAX_SUMMARY_BYTES))
        except (OSError, json.JSONDecodeError) as e:
            raise DistTrainError(f"cannot read {summary_path}: {e}") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
            raise DistTrainError(f"{summary_path} is not a dist_train summary (its 'config' is not a mapping)")
        runs.append(RunResult(summary_path.parent, summary))
    return runs


def varying_keys(runs: list[RunResult]) -> list[str]:
    """The config keys whose values differ between the runs (what a sweep varied), but ``name``."""
    flats = [flatten(run.summary["config"]) for run in runs]
    keys = dict.fromkeys(key for flat in flats for key in flat)
    return [key for key in keys if key not in ("name", "out_dir") and len({json.dumps(f.get(key)) for f in flats}) > 1]


def _number(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_rows(runs: list[RunResult], keys: list[str], root: Path) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = run.summary
        rows.append(
            {
                "run": os.path.relpath(run.run_dir, root),
                **{key: run.config_value(key) for key in keys},
                "val_error_pct": run.val_error,
                "val_acc_pct": 100.0 * s.get("val_acc", float("nan")),
                "best_val_acc_pct": 100.0 * s.get("best_val_acc", float("nan")),
                "train_loss": s.get("train_loss", float("nan")),
                "steps": s.get("steps"),
                "epochs": s.get("epochs"),
                "train_seconds": s.get("train_seconds"),
                "status": run.status,
            }
        )
    return rows


@dataclass(frozen=True)
class Grid:
    """Mean validation error per (x, y) cell."""

    x_key: str
    y_key: str
    xs: list[Any]
    ys: list[Any]
    error: dict[tuple[Any, Any], float]
    count: dict[tuple[Any, Any], int]
    diverged: dict[tuple[Any, Any], bool]
    collapsed: dict[tuple[Any, Any], bool] = field(default_factory=dict)
    """Cells where a run collapsed to chance (and none diverged)."""

    def best(self, x: Any = None) -> tuple[Any, Any] | None:
        """The cell of lowest finite error among those that did not diverge (in column ``x`` if given)."""
        finite = [
            (err, cell)
            for cell, err in self.error.items()
            if math.isfinite(err) and not self.diverged[cell] and (x is None or cell[0] == x)
        ]
        return min(finite, key=lambda item: item[0])[1] if finite else None

    def mark(self, cell: tuple[Any, Any]) -> str:
        """``div.``, ``coll.`` or nothing."""
        return "div." if self.diverged[cell] else "coll." if self.collapsed.get(cell) else ""


def make_grid(runs: list[RunResult], x_key: str, y_key: str) -> Grid:
    errors: dict[tuple[Any, Any], list[float]] = defaultdict(list)
    diverged: dict[tuple[Any, Any], bool] = defaultdict(bool)
    collapsed: dict[tuple[Any, Any], bool] = defaultdict(bool)
    for run in runs:
        cell = (run.config_value(x_key), run.config_value(y_key))
        errors[cell].append(run.val_error)
        diverged[cell] |= run.diverged
        collapsed[cell] |= run.collapsed
    xs = sorted({x for x, _ in errors}, key=_sort_key)
    ys = sorted({y for _, y in errors}, key=_sort_key)
    mean = {cell: sum(values) / len(values) for cell, values in errors.items()}
    count = {c: len(v) for c, v in errors.items()}
    only_collapsed = {cell: collapsed[cell] and not diverged[cell] for cell in errors}
    return Grid(x_key, y_key, xs, ys, mean, count, dict(diverged), only_collapsed)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_markdown(grid: Grid) -> str:
    """Rows: y values; columns: x values; cells: mean validation error (%), best in bold."""
    best = grid.best()
    header = f"| {grid.y_key} \\ {grid.x_key} | " + " | ".join(_label(x) for x in grid.xs) + " |"
    lines = [header, "|" + "---|" * (len(grid.xs) + 1)]
    for y in grid.ys:
        cells = []
        for x in grid.xs:
            if (x, y) not in grid.error:
                cells.append("")
                continue
            text = _number(grid.error[(x, y)])
            text = f"**{text}**" if (x, y) == best else text
            mark = grid.mark((x, y))
            cells.append(f"{text} ({mark})" if mark else text)
        lines.append(f"| {_label(y)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MEASURED = {
    "val_error_pct": ".2f",
    "val_acc_pct": ".2f",
    "best_val_acc_pct": ".2f",
    "train_loss": ".4g",
    "train_seconds": ".1f",
}
"""Format of the measured columns; config values are shown as given."""


def best_per_column_markdown(grid: Grid) -> str:
    """For each x (batch size): the best mean error and the y (base LR) it came at."""
    lines = [f"| {grid.x_key} | best val error (%) | at {grid.y_key} |", "|---|---|---|"]
    for x in grid.xs:
        best = grid.best(x)
        error, y = (_number(grid.error[best]), _label(best[1])) if best else ("–", "–")
        lines.append(f"| {_label(x)} | {error} | {y} |")
    return "\n".join(lines)


def rows_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per run; measured numbers rounded, config values (e.g. a base LR of 6.1e-05) as given."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_number(v, MEASURED[k]) if k in MEASURED else _label(v) for k, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_heatmap(grid: Grid, path: Path, title: str) -> None:
    """Validation error (%) over the grid: a colour per cell, its value written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.full((len(grid.ys), len(grid.xs)), np.nan)
    for (x, y), err in grid.error.items():
        values[grid.ys.index(y), grid.xs.index(x)] = err
    figure, axes = plt.subplots(figsize=(1.1 * len(grid.xs) + 2.5, 0.6 * len(grid.ys) + 2))
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="lightgrey")
    finite = values[np.isfinite(values)]
    image = axes.imshow(
        values, cmap=cmap, vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 100
    )
    best = grid.best()
    for (x, y), err in grid.error.items():
        i, j = grid.ys.index(y), grid.xs.index(x)
        text = _number(err, ".1f") + ("\ncoll." if grid.collapsed.get((x, y)) else "")
        text = "div." if grid.diverged[(x, y)] else text
        weight = "bold" if (x, y) == best else "normal"
        dark = math.isfinite(err) and image.norm(err) > 0.6  # viridis_r is dark at high error
        axes.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black", weight=weight)
    axes.set_xticks(range(len(grid.xs)), [_label(x) for x in grid.xs])
    axes.set_yticks(range(len(grid.ys)), [_label(y) for y in grid.ys])
    axes.set_xlabel(grid.x_key)
    axes.set_ylabel(grid.y_key)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="validation error (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    paths: list[str | Path],
    out_dir: str | Path | None = None,
    x_key: str = "data.batch_size",
    y_key: str = "optim.lr",
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and (with ``plot``) ``heatmap.png``; return their paths."""
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            message = "the heatmap needs matplotlib: pip install 'dist-train[report]' (or use --no-plot)"
            raise DistTrainError(message) from None
    runs = find_runs(paths)
    root = Path(os.path.commonpath([run.run_dir.resolve() for run in runs]))
    root = root.parent if len(runs) == 1 else root
    out = Path(out_dir) if out_dir is not None else root
    keys = list(dict.fromkeys([x_key, y_key, *varying_keys(runs)]))
    rows = sorted(table_rows(runs, keys, root), key=lambda r: (_sort_key(r[x_key]), _sort_key(r[y_key]), r["run"]))
    grid = make_grid(runs, x_key, y_key)
    out.mkdir(parents=True, exist_ok=True)
    written = {"markdown": out / "report.md", "csv": out / "report.csv"}
    best = grid.best()
    best_line = (
        f"Best: {x_key}={_label(best[0])}, {y_key}={_label(best[1])}: {_number(grid.error[best])}% validation error."
        if best
        else "Best: none (every run diverged or has no validation result)."
    )
    shown = os.path.relpath(root) if root.is_relative_to(Path.cwd()) else str(root)
    markdown = (
        f"# Sweep report: {len(runs)} runs under {shown}\n\n"
        f"Validation error (%) by {y_key} (rows) and {x_key} (columns); mean over runs in a cell, "
        f"best in bold, div. = training loss diverged, coll. = collapsed to chance (finite loss, validation "
        f"accuracy at most {COLLAPSE_FACTOR:g} × chance).\n\n{grid_markdown(grid)}\n\n{best_line}\n\n"
        f"{best_per_column_markdown(grid)}\n\n"
        f"## Runs\n\n{rows_markdown(rows)}\n"
    )
    written["markdown"].write_text(markdown)
    with written["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plot:
        written["heatmap"] = out / "heatmap.png"
        plot_heatmap(grid, written["heatmap"], f"validation error (%), {len(runs)} runs: {root.name}")
    return written
