"""The diffusion monitor: how far the weights have travelled from their initialisation.

Method card
-----------
*Paper.* Hoffer et al. (2017) observe that in the initial high-learning-rate
phase ``||w_t - w_0||`` grows like ``log t`` (t = number of updates), an
"ultra-slow diffusion": a run that makes fewer updates (a large batch for the
same epochs) travels less far, which regime adaptation repairs.

*Code.* A trainer callback on rank 0 logs the distance of the whole model and of
each layer every ``diffusion.every_steps`` updates (TensorBoard ``diffusion/*``
and metrics.jsonl). At the end of the initial phase (``diffusion.fit_until_step``,
by default the first lr milestone) it fits ``d ≈ a·log(t) + b`` by least squares
and records the slope ``a`` and R² (TensorBoard text ``diffusion/fit``, a ``diffusion_fit`` line in
metrics.jsonl). Layers are named by their module paths (:func:`layer_labels`). ``w_0`` and the recorded
points are part of the checkpoint, so they survive resume.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dist_train.callbacks import Callback

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer


def fit_log(steps: list[int], distances: list[float]) -> tuple[float, float, float]:
    """Least-squares fit ``distance ≈ slope·log(step) + intercept``; returns (slope, intercept, R²)."""
    points = [(math.log(t), d) for t, d in zip(steps, distances, strict=True) if t > 0]
    if len(points) < 2:
        return float("nan"), float("nan"), float("nan")
    xs, ys = torch.tensor(points, dtype=torch.float64).unbind(1)
    x_mean, y_mean = xs.mean(), ys.mean()
    sxx = ((xs - x_mean) ** 2).sum()
    if sxx == 0:
        return float("nan"), float("nan"), float("nan")
    slope = ((xs - x_mean) * (ys - y_mean)).sum() / sxx
    intercept = y_mean - slope * x_mean
    residual = ((ys - (slope * xs + intercept)) ** 2).sum()
    total = ((ys - y_mean) ** 2).sum()
    r2 = 1 - residual / total if total > 0 else torch.tensor(1.0)
    return float(slope), float(intercept), float(r2)


def layer_of(parameter_name: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1``: a layer's weight and bias count together."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def kind_of(module: nn.Module) -> str:
    """A short name for the kind of layer: ``conv``, ``bn``, ``norm``, ``fc`` or the class name in lower case."""
    name = type(module).__name__
    markers = (("Conv", "conv"), ("BatchNorm", "bn"), ("Norm", "norm"), ("Linear", "fc"))
    return next((kind for marker, kind in markers if marker in name), name.lower())


def layer_labels(model: nn.Module) -> dict[str, str]:
    """The name each layer of ``model`` is shown by, by module path: the path itself, except for a layer that a
    container knows only by its index, which is named by its kind and count among its siblings of that kind
    (in a Sequential ``0``, ``1``, ``4`` become ``conv1``, ``bn1``, ``conv2``; ``stem.1`` becomes ``stem.bn1``)."""
    labels: dict[str, str] = {}
    for path, module in model.named_modules():
        seen: dict[str, int] = defaultdict(int)
        for name, child in module.named_children():
            kind = kind_of(child)
            seen[kind] += 1
            if name.isdigit() and any(True for _ in child.parameters(recurse=False)):
                prefix = f"{path}." if path else ""
                labels[prefix + name] = f"{prefix}{kind}{seen[kind]}"
    return labels


class WeightDistance(Callback):
    """Trainer callback logging ||w_t - w_0|| (whole model and per layer) and its log-fit."""

    name = "weight_distance"

    def __init__(self, every_steps: int, fit_until_step: int) -> None:
        self.every_steps = every_steps
        self.fit_until_step = fit_until_step
        self.initial: dict[str, torch.Tensor] = {}
        self.layer: dict[str, str] = {}
        """Each parameter's layer, by the name it is logged under (``diffusion/layer/<name>``)."""
        self.steps: list[int] = []
        self.distances: list[float] = []
        self.fit: dict[str, float] | None = None

    def setup(self, model: nn.Module) -> None:
        """Remember ``w_0`` (a resumed run then takes the checkpoint's) and each parameter's layer name."""
        self.initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        labels = layer_labels(model)
        self.layer = {name: labels.get(layer_of(name), layer_of(name)) for name in self.initial}

    @torch.no_grad()
    def distances_now(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        squares: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        for name, param in model.named_parameters():
            diff = (param.detach() - self.initial[name].to(param.device)).double()
            squares[self.layer[name]] = squares[self.layer[name]] + diff.square().sum().cpu()
        total = math.sqrt(sum(float(s) for s in squares.values()))
        return total, {layer: math.sqrt(float(s)) for layer, s in squares.items()}

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.step
        if step % self.every_steps:
            return
        total, per_layer = self.distances_now(trainer.module)
        self.steps.append(step)
        self.distances.append(total)
        values = {"diffusion/distance": total, **{f"diffusion/layer/{k}": v for k, v in per_layer.items()}}
        trainer.monitor.log(step, values, log_step=math.log(step))
        if self.fit is None and step >= self.fit_until_step:
            self._fit(trainer)

    def _fit(self, trainer: Trainer) -> None:
        slope, intercept, r2 = fit_log(self.steps, self.distances)
        self.fit = {"slope": slope, "intercept": intercept, "r2": r2, "until_step": self.steps[-1]}
        line = f"||w_t - w_0|| ≈ {slope:.4g}·log t + {intercept:.4g} (R² {r2:.3f}) up to step {self.steps[-1]}"
        trainer.monitor.event(trainer.step, "diffusion_fit", **self.fit)
        trainer.monitor.text("diffusion/fit", line, trainer.step)  # one value each: text, not one-point charts
        trainer.monitor.print(f"diffusion: {line}")

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]:
        if self.fit is None and self.steps:
            self._fit(trainer)
        return {"diffusion_fit": self.fit, "diffusion_points": list(zip(self.steps, self.distances, strict=True))}

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "steps": self.steps, "distances": self.distances, "fit": self.fit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = state["initial"]
        self.steps, self.distances, self.fit = list(state["steps"]), list(state["distances"]), state["fit"]


def build(facts: RunFacts) -> WeightDistance | None:
    """The monitor when ``diffusion.every_steps`` is set; the fit ends at ``diffusion.fit_until_step``, by default
    the first lr milestone (or the run's end)."""
    diffusion, plan = facts.cfg.diffusion, facts.plan
    if not diffusion.every_steps:
        return None
    return WeightDistance(
        diffusion.every_steps, diffusion.fit_until_step or (plan.milestone_steps or (plan.total_steps,))[0]
    )
