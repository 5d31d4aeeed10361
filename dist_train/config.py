"""One typed schema for every run: defaults < YAML file < dotted command-line overrides.

The schema is a tree of dataclasses; OmegaConf does the merging and the type
checks, this module turns its errors into one-line messages that name the key
and, for a misspelt key, the closest valid one.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dist_train.errors import ConfigError, DistTrainError

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
        low, high = _number(self.low or 0), _number(self.high or 0)
        if self.high is None:
            return (
                "positive" if self.low == 0 and self.low_open else f"{'above' if self.low_open else 'at least'} {low}"
            )
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float) -> str:
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
    """A schema field's metadata giving its valid range (read by :func:`validate`)."""
    return {"range": Range(low, high, low_open, high_open, length)}


def bounded(default: float, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A numeric schema field with its default and valid range (list fields: ``field(metadata=limits(...))``)."""
    return field(default=default, metadata=limits(low, high, **options))


DATASETS = ("synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "webdataset")
"""The built-in data sets (``data.dataset`` may also name a factory by import path)."""


@dataclass
class DataConfig:
    """Where the images come from and how they are batched."""

    dataset: str = "synthetic"
    """Which reader to use: one of :data:`DATASETS`, or a data-set factory by import path
    (``my_pkg.data:build`` or ``path/to/data.py:build``, see :mod:`dist_train.data.plugin`)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a data-set factory (``data.dataset: module:attr``)."""
    backend: Literal["auto", "torch", "dali", "tensor"] = "auto"
    """Training loader: torch DataLoader + torchvision transforms v2, NVIDIA DALI pipelines
    (``pip install .[dali]``; CPU operators when there is no GPU), or ``tensor``: the whole split on the
    training device, augmented a batch at a time by tensor ops (in-memory sets only, not ``imagefolder``).
    All give identical batches (shapes, dtype, layout, sample order); only the random augmentation draws differ.
    ``auto``: ``tensor`` where it can run on a GPU, else ``torch`` (decided when the run starts, on its device;
    the run's ``config.yaml`` records the choice)."""
    root: str = ""
    """Dataset directory: the CIFAR python-pickle folder, the (Fashion-)MNIST IDX folder, or an
    ImageFolder tree (``train/`` and optionally ``val/``), or the tar shards of ``dist-train shard``
    (``webdataset``). Unused for ``synthetic``. Empty for
    ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``)."""
    download: bool = False
    """Download CIFAR/MNIST/Fashion-MNIST into ``root`` with torchvision when files are missing."""
    batch_size: int = bounded(128, low=1)
    """Global number of distinct samples per optimizer step (over all workers and
    accumulation steps)."""
    eval_batch_size: int = bounded(0, low=0)
    """Global evaluation batch size; 0 means ``batch_size``."""
    num_workers: int = bounded(2, low=0, high=256)
    """DataLoader worker processes per rank (0 loads in the training process)."""
    augment: bool = True
    """Apply the dataset's standard training augmentation (pad-crop + flip for
    CIFAR-like data, random-resized-crop + flip for ImageFolder, none for MNIST)."""
    crop: Literal["auto", "none", "pad", "resized"] = "auto"
    """Training crop instead of the dataset's default: pad-crop, random-resized-crop or none."""
    flip: Optional[bool] = None  # noqa: UP045 - OmegaConf reads typing.Optional
    """Random horizontal flips (true/false) instead of the dataset's default (null)."""
    pad: int = bounded(4, low=0, high=4096)
    """Padding of the pad-crop, in pixels."""
    cutout: int = bounded(0, low=0, high=4096)
    """Cutout (DeVries & Taylor 2017): zero a square of this side at a random centre of each
    training image, after normalisation (clipped at the borders); 0 = off."""
    val_fraction: float = bounded(0.2, low=0.0, high=1.0, high_open=True)
    """Share of the training files held out for validation when the dataset has no
    validation split of its own (e.g. MNIST given only one IDX pair)."""
    split_seed: int = bounded(0, low=0, high=SEED_MAX)
    """Seed of that held-out split (fixed, independent of ``seed``)."""
    image_size: int = bounded(0, low=0, high=8192)
    """Training crop size for ImageFolder (0 = 224) and side of synthetic images (0 = 32)."""
    synthetic_train_size: int = bounded(5000, low=1)
    """Number of synthetic training images."""
    synthetic_val_size: int = bounded(1000, low=1)
    """Number of synthetic validation images."""
    synthetic_classes: int = bounded(10, low=2, high=100_000)
    """Number of synthetic classes."""
    train_subset: int = bounded(0, low=0)
    """Train on a fixed random subset of this many training images (seeded by ``split_seed``;
    validation is untouched); 0 = all of them. For quick runs, tests and sweeps."""
    cross_epoch_batches: Optional[bool] = None  # noqa: UP045 - OmegaConf reads typing.Optional
    """Draw batches from one continuous stream of per-epoch permutations: a batch may straddle two
    epochs and no sample is ever dropped. false: each epoch ends with its last full batch and the
    rest of that epoch's permutation is unused (PyTorch's drop_last, the authors' code). null: true
    exactly when ``regime.adapt`` (which plans in updates)."""

    def __post_init__(self) -> None:
        if not self.root and self.dataset == "fashion_mnist":
            self.root = "/usr/share/datasets/fashion-mnist"


@dataclass
class AugmentConfig:
    """Batch augmentation (Hoffer et al. 2020): M differently augmented views of each sample."""

    copies: int = bounded(1, low=1, high=1024)
    """M: views per sample in the same batch (1 = off). data.batch_size still counts distinct
    samples (and drives the lr rules); each step sees batch_size × M images."""
    layout: Literal["copy_major", "sample_major"] = "copy_major"
    """copy_major: all samples' view 1, then view 2, ... (every ghost batch holds distinct
    samples); sample_major: the M views of a sample side by side."""


@dataclass
class ModelConfig:
    """The network."""

    name: str = "c1"
    """mnist_f1, c1, resnet20/32/44/56/110, wrn{depth}_{k} (e.g. wrn16_4), any torchvision
    classification model (e.g. resnet50), or a model factory by import path (``my_pkg.nets:build``,
    ``path/to/nets.py:build``; see :mod:`dist_train.models.plugin`)."""
    width: int = bounded(0, low=0, high=65_536)
    """Base channel width for c1 / hidden width for mnist_f1; 0 = the model's default."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a model factory (``model.name: module:attr``), after num_classes, in_channels
    and image_size."""


@dataclass
class OptimConfig:
    """The optimizer."""

    name: Literal["sgd", "adamw"] = "sgd"
    """SGD (with ``momentum``, ``nesterov``) or AdamW (with ``betas``)."""
    lr: float = bounded(0.1, low=0.0, low_open=True)
    """Peak learning rate (reached after warm-up)."""
    momentum: float = bounded(0.9, low=0.0, high=1.0)
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum (SGD)."""
    weight_decay: float = bounded(1e-4, low=0.0)
    """L2 penalty (SGD) or decoupled weight decay (AdamW)."""
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata=limits(0.0, 1.0, high_open=True, length=2)
    )
    """AdamW betas."""
    decay_bn_and_bias: bool = True
    """Apply weight decay to BatchNorm parameters and biases too (false excludes them)."""


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, per optimizer step."""

    name: Literal["constant", "step", "cosine"] = "step"
    """constant lr, ``step`` decays at ``milestones``, or ``cosine`` annealing to ``min_lr_factor``·lr."""
    milestones: list[float] = field(default_factory=list, metadata=limits(low=0.0))
    """Epochs at which ``step`` multiplies the lr by ``gamma``."""
    gamma: float = bounded(0.1, low=0.0, low_open=True)
    """Multiplier of the lr at each milestone of ``step``."""
    factors: list[float] = field(default_factory=list, metadata=limits(low=0.0, low_open=True))
    """Instead of ``gamma``: the lr multiplier in force after each milestone (one per milestone),
    e.g. [0.2, 0.04, 0.001] for 0.1 → 0.02 → 0.004 → 1e-4."""
    warmup_epochs: float = bounded(0.0, low=0.0)
    """Linear warm-up from ``warmup_start_factor``·lr to lr over this many epochs."""
    warmup_steps: int = bounded(0, low=0)
    """Warm-up length in optimizer steps (takes precedence over ``warmup_epochs``)."""
    warmup_start_factor: float = bounded(0.0, low=0.0, high=1.0)
    """The warm-up's first lr as a fraction of the peak lr."""
    min_lr_factor: float = bounded(0.0, low=0.0, high=1.0)
    """Final lr of ``cosine`` as a fraction of the peak lr."""


@dataclass
class TrainConfig:
    """The loop."""

    epochs: int = bounded(10, low=1)
    """Passes over the training set (with ``regime.adapt``: the reference's epochs)."""
    grad_clip_norm: float = bounded(0.0, low=0.0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    grad_accum_steps: int = bounded(1, low=1)
    """Micro-batches accumulated per optimizer step (emulates a larger batch)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocasts forward passes (CUDA; on CPU it is allowed but slow)."""
    channels_last: bool = False
    """Use channels_last memory format for 4-D activations (a CUDA speed-up)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    eval_every: int = bounded(1, low=1)
    """Evaluate every N epochs (and always after the last)."""
    log_every: int = bounded(20, low=1)
    """Log step metrics every N optimizer steps."""
    deterministic: bool = False
    """Ask for deterministic kernels (cuDNN); CPU runs are deterministic anyway."""
    stop_on_divergence: bool = True
    """End the run after an epoch whose training loss is not finite (``diverged`` in summary.json):
    a sweep's too-large learning rates then cost one epoch each, not a whole run."""


@dataclass
class RegimeConfig:
    """How this run derives from a small-batch reference recipe (Hoffer et al. 2017, Masters & Luschi 2018).

    With ``reference_batch_size`` set, ``optim.lr``, ``schedule.milestones``,
    ``schedule.warmup_epochs`` and ``train.epochs`` describe the reference recipe and
    the plan (``dist-train plan``) derives the values for ``data.batch_size``.
    """

    reference_batch_size: int = bounded(0, low=0)
    """Batch size of the reference recipe; 0 = none (values are used as given)."""
    lr_rule: Literal["none", "linear", "sqrt", "per_sample"] = "none"
    """none: keep optim.lr; linear: × B/B_ref; sqrt: × sqrt(B/B_ref); per_sample: lr = B × optim.lr
    (optim.lr is then the per-sample base learning rate)."""
    adapt: bool = False
    """Regime adaptation, planned in updates: the run makes the reference's number of updates, with
    its milestones and warm-up at the same steps, whatever the dataset size (the last epoch may be
    partial); batches are drawn across epoch boundaries unless data.cross_epoch_batches=false."""
    warmup_epochs: float = bounded(0.0, low=0.0)
    """Gradual warm-up (Goyal et al. 2017): the lr ramps linearly from the reference's optim.lr to
    the planned (scaled) lr over this many reference epochs, converted to steps like the milestones;
    replaces schedule.warmup_*. 0 = off (the authors' recipe has none)."""


@dataclass
class BNConfig:
    """Batch normalization."""

    ghost_batch_size: int = bounded(0, low=0)
    """Normalize over ghost batches of this many samples (per forward, per process); 0 = plain BN."""


@dataclass
class DiffusionConfig:
    """The weight-distance monitor: ||w_t - w_0|| against the update count t."""

    every_steps: int = bounded(0, low=0)
    """Log the distance every N optimizer steps; 0 = off."""
    fit_until_step: int = bounded(0, low=0)
    """Fit a·log(t) + b on the points up to this step; 0 = the first lr milestone (or the last step)."""


@dataclass
class SwapPhase2Config:
    """SWAP phase 2: every replica refines its own copy with a small batch."""

    batch_size: int = bounded(128, low=1)
    """Global batch of one replica (split over its processes)."""
    epochs: int = bounded(2, low=1)
    """Epochs every replica trains."""
    lr: float = bounded(0.01, low=0.0, low_open=True)
    """Peak lr of every replica."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """lr schedule of every replica over its epochs."""


@dataclass
class SwapConfig:
    """SWAP (Gupta et al. 2020): large-batch DDP, independent small-batch replicas, one average."""

    enabled: bool = False
    """Run the three SWAP phases instead of one training run."""
    replica_size: int = bounded(0, low=0)
    """Processes per phase-2 replica; 0 = one replica per node (torchrun's LOCAL_WORLD_SIZE); 1 = one per process."""
    phase1_max_epochs: int = bounded(0, low=0)
    """Epoch limit of phase 1; 0 = train.epochs."""
    phase1_train_acc: float = bounded(0.0, low=0.0, high=1.0)
    """Stop phase 1 once an epoch's training accuracy reaches this (the paper's criterion); 0 = epoch limit only."""
    phase2: SwapPhase2Config = field(default_factory=SwapPhase2Config)
    bn_recompute_batches: int = bounded(200, low=0)
    """Phase 3 recomputes the averaged model's BN statistics over this many unaugmented training batches (each
    data.batch_size / train.grad_accum_steps images, split over the ranks; 200 is the scale of "precise BN":
    51,200 images at batch 256); 0 = one pass over the whole training set."""


@dataclass
class CheckpointConfig:
    """Checkpointing."""

    every_epochs: int = bounded(1, low=0)
    """Write ``checkpoints/last.pt`` every N epochs (and after the last); 0 = only at the end."""
    every_steps: int = bounded(0, low=0)
    """Also write it every N optimizer steps inside an epoch (long epochs, preemptible jobs); 0 = off.
    Resuming from such a checkpoint starts the epoch's data at that step, skipping the samples before it
    without reading them, and the run continues exactly as if it had not stopped (a micro-batch's
    augmentation never depends on the batches before it: dist_train/data/loader.py)."""
    sigterm_budget_s: float = bounded(20.0, low=0.0, high=3600.0)
    """On SIGTERM (``scancel``, preemption, ``timeout``), every rank stops after the same training step and
    writes a checkpoint there if the last save took less than what is left of this many seconds since the
    signal (SLURM and torchrun kill 30 s after SIGTERM by default); else the run resumes from its last
    checkpoint. Either way the lock is released and one line says which."""


@dataclass
class DistConfig:
    """torch.distributed settings."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto: nccl on CUDA, gloo on CPU."""
    timeout_s: int = bounded(600, low=1, high=30 * 86_400)
    """Collective timeout in seconds."""
    sync_buffers: bool = True
    """Let DDP copy rank 0's buffers (BN running statistics) to every rank at each forward."""
    exact_reduction: bool = True
    """Lay DDP's gradient buckets out once, from the model's parameter order, so that every process (fresh,
    restarted or long-running) sums each gradient in the same order: a resume is then bitwise exact at any
    world size. false: DDP's own layout, rebuilt after each process's first backward (a resume with three
    or more ranks may then differ from an uninterrupted run in the last bits). One or two ranks are exact
    either way."""


@dataclass
class Config:
    """A whole run."""

    name: str = ""
    """Run name; the run directory is ``out_dir/name``. Empty: the config file's stem."""
    out_dir: str = "runs"
    """Parent of run directories (shared between nodes in multi-node jobs)."""
    seed: int = bounded(0, low=0, high=SEED_MAX)
    """Seed of the model's initialisation, the data order and the augmentation draws."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU."""
    resume: str = "auto"
    """auto: continue from the run directory's last checkpoint if there is one;
    never: start fresh (fails if the run directory already holds a checkpoint);
    or a checkpoint path."""
    on_config_change: Literal["refuse", "continue"] = "refuse"
    """When the checkpoint being resumed was trained with a config that differs in what is trained
    (model, data, batch, seed, optimizer, schedule, epochs, ...): refuse (and say what differs), or
    continue it with the new values (the old config.yaml is kept under history/)."""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    bn: BNConfig = field(default_factory=BNConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        """The run directory: ``out_dir/name``."""
        return Path(self.out_dir) / self.name


def _valid_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, e.g. ``optim.lr``."""
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = globals()[f.type] if isinstance(f.type, str) else f.type
            keys.extend(_valid_keys(sub, f"{key}."))
    return keys


def _closest(key: str) -> str:
    matches = difflib.get_close_matches(key, _valid_keys(Config), n=1, cutoff=0.5)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _explain(error: OmegaConfBaseException, source: str, key_hint: str = "") -> ConfigError:
    """Turn an OmegaConf error into a one-line ConfigError naming the key."""
    key = key_hint or getattr(error, "full_key", None) or ""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, ConfigKeyError):
        return ConfigError(f"{source}: unknown config key '{key}'{_closest(key)}")
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def parse_overrides(overrides: list[str]) -> list[str]:
    """Check that every override has the form ``dotted.key=value``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"bad override '{item}': expected dotted.key=value, e.g. optim.lr=0.2")
        if not value.isprintable():
            raise ConfigError(f"bad override {item!r}: the value holds a newline or another control character")
        if "#" in value and not (len(value) > 1 and value[0] == value[-1] and value[0] in "'\""):
            raise ConfigError(f"bad override '{item}': '#' starts a YAML comment; quote the value: {key}='\"{value}\"'")
    return overrides


MAX_FILE_BYTES = 1 << 20
"""The largest config or sweep file read (a real one is a few kB)."""
MAX_VALUES = 100_000
"""The most values (mapping entries and list items, aliases expanded) a YAML file may hold."""


def read_text(path: Path, error: type[DistTrainError] = ConfigError, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path`` (at most ``limit`` bytes), else one ``error`` line naming the file."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (YAML itself lets the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_size(loaded: Any, path: Path) -> None:
    """Refuse more than ``MAX_VALUES`` values, counting each alias as the copy it stands for (an alias bomb
    expands exponentially)."""
    stack, count = [loaded], 0
    while stack:
        value = stack.pop()
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        count += len(items)
        if count > MAX_VALUES:
            raise ConfigError(f"{path}: more than {MAX_VALUES} values (aliases expanded); refused")
        stack.extend(items)


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """The top-level mapping of the ``kind`` file ``path`` (empty file: {}); else a one-line ConfigError
    (``expected`` says what the top level should be). Bounded: UTF-8, at most ``MAX_FILE_BYTES`` and
    ``MAX_VALUES`` values, no key twice."""
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    text = read_text(path)
    try:
        loaded = yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except ConfigError as e:
        raise ConfigError(str(e).replace("<unicode string>", str(path), 1)) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {expected}")
    _check_size(loaded, path)
    return loaded


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The YAML mappings to merge, base files first: a file may name another with ``base: FILE``
    (relative to its own directory) and override some of its keys."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle")
    loaded = read_yaml_mapping(path, "config", "expected a mapping of config keys at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return [(path, loaded)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return [*_yaml_layers(path.parent / base, (*seen, path.resolve())), (path, loaded)]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the typed config from defaults, a YAML file and ``key=value`` overrides.

    ``path`` is a file, or the name of an installed recipe (``quickstart``; ``dist-train recipes`` lists them)."""
    from dist_train.named_configs import find_config

    merged = OmegaConf.structured(Config)
    for layer_path, layer in _yaml_layers(find_config(path)) if path is not None else []:
        try:
            merged.merge_with(OmegaConf.create(layer))
        except OmegaConfBaseException as e:
            raise _explain(e, str(layer_path)) from None
    for item in parse_overrides(list(overrides)):
        try:
            merged.merge_with(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _explain(e, f"override '{item}'", item.partition("=")[0]) from None
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not config.name:
        config.name = Path(path).stem if path is not None else "run"
    validate(config)
    return config


def _check_value(key: str, value: Any, bounds: Range | None) -> None:
    """One value of a config key against its type's limits and its range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if bounds is not None and not bounds.contains(value):
        raise ConfigError(f"{key} must be {bounds.describe()}, got {_number(value)}")
    if isinstance(value, int) and abs(value) > SEED_MAX:
        raise ConfigError(f"{key} must be at most {SEED_MAX} (64-bit), got {value}")


def check_ranges(tree: Any, prefix: str = "") -> None:
    """Every value of a config tree within the range its schema field gives (see :func:`bounded`), every
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


def validate(config: Config) -> None:
    """Every key within its range (declared with the schema), then what ranges alone cannot express."""
    check_ranges(config)
    if config.data.backend == "tensor" and config.data.dataset in ("imagefolder", "webdataset"):
        raise ConfigError(
            f"data.backend=tensor holds in-memory data sets only; use torch or dali for {config.data.dataset}"
        )
    _check_dataset(config.data.dataset)
    if config.data.dataset in DATASETS[1:] and not config.data.root:
        raise ConfigError(f"data.root is required for data.dataset={config.data.dataset}")
    if config.schedule.factors and len(config.schedule.factors) != len(config.schedule.milestones):
        raise ConfigError(
            f"schedule.factors has {len(config.schedule.factors)} values for "
            f"{len(config.schedule.milestones)} schedule.milestones"
        )
    if sorted(config.schedule.milestones) != list(config.schedule.milestones):
        raise ConfigError(f"schedule.milestones must be increasing, got {config.schedule.milestones}")
    check_name(config.name)


def _check_dataset(name: str) -> None:
    """A built-in data set's name or a factory's import path (``module:attr``, ``file.py:attr``)."""
    module, sep, attr = name.partition(":")
    if name not in DATASETS and not (sep and module and attr):
        raise ConfigError(
            f"unknown data.dataset '{name}'; choose one of {', '.join(DATASETS)}, "
            "or a factory: my_pkg.data:build or path/to/data.py:build"
        )


def _lookup(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.replace("[", ".").replace("]", "").split("."):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what is written to the run directory)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"optim.lr": 0.1, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain nested dicts."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
