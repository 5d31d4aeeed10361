"""Every rank's pace, gathered at each log point: the slow rank of a many-node job, named.

Method card
-----------
*Problem.* In a many-node job one slow rank (a busy loader, a bad host) slows every step, and nothing says
which one it is.

*Code.* Each rank times its own log window from the host, without touching the device: the wall time of its
steps (the window ends right after the host's one read of the metrics, which waits for the device),
the time its loop waited for the next batch, the images it trained on and, on a GPU, its peak memory.
At the log point one small all-gather (on the CPU group, four numbers a rank) brings them to rank 0,
which logs them per rank, with the slowest rank and the spread, and says in one line when a rank
has become a straggler.

In synchronous data-parallel training every rank's step ends together (the gradient all-reduce waits
for the slowest), so step time and images/s are the job's; what sets a slow rank apart is what it
waited for itself: its loader (``data_wait_s``).

*Switch.* ``train.rank_health`` (on by default; its cost is one small all-gather per log step,
``train.log_every``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from dist_train.callbacks import Callback, StepBatches
from dist_train.distributed import DistContext

if TYPE_CHECKING:
    from dist_train.techniques import RunFacts
    from dist_train.trainer import Trainer

FIELDS = ("step_s", "data_wait_s", "images_per_s", "peak_memory_gb")
"""What each rank reports per window: seconds per step, seconds per step waiting for data, images/s,
peak GPU memory in GB (NaN on a CPU)."""

STRAGGLER_SHARE = 0.25
"""A rank is a straggler when it waits for data longer than the median of the other ranks by this share of
the median step time (and at least twice as long)."""


@dataclass(frozen=True)
class RankStats:
    """One window of every rank: ``values[field][rank]``."""

    values: dict[str, list[float]]
    hosts: Sequence[str]

    def scalars(self) -> dict[str, float]:
        """Tags ``ranks/<field>/rank<r>`` for every rank, per field its worst value (the most, the least for
        images/s) and spread (max - min), the job's images/s and the rank that waited longest for data."""
        out: dict[str, float] = {}
        for field, per_rank in self.values.items():
            if all(v != v for v in per_rank):  # NaN: not measured here (memory on a CPU)
                continue
            out |= {f"ranks/{field}/rank{r}": v for r, v in enumerate(per_rank)}
            out[f"ranks/{field}/worst"] = min(per_rank) if field == "images_per_s" else max(per_rank)
            out[f"ranks/{field}/spread"] = max(per_rank) - min(per_rank)
        out["ranks/images_per_s/total"] = sum(self.values["images_per_s"])
        waits = self.values["data_wait_s"]
        out["ranks/slowest_rank"] = float(waits.index(max(waits)))  # the rank that waited longest for data
        return out

    def stragglers(self) -> list[int]:
        """The ranks that waited markedly longer for data than the others' median (see :data:`STRAGGLER_SHARE`)."""
        waits, step = self.values["data_wait_s"], statistics.median(self.values["step_s"])
        return [r for r, w in enumerate(waits) if len(waits) > 1 and self._beyond(w, self._others(r), step)]

    def _others(self, rank: int) -> float:
        """The median data wait of the ranks other than ``rank``."""
        waits = self.values["data_wait_s"]
        return statistics.median(waits[:rank] + waits[rank + 1 :])

    @staticmethod
    def _beyond(wait: float, typical: float, step: float) -> bool:
        return wait - typical > STRAGGLER_SHARE * step and wait > 2 * typical

    def describe(self, rank: int) -> str:
        """The line that names straggler ``rank`` and its host."""
        waits, steps = self.values["data_wait_s"], self.values["step_s"]
        host = self.hosts[rank] if rank < len(self.hosts) else "?"
        return (
            f"straggler: rank {rank} on {host} waits {waits[rank] * 1e3:.0f} ms a step for data (the other ranks: "
            f"{self._others(rank) * 1e3:.0f} ms) in steps of {statistics.median(steps) * 1e3:.0f} ms"
        )


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

    def start(self) -> None:
        """Open a window (an epoch's first, or after a log point)."""
        self._start, self._waited, self._steps, self._images = time.perf_counter(), 0.0, 0, 0
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
            yield group

    def gather(self) -> RankStats:
        """Close the window and gather every rank's (one all-gather over the CPU group); opens the next."""
        seconds = max(time.perf_counter() - self._start, 1e-9)
        steps = max(self._steps, 1)
        memory = float("nan")
        if self.ctx.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        window = [seconds / steps, self._waited / steps, self._images / seconds, memory]
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

    def step_batches(self, trainer: Trainer, batches: StepBatches) -> StepBatches:
        return self.health.batches(batches)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.health.start()

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        ranks = self.health.gather()  # after the host's read: the window's time includes its device work
        values |= ranks.scalars()
        if news := self.health.news(ranks):  # a rank became a straggler (or none is any more)
            trainer.monitor.print("\n".join(news))
            trainer.monitor.text("ranks/stragglers", "\n\n".join(news), trainer.step)


def build(facts: RunFacts) -> StragglerReport | None:
    return StragglerReport(facts.ctx) if facts.cfg.train.rank_health else None
