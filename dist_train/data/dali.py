"""The DALI loaders: the torch backend's batches, made by NVIDIA DALI pipelines.

Training (:class:`DaliTrainLoader`) and validation (:class:`DaliEvalLoader`) each build one pipeline and
keep it for every epoch; the graphs and the random draws are in :mod:`dist_train.data.dali_pipelines`.
In-memory datasets (CIFAR, MNIST, synthetic) and ImageFolder files alike enter through
``external_source``, a micro-batch at a time, with each view's random parameters (crop window, flip,
cutout) drawn in numpy from the micro-batch's own seed (:func:`~dist_train.data.loader.batch_seed`, as
the torch backend's loader workers do). JPEGs are decoded on the GPU with ``device="mixed"`` when there
is one; without CUDA the pipeline runs CPU operators only (``device_id=None``).

Sample order is the torch backend's: each epoch's micro-batches come from the same
:class:`~dist_train.data.loader.BatchOrder` (sharded by global rank and world size, reshuffled with a
seed that depends on the epoch, every rank the same number of steps, per epoch or across epoch
boundaries), so ``data.backend: torch | dali`` changes the augmentation draws and nothing else.
Validation shards and batches as :func:`~dist_train.data.loader.build_eval_loader` does, and gives the
torch evaluation transform's images (within float tolerance).

An epoch may start at any micro-batch (``epoch(e, start=k)``, a resume from a mid-epoch checkpoint): the
pipeline is then fed only the files (or arrays) from there on, and since every micro-batch's draws
depend only on (seed, epoch, rank, position), the resumed epoch's batches are the uninterrupted ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dist_train.data import dali_pipelines
from dist_train.data.arrays import TensorImageDataset
from dist_train.data.catalog import Recipe
from dist_train.data.contract import EvalLoader, LoaderInputs, TrainLoader
from dist_train.data.dali_pipelines import Graph
from dist_train.data.imagefolder import ImageFileDataset, load_image
from dist_train.data.loader import EpochSteps, EvalOptions, LoaderOptions, batch_seed
from dist_train.data.plugin import MapImageDataset
from dist_train.data.shards import ShardDataset, decode
from dist_train.errors import ConfigError

INSTALL_HINT = "data.backend=dali needs NVIDIA DALI, which is not installed: pip install -e '.[dali]'"
AHEAD = 2
"""Micro-batches fed and scheduled before the one being handed out."""


def import_dali() -> Any:
    """The ``nvidia.dali`` package, or a one-line ConfigError telling how to install it."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # feed_ndarray lives here
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return nvidia.dali


Feed = tuple[Any, np.ndarray, torch.Tensor]
"""One micro-batch for the pipeline: its data (files' bytes or NHWC arrays), its (n, M, PARAMS) draws, labels."""


class _Source:
    """A dataset as pipeline input: the data of a list of indices, and each image's (height, width) (and label,
    for a factory's map-style dataset, once read)."""

    def __init__(self, dataset: Dataset) -> None:
        self.recent: deque[np.ndarray] = deque(maxlen=AHEAD + 1)
        """The latest micro-batches read: a failed pipeline run was one of them (:meth:`check`)."""
        self.channels = dataset.channels if isinstance(dataset, ShardDataset) else 3
        self.shards = dataset if isinstance(dataset, ShardDataset) else None
        if self.shards is not None:  # tar shards: encoded images; labels (and sizes, if they vary) once read
            self.encoded = True
            self.labels = torch.zeros(len(dataset), dtype=torch.int64)
            self.sizes = np.full((len(dataset), 2), dataset.reader.image_size, dtype=np.int64)
            return
        if not isinstance(dataset, TensorImageDataset | ImageFileDataset | MapImageDataset):
            raise ConfigError(f"data.backend=dali cannot read {type(dataset).__name__}")
        self.encoded = isinstance(dataset, ImageFileDataset)
        self.items = dataset if isinstance(dataset, MapImageDataset) else None
        if self.items is not None:  # a factory's map-style dataset: labels and sizes known once read
            self.labels = torch.zeros(len(dataset), dtype=torch.int64)
            self.sizes = np.zeros((len(dataset), 2), dtype=np.int64)
        elif isinstance(dataset, ImageFileDataset):
            self.paths = [path for path, _ in dataset.samples]
            self.labels = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
            self.sizes = np.zeros((len(self.paths), 2), dtype=np.int64)  # read from the headers when first needed
        else:
            arrays = dataset.arrays
            self.images = np.ascontiguousarray(arrays.images.permute(0, 2, 3, 1).numpy())  # NHWC for DALI
            self.labels = arrays.labels.to(torch.int64)
            self.sizes = np.tile(np.array(self.images.shape[1:3]), (len(self.images), 1))

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[Any, np.ndarray]:
        """The samples' data and (height, width)."""
        self.recent.append(indices)
        if self.shards is not None:
            return self._read_shards(indices)
        if self.items is not None:
            images = []
            for i in indices.tolist():
                image, self.labels[i] = self.items.raw(i)
                images.append(image.permute(1, 2, 0).contiguous().numpy())
                self.sizes[i] = image.shape[1:]
            return images, self.sizes[indices]
        if not self.encoded:
            return self.images[indices], self.sizes[indices]
        files = [dali_pipelines.read_file(self.paths[i]) for i in indices.tolist()]
        for i, data in zip(indices.tolist(), files, strict=True):
            if not self.sizes[i, 0]:
                self.sizes[i] = dali_pipelines.image_size(data)
        return files, self.sizes[indices]

    def _read_shards(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        assert self.shards is not None
        images = []
        for i in indices.tolist():
            data, self.labels[i] = self.shards.encoded(i)
            if not self.sizes[i, 0]:
                try:
                    self.sizes[i] = dali_pipelines.image_size(data)
                except Exception:
                    decode(data, self.channels, lambda i=i: self.shards.name(i))  # raises a DataError naming it
                    raise
            images.append(data)
        return images, self.sizes[indices]

    def check(self) -> None:
        """After a failed pipeline run: a DataError naming the first undecodable image of the latest micro-batches
        (an encoded source's; nothing when every one of them decodes)."""
        for i in [int(i) for batch in self.recent for i in batch]:
            if self.shards is not None:
                decode(self.shards.encoded(i)[0], self.channels, lambda i=i: self.shards.name(i))
            elif self.encoded:
                load_image(self.paths[i])


@dataclass
class _Runner:
    """One pipeline, built on first use and kept: fed micro-batch by micro-batch, AHEAD of the one handed
    out; its M view outputs gathered into (n·M, C, H, W) float32 images in ``layout``, stored channels_last
    (the pipeline writes HWC, so no transposing copy is made)."""

    graph: Graph
    batch_size: int
    threads: int
    device_id: int | None
    layout: str = "copy_major"
    pipe: Any = None
    pending: deque[torch.Tensor] = field(default_factory=deque)
    """Labels of the micro-batches scheduled and not yet taken out."""
    runs: int = 0
    """Runs started: only the latest one may use the pipeline (one epoch at a time)."""
    check: Callable[[], None] | None = None
    """Called when a pipeline run fails: raises the error that names the sample at fault, if it can."""

    def run(self, feeds: Iterable[Feed]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of ``feeds``; a run started later ends this one (the pipeline serves one at a time)."""
        self.runs += 1
        mine = self.runs
        if self.pipe is None:
            self.pipe = self.graph.build(import_dali(), self.batch_size, self.threads, self.device_id)
        self._drain()
        feeds = iter(feeds)
        try:
            for _ in range(AHEAD):
                self._schedule(feeds)
            while True:
                if self.runs != mine:
                    raise RuntimeError("a DALI loader serves one epoch at a time: this one was left for a newer one")
                if not self.pending:
                    break
                try:
                    outputs = self.pipe.outputs()
                except Exception:
                    if self.check is not None:
                        self.check()
                    raise
                labels = self.pending.popleft()
                images = self._gather(outputs)
                self._schedule(feeds)
                yield images, self._repeat(labels)
        except Exception:
            if self.runs == mine:  # a failed pipeline is not valid any more: the next epoch builds a new one
                self.pipe = None
                self.pending.clear()
            raise
        finally:
            if self.runs == mine:
                self._drain()  # an epoch left early: its scheduled micro-batches are made and dropped

    def _schedule(self, feeds: Iterator[Feed]) -> None:
        item = next(feeds, None)
        if item is None:
            return
        data, params, labels = item
        self.pipe.feed_input("data", data)
        self.pipe.feed_input("params", params)
        self.pipe.schedule_run()
        self.pending.append(labels)

    def _drain(self) -> None:
        try:
            while self.pending and self.pipe is not None:
                self.pipe.outputs()
                self.pending.popleft()
        except Exception:
            self.pipe = None
        self.pending.clear()

    def _gather(self, outputs: Any) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        views = [output.as_tensor() for output in outputs]
        gpu = self.device_id is not None
        device = torch.device("cuda", self.device_id) if gpu else torch.device("cpu")
        images = torch.empty((len(views), *views[0].shape()), dtype=torch.float32, device=device)  # M, n, H, W, C
        stream = torch.cuda.current_stream(device) if gpu else None
        for m, view in enumerate(views):
            feed_ndarray(view, images[m], cuda_stream=stream)
        if self.layout == "sample_major":
            images = images.transpose(0, 1).contiguous()
        return images.flatten(0, 1).permute(0, 3, 1, 2)  # N, C, H, W in channels_last memory format

    def _repeat(self, labels: torch.Tensor) -> torch.Tensor:
        copies = self.graph.copies
        if copies == 1:
            return labels
        return labels.repeat(copies) if self.layout == "copy_major" else labels.repeat_interleave(copies)


@dataclass
class DaliTrainLoader(EpochSteps):
    """A :class:`~dist_train.data.contract.TrainLoader`: ``epoch(e, start)`` yields the
    micro-batches (``options.copies`` views of each sample, laid out as ``options.view_layout``).

    ``decode_per_view`` (JPEGs with random-resized crops): decode each view from its own window (None: only
    when there is one view per sample; with more, one full decode per image serves them all)."""

    dataset: Dataset
    recipe: Recipe
    image_size: int
    options: LoaderOptions
    decode_per_view: bool | None = None

    def __post_init__(self) -> None:
        import_dali()
        self.source = _Source(self.dataset)
        self.order = self.options.batch_order(len(self.source))
        copies = self.options.copies
        fused = copies == 1 if self.decode_per_view is None else self.decode_per_view
        graph = Graph(self.recipe, self.image_size, copies, self.source.encoded, fused, self.source.channels)
        self.graph = graph
        self.runner = _Runner(
            graph, self.options.micro_batch, self.options.workers, self.options.device_id, self.options.view_layout
        )
        self.runner.check = self.source.check

    def _feeds(self, epoch: int, start: int) -> Iterator[Feed]:
        options = self.options
        for position, batch in enumerate(self.order.micro_batches(epoch)[start:], start):
            indices = np.asarray(batch, dtype=np.int64)
            data, sizes = self.source.read(indices)
            rng = np.random.default_rng(batch_seed(options.seed, epoch, options.rank, position))
            yield data, self.graph.draw(rng, sizes), self.source.labels[indices]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of ``epoch`` from ``start`` on; the ones before are neither read nor decoded."""
        return self.runner.run(self._feeds(epoch, start))


class DaliEvalLoader:
    """An :class:`~dist_train.data.contract.EvalLoader`: the validation set through one DALI pipeline, the torch
    evaluation transform's images (no randomness), sharded ``rank::world_size`` and batched as
    :func:`~dist_train.data.loader.build_eval_loader`."""

    def __init__(
        self,
        dataset: Dataset,
        recipe: Recipe,
        image_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        threads: int = 1,
        device_id: int | None = None,
    ) -> None:
        import_dali()
        self.source = _Source(dataset)
        self.per_rank = max(1, -(-batch_size // world_size))
        self.indices = np.arange(rank, len(self.source), world_size, dtype=np.int64)
        plain = Recipe("none", recipe.resize_eval, False, recipe.mean, recipe.std)
        graph = Graph(plain, image_size, 1, self.source.encoded, fused=False, channels=self.source.channels)
        self.graph = graph
        self.runner = _Runner(graph, self.per_rank, threads, device_id, check=self.source.check)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.per_rank)

    def _feeds(self) -> Iterator[Feed]:
        for first in range(0, len(self.indices), self.per_rank):
            indices = self.indices[first : first + self.per_rank]
            data, sizes = self.source.read(indices)
            yield data, self.graph.draw(None, sizes), self.source.labels[indices]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.runner.run(self._feeds())


def train_loader_for(inputs: LoaderInputs, options: LoaderOptions) -> TrainLoader:
    """``data.backend: dali``'s training loader (its row in :data:`~dist_train.data.backends.BACKENDS`)."""
    return DaliTrainLoader(inputs.data.train, inputs.recipe(), inputs.data.image_size, options)


def eval_loader_for(inputs: LoaderInputs, options: EvalOptions) -> EvalLoader:
    """``data.backend: dali``'s validation loader."""
    data = inputs.data
    return DaliEvalLoader(
        data.val,
        inputs.recipe(),
        data.image_size,
        options.batch_size,
        options.rank,
        options.world_size,
        options.workers,
        options.device_id,
    )
