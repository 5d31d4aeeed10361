"""Every rank's pace, gathered at each log point: the slow rank of a many-node job, named.

Method card
-----------
*Problem.* In a many-node job one slow rank (a busy loader, a slow or overloaded host, a paused process)
slows every step, and nothing says which one it is.

*Code.* In synchronous data-parallel training every rank's step ends together: the gradient all-reduce
waits for the slowest rank, so step time and images/s are the job's. What sets the slow rank apart is
how long it waits for the others: least. Each rank times, per step, its *sync wait*: from the moment its
last gradient is computed (a post-accumulate-grad hook on the parameter whose gradient comes last) to
the end of the backward pass, when the all-reduce has delivered (host clocks on a CPU, CUDA events on a
GPU, so nothing waits for the device). A rank's *own time* is its step time less that wait: its data
wait, its compute, and any pause. It also times the wait for its next batch, the images it trained on
and, on a GPU, its peak memory. At the log point one small all-gather (on the CPU group, five numbers a
rank) brings them to rank 0, which logs them per rank and says in one line when a rank's own time is
longer than the others' by more than :data:`STRAGGLER_SHARE` of a step and :data:`STRAGGLER_MIN_S`,
and whether it waited for data or computed.

*Switch.* ``train.rank_health`` (on by default; its cost is one small all-gather per log step,
``train.log_every``, and two clock reads a step).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from dist_train.callbacks import Callback, StepBatches
from dist_train.distributed import DistContext

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer

FIELDS = ("step_s", "data_wait_s", "sync_wait_s", "images_per_s", "peak_memory_gb")
"""What each rank reports per window: seconds per step, seconds per step waiting for data, seconds per step
waiting for the other ranks' gradients, images/s, peak GPU memory in GB (NaN on a CPU)."""

STRAGGLER_SHARE = 0.25
"""A rank is a straggler when its own time per step (step time less its sync wait) exceeds the median of the
other ranks' by this share of the median step time..."""

STRAGGLER_MIN_S = 0.010
"""... and by at least this many seconds: a few milliseconds of noise in a fast step is nobody's fault."""


@dataclass(frozen=True)
class RankStats:
    """One window of every rank: ``values[field][rank]``."""

    values: dict[str, list[float]]
    hosts: Sequence[str]

    def own(self) -> list[float]:
        """Each rank's own time per step: its step time less the time it waited for the others."""
        return [s - w for s, w in zip(self.values["step_s"], self.values["sync_wait_s"], strict=True)]

    def scalars(self) -> dict[str, float]:
        """Tags ``ranks/<field>/rank<r>`` for every rank, per field its worst value (the most, the least for
        images/s) and spread (max - min), the job's images/s and the rank the others waited for most."""
        out: dict[str, float] = {}
        for field, per_rank in self.values.items():
            if all(v != v for v in per_rank):  # NaN: not measured here (memory on a CPU)
                continue
            out |= {f"ranks/{field}/rank{r}": v for r, v in enumerate(per_rank)}
            out[f"ranks/{field}/worst"] = min(per_rank) if field == "images_per_s" else max(per_rank)
            out[f"ranks/{field}/spread"] = max(per_rank) - min(per_rank)
        out["ranks/images_per_s/total"] = sum(self.values["images_per_s"])
        own = self.own()
        out["ranks/slowest_rank"] = float(own.index(max(own)))  # the rank with the longest own time
        return out

    def stragglers(self) -> list[int]:
        """The ranks the others markedly waited for (see :data:`STRAGGLER_SHARE`, :data:`STRAGGLER_MIN_S`)."""
        own, step = self.own(), statistics.median(self.values["step_s"])
        if len(own) < 2:
            return []
        gaps = [own[r] - _others(own, r) for r in range(len(own))]
        return [r for r, gap in enumerate(gaps) if gap > max(STRAGGLER_SHARE * step, STRAGGLER_MIN_S)]

    def describe(self, rank: int) -> str:
        """The line that names straggler ``rank``, its host and what it spent its time on."""
        waits, own = self.values["data_wait_s"], self.own()
        host = self.hosts[rank] if rank < len(self.hosts) else "?"
        step = statistics.median(self.values["step_s"]) * 1e3
        if waits[rank] - _others(waits, rank) >= 0.5 * (own[rank] - _others(own, rank)):
            doing, mine, theirs = "waits", waits[rank], _others(waits, rank)
            what = "for data"
        else:
            compute = [o - w for o, w in zip(own, waits, strict=True)]
            doing, mine, theirs, what = "computes (or stalls)", compute[rank], _others(compute, rank), ""
        return (
            f"straggler: rank {rank} on {host} {doing} {mine * 1e3:.0f} ms a step{what and ' ' + what} (the other "
            f"ranks: {theirs * 1e3:.0f} ms); the others wait for it, in steps of {step:.0f} ms"
        )


def _others(values: Sequence[float], rank: int) -> float:
    """The median of ``values`` over the ranks other than ``rank``."""
    return statistics.median([*values[:rank], *values[rank + 1 :]])


class Span:
    """Seconds summed over a window of spans, each from :meth:`start` (the last call counts) to :meth:`stop`
    (the first call after a start counts): host clocks on a CPU; CUDA events on a GPU, read by :meth:`take`
    at the log point (after the host's read of the metrics), so that nothing waits for the device."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.began: float | None = None
        self.total = 0.0
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.used = 0
        self.open = False

    def start(self) -> None:
        if self.cuda:
            if self.used == len(self.pairs):
                self.pairs.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.pairs[self.used][0].record()
        else:
            self.began = time.perf_counter()
        self.open = True

    def stop(self) -> None:
        if not self.open:
            return
        self.open = False
        if self.cuda:
            self.pairs[self.used][1].record()
            self.used += 1
        else:
            self.total += time.perf_counter() - self.began

    def take(self) -> float:
        """The window's seconds; starts the next window."""
        total = self.total + sum(start.elapsed_time(end) for start, end in self.pairs[: self.used]) / 1e3
        self.reset()
        return total

    def reset(self) -> None:
        self.total, self.used, self.open = 0.0, 0, False


class SyncClock:
    """The time a rank waits for the others in a step: from its batch in hand to its model's forward (DDP
    copies rank 0's buffers there, a collective) and from its last computed gradient to the end of the
    backward pass (the all-reduce delivered)."""

    def __init__(self, device: torch.device) -> None:
        self.to_forward, self.to_reduced = Span(device.type == "cuda"), Span(device.type == "cuda")
        self.handles: dict[int, Any] = {}
        self.last: int | None = None  # the parameter whose gradient came last (its hook alone is kept)

    def attach(self, model: nn.Module) -> None:
        """Hook ``model``'s forward and every trained parameter (after the first step, only the one whose
        gradient came last)."""
        model.register_forward_pre_hook(_not_traced(lambda *_: self.to_forward.stop()))
        params = [p for p in model.parameters() if p.requires_grad]
        self.handles = {i: p.register_post_accumulate_grad_hook(self._ready(i)) for i, p in enumerate(params)}

    def _ready(self, index: int) -> Any:
        def ready(_: torch.Tensor) -> None:
            self.last = index
            self.to_reduced.start()

        return ready

    def fed(self) -> None:
        """A step's batches are in hand."""
        self.to_forward.start()

    def reduced(self) -> None:
        """The backward pass is over (its all-reduce delivered): close the step's wait."""
        if self.last is None:  # no gradient this step (or nothing hooked)
            return
        for index in [i for i in self.handles if i != self.last]:  # keep only the last gradient's hook
            self.handles.pop(index).remove()
        self.to_reduced.stop()
        self.last = None

    def take(self) -> float:
        """The window's summed wait in seconds; starts the next window."""
        return self.to_forward.take() + self.to_reduced.take()

    def reset(self) -> None:
        self.to_forward.reset()
        self.to_reduced.reset()


def _not_traced(hook: Any) -> Any:
    """``hook`` run as Python even inside ``torch.compile`` (a clock read is not part of the graph)."""
    return torch.compiler.disable(hook)


class RankHealth:
    """Times this rank's log windows from the host and gathers every rank's at the log points."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.reported: frozenset[int] = frozenset()
        """The stragglers named last time (a line is printed when this set changes)."""
        self._start = time.perf_counter()
        self._waited = 0.0
        self._steps = 0
        self._images = 0
        self.clock = SyncClock(ctx.device)

    def start(self) -> None:
        """Open a window (an epoch's first, or after a log point)."""
        self._start, self._waited, self._steps, self._images = time.perf_counter(), 0.0, 0, 0
        self.clock.reset()
        if self.ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.ctx.device)

    def batches(self, groups: Iterable[list[tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[list]:
        """``groups`` (a step's micro-batches at a time), timing how long each took to arrive and counting
        the images (from the tensors' shapes: nothing is read from the device)."""
        iterator = iter(groups)
        while True:
            asked = time.perf_counter()
            try:
                group = next(iterator)
            except StopIteration:
                return
            self._waited += time.perf_counter() - asked
            self._steps += 1
            self._images += sum(labels.shape[0] for _, labels in group)
            self.clock.fed()
            yield group

    def gather(self) -> RankStats:
        """Close the window and gather every rank's (one all-gather over the CPU group); opens the next."""
        seconds = max(time.perf_counter() - self._start, 1e-9)
        steps = max(self._steps, 1)
        memory = float("nan")
        if self.ctx.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        window = [seconds / steps, self._waited / steps, self.clock.take() / steps, self._images / seconds, memory]
        mine = torch.tensor(window, dtype=torch.float64)
        rows = [mine]
        if self.ctx.is_distributed:
            rows = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
            dist.all_gather(rows, mine, group=self.ctx.cpu_group)
        self.start()
        columns = torch.stack(rows).T.tolist()  # host tensors: no device read
        return RankStats(dict(zip(FIELDS, columns, strict=True)), self.ctx.hosts)

    def news(self, stats: RankStats) -> list[str]:
        """The lines to print about ``stats``: each straggler, when the set of stragglers has changed."""
        now = frozenset(stats.stragglers())
        if now == self.reported:
            return []
        lines = [stats.describe(r) for r in sorted(now)]
        if self.reported and not now:
            lines.append("stragglers: none now")
        self.reported = now
        return lines


class StragglerReport(Callback):
    """Rank health in the loop: times each rank's log windows, logs every rank's pace at the log steps
    (``ranks/*``) and names a straggler in one line (also TensorBoard text ``ranks/stragglers``)."""

    name = "rank_health"

    def __init__(self, ctx: DistContext) -> None:
        self.health = RankHealth(ctx)
        self.hooked = not ctx.is_distributed  # one process waits for nobody

    def step_batches(self, trainer: Trainer, batches: StepBatches) -> StepBatches:
        return self.health.batches(batches)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.hooked:  # the model as trained is final here (Ghost BN converted, SWAP's replica built)
            self.health.clock.attach(trainer.module)
            self.hooked = True
        self.health.start()

    def before_optimizer_step(self, trainer: Trainer) -> None:
        self.health.clock.reduced()

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        ranks = self.health.gather()  # after the host's read: the window's time includes its device work
        values |= ranks.scalars()
        if news := self.health.news(ranks):  # a rank became a straggler (or none is any more)
            trainer.monitor.print("\n".join(news))
            trainer.monitor.text("ranks/stragglers", "\n\n".join(news), trainer.step)


def build(facts: RunFacts) -> StragglerReport | None:
    return StragglerReport(facts.ctx) if facts.cfg.train.rank_health else None
