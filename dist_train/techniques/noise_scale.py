"""The gradient noise scale, measured live: how large a batch still buys fewer steps.

Method card
-----------
*Paper.* McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch Training": with
G the true gradient and Σ the per-sample gradient covariance, the noise scale B_simple = tr(Σ)/|G|²
predicts the trade-off between steps and samples at batch B: S/S_min = 1 + B_noise/B and
E/E_min = 1 + B/B_noise (:mod:`dist_train.batch_prediction`). A batch well below
B_noise trains in proportionally fewer steps when doubled; well above it, doubling only doubles the samples.

*Code.* A batch of B samples has E|G_B|² = |G|² + tr(Σ)/B. Data-parallel training holds gradients over two
batch sizes at every step: each micro-batch's of B_small samples (a rank's, before DDP's all-reduce, taken in
a DDP communication hook on each bucket; or, with gradient accumulation, each micro-batch's own, the
difference of the accumulated gradients around its backward) and the reduced one over B_big, the global
batch, seen before clipping. Every ``noise_scale.every_steps`` steps the squared norms (fp32, summed on the
device) give unbiased |G|² and tr(Σ) (:func:`~dist_train.batch_prediction.estimates`), one small all-reduce
averaging the small batches' over the ranks and one host read; between measurements nothing is computed or
read. The two are averaged separately (a bias-corrected moving average, ``noise_scale.ema_decay``) and
B_simple is their ratio. Logged as ``noise/b_simple``, ``noise/grad_sq``, ``noise/trace_sigma`` (TensorBoard,
metrics.jsonl, B_simple in the Overview group and the epoch line); summary.json keeps each epoch's value.
In SWAP's phase 2 the replica's group is the big batch. Batch sizes count distinct samples (batch
augmentation's copies of a sample are one sample); BatchNorm couples a batch's samples, so the estimate is
cleanest for models without it.

*Switch.* ``noise_scale.every_steps`` (0 = off); one process without gradient accumulation has one batch size
only and says so in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_train.batch_prediction import SUMMARY_KEY, estimates
from dist_train.callbacks import Callback, StepBatches
from dist_train.distributed import all_reduce_sum

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer


class Average:
    """A bias-corrected exponential moving average (``decay`` 0: the last value)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.total, self.weight = decay, 0.0, 0.0

    def add(self, value: float) -> float:
        self.total = self.decay * self.total + (1 - self.decay) * value
        self.weight = self.decay * self.weight + (1 - self.decay)
        return self.value

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight else float("nan")


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ |t|² over ``tensors``, on their device (nothing read: as the clipping's norm, see grad_clip.py)."""
    return nn.utils.get_total_norm(tensors).square()


class NoiseScale(Callback):
    """Measures B_simple every ``every_steps`` steps from micro-batch (B_small) and global (B_big) gradients."""

    name = "noise_scale"

    def __init__(
        self, every_steps: int, decay: float, micro: int, accum: int, world: int, group: dist.ProcessGroup | None
    ) -> None:
        self.every_steps, self.accum, self.world, self.group = every_steps, accum, world, group
        self.b_small, self.b_big = micro, micro * accum * world
        self.per_rank = accum - 1 if accum > 1 else 1
        """Small-batch gradients measured per rank and step: every micro-batch's but the last (whose backward
        is DDP's all-reduce), or the rank's own (one micro-batch a step, through the comm hook)."""
        self.grad_sq, self.trace_sigma = Average(decay), Average(decay)
        self.per_epoch: list[tuple[int, float]] = []
        self.measuring = False
        self._small: torch.Tensor | None = None
        self._hooked = False
        self._params: list[nn.Parameter] = []

    @property
    def b_simple(self) -> float:
        grad_sq = self.grad_sq.value
        return self.trace_sigma.value / grad_sq if grad_sq > 0 else float("nan")

    def setup(self, model: nn.Module) -> None:
        self._params = [p for p in model.parameters() if p.requires_grad]

    def _due(self, step: int) -> bool:
        """Whether optimizer step ``step + 1`` (the next one) is measured."""
        return (step + 1) % self.every_steps == 0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.measuring = self._due(trainer.step)
        if self.accum == 1 and not self._hooked:
            ddp = getattr(trainer.model, "_orig_mod", trainer.model)  # under torch.compile
            if not isinstance(ddp, DistributedDataParallel):
                raise RuntimeError("noise_scale needs DDP's gradient buckets (the model is not wrapped in DDP)")
            ddp.register_comm_hook(self, NoiseScale._hook)
            self._hooked = True

    def _hook(self, bucket):  # unannotated: DDP checks the annotations, which would be strings here
        """DDP's own all-reduce of ``bucket`` (a ``dist.GradBucket``), after adding its local squared norm on a
        measured step."""
        buffer = bucket.buffer()
        if self.measuring:
            self._add_small(torch.linalg.vector_norm(buffer, dtype=torch.float32).square())
        # As DDP's own reduction: times 1/world (not divided by world: the bits differ for 3 ranks), then summed.
        buffer.mul_(1 / self.world)
        future = dist.all_reduce(buffer, group=self.group, async_op=True).get_future()
        return future.then(lambda done: done.value()[0])

    def _add_small(self, value: torch.Tensor) -> None:
        self._small = value if self._small is None else self._small + value

    def step_batches(self, trainer: Trainer, batches: StepBatches) -> StepBatches:
        if self.accum == 1:
            return batches
        return (self._watched(group) if self.measuring else group for group in batches)

    def _watched(self, group: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """``group``'s micro-batches; before each after the first, the squared norm of the previous one's
        gradient (the accumulated gradient's growth, times ``accum``: the loss is divided by it)."""
        before: dict[int, torch.Tensor] = {}
        for index, pair in enumerate(group):
            if index:
                now = {i: p.grad.detach() for i, p in enumerate(self._params) if p.grad is not None}
                grown = [g - before[i] if i in before else g for i, g in now.items()]
                self._add_small(squared_norm(grown) * self.accum**2)
                if index < self.accum - 1:  # another micro-batch will be measured against this one
                    before = {i: g.clone() for i, g in now.items()}
            yield pair

    def before_optimizer_step(self, trainer: Trainer) -> None:
        if not self.measuring or self._small is None:
            return
        small, self._small = self._small, None
        if self.world > 1:
            all_reduce_sum(small, self.group)
        big = squared_norm([p.grad.detach() for p in self._params if p.grad is not None])
        small_sum, sq_big = torch.stack([small, big]).tolist()  # the measurement's one host read
        grad_sq, trace_sigma = estimates(self.b_small, small_sum / (self.per_rank * self.world), self.b_big, sq_big)
        self.grad_sq.add(grad_sq)
        self.trace_sigma.add(trace_sigma)
        values = {"noise/b_simple": self.b_simple, "noise/grad_sq": grad_sq, "noise/trace_sigma": trace_sigma}
        if self.grad_sq.decay:  # the averages, besides each measurement's own values
            values |= {"noise/grad_sq_avg": self.grad_sq.value, "noise/trace_sigma_avg": self.trace_sigma.value}
        trainer.monitor.log(trainer.step + 1, values)

    def on_step_end(self, trainer: Trainer) -> None:
        self.measuring = self._due(trainer.step)

    def on_epoch_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        if self.grad_sq.weight:
            values["noise/b_simple"] = self.b_simple
            self.per_epoch.append((trainer.epoch, self.b_simple))

    def on_fit_end(self, trainer: Trainer) -> dict[str, Any]:
        record = {"b_simple": self.b_simple, "batch": self.b_big, "b_small": self.b_small}
        return {SUMMARY_KEY: record | {"per_epoch": self.per_epoch}}

    def state_dict(self) -> dict[str, Any]:
        averages = [self.grad_sq.total, self.grad_sq.weight, self.trace_sigma.total, self.trace_sigma.weight]
        return {"averages": averages, "per_epoch": self.per_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_sq.total, self.grad_sq.weight, self.trace_sigma.total, self.trace_sigma.weight = state["averages"]
        self.per_epoch = [(int(e), float(v)) for e, v in state["per_epoch"]]


class NotMeasurable(Callback):
    """Says once why the noise scale cannot be measured in this run."""

    name = "noise_scale"

    def __init__(self, reason: str) -> None:
        self.reason, self.said = reason, False

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.said:
            trainer.monitor.print(f"noise_scale: not measured: {self.reason}")
            self.said = True


def build(facts: RunFacts) -> Callback | None:
    """The measurement when ``noise_scale.every_steps`` is set and the run has two batch sizes to compare."""
    cfg, ctx = facts.cfg, facts.ctx
    if not cfg.noise_scale.every_steps:
        return None
    accum = cfg.train.grad_accum_steps
    if accum == 1 and not ctx.is_distributed:
        return NotMeasurable(
            "one process without gradient accumulation sees gradients over one batch size only; run 2 or more "
            "ranks, or set train.grad_accum_steps to 2 or more"
        )
    n = cfg.noise_scale
    return NoiseScale(n.every_steps, n.ema_decay, facts.micro_batch, accum, ctx.world_size, ctx.group)
