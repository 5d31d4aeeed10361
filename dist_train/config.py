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

from dist_train.errors import ConfigError


@dataclass
class DataConfig:
    """Where the images come from and how they are batched."""

    dataset: Literal["synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder"] = "synthetic"
    """Which reader to use."""
    backend: Literal["auto", "torch", "dali", "tensor"] = "auto"
    """Training loader: torch DataLoader + torchvision transforms v2, NVIDIA DALI pipelines
    (``pip install .[dali]``; CPU operators when there is no GPU), or ``tensor``: the whole split on the
    training device, augmented a batch at a time by tensor ops (in-memory sets only, not ``imagefolder``).
    All give identical batches (shapes, dtype, layout, sample order); only the random augmentation draws differ.
    ``auto``: ``tensor`` where it can run on a GPU, else ``torch`` (decided when the run starts, on its device;
    the run's ``config.yaml`` records the choice)."""
    root: str = ""
    """Dataset directory: the CIFAR python-pickle folder, the (Fashion-)MNIST IDX folder, or an
    ImageFolder tree (``train/`` and optionally ``val/``). Unused for ``synthetic``. Empty for
    ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``)."""
    download: bool = False
    """Download CIFAR/MNIST/Fashion-MNIST into ``root`` with torchvision when files are missing."""
    batch_size: int = 128
    """Global number of distinct samples per optimizer step (over all workers and
    accumulation steps)."""
    eval_batch_size: int = 0
    """Global evaluation batch size; 0 means ``batch_size``."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 loads in the training process)."""
    augment: bool = True
    """Apply the dataset's standard training augmentation (pad-crop + flip for
    CIFAR-like data, random-resized-crop + flip for ImageFolder, none for MNIST)."""
    crop: Literal["auto", "none", "pad", "resized"] = "auto"
    """Training crop instead of the dataset's default: pad-crop, random-resized-crop or none."""
    flip: Optional[bool] = None  # noqa: UP045 - OmegaConf reads typing.Optional
    """Random horizontal flips (true/false) instead of the dataset's default (null)."""
    pad: int = 4
    """Padding of the pad-crop, in pixels."""
    cutout: int = 0
    """Cutout (DeVries & Taylor 2017): zero a square of this side at a random centre of each
    training image, after normalisation (clipped at the borders); 0 = off."""
    val_fraction: float = 0.2
    """Share of the training files held out for validation when the dataset has no
    validation split of its own (e.g. MNIST given only one IDX pair)."""
    split_seed: int = 0
    """Seed of that held-out split (fixed, independent of ``seed``)."""
    image_size: int = 0
    """Training crop size for ImageFolder (0 = 224) and side of synthetic images (0 = 32)."""
    synthetic_train_size: int = 5000
    """Number of synthetic training images."""
    synthetic_val_size: int = 1000
    """Number of synthetic validation images."""
    synthetic_classes: int = 10
    """Number of synthetic classes."""
    train_subset: int = 0
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

    copies: int = 1
    """M: views per sample in the same batch (1 = off). data.batch_size still counts distinct
    samples (and drives the lr rules); each step sees batch_size × M images."""
    layout: Literal["copy_major", "sample_major"] = "copy_major"
    """copy_major: all samples' view 1, then view 2, ... (every ghost batch holds distinct
    samples); sample_major: the M views of a sample side by side."""


@dataclass
class ModelConfig:
    """The network."""

    name: str = "c1"
    """mnist_f1, c1, resnet20/32/44/56/110, wrn{depth}_{k} (e.g. wrn16_4), or any
    torchvision classification model (e.g. resnet50)."""
    width: int = 0
    """Base channel width for c1 / hidden width for mnist_f1; 0 = the model's default."""


@dataclass
class OptimConfig:
    """The optimizer."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    """Peak learning rate (reached after warm-up)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum (SGD)."""
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    decay_bn_and_bias: bool = True
    """Apply weight decay to BatchNorm parameters and biases too (false excludes them)."""


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, per optimizer step."""

    name: Literal["constant", "step", "cosine"] = "step"
    milestones: list[float] = field(default_factory=list)
    """Epochs at which ``step`` multiplies the lr by ``gamma``."""
    gamma: float = 0.1
    factors: list[float] = field(default_factory=list)
    """Instead of ``gamma``: the lr multiplier in force after each milestone (one per milestone),
    e.g. [0.2, 0.04, 0.001] for 0.1 → 0.02 → 0.004 → 1e-4."""
    warmup_epochs: float = 0.0
    """Linear warm-up from ``warmup_start_factor``·lr to lr over this many epochs."""
    warmup_steps: int = 0
    """Warm-up length in optimizer steps (takes precedence over ``warmup_epochs``)."""
    warmup_start_factor: float = 0.0
    min_lr_factor: float = 0.0
    """Final lr of ``cosine`` as a fraction of the peak lr."""


@dataclass
class TrainConfig:
    """The loop."""

    epochs: int = 10
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (emulates a larger batch)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocasts forward passes (CUDA; on CPU it is allowed but slow)."""
    channels_last: bool = False
    """Use channels_last memory format for 4-D activations (a CUDA speed-up)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    eval_every: int = 1
    """Evaluate every N epochs (and always after the last)."""
    log_every: int = 20
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

    reference_batch_size: int = 0
    """Batch size of the reference recipe; 0 = none (values are used as given)."""
    lr_rule: Literal["none", "linear", "sqrt", "per_sample"] = "none"
    """none: keep optim.lr; linear: × B/B_ref; sqrt: × sqrt(B/B_ref); per_sample: lr = B × optim.lr
    (optim.lr is then the per-sample base learning rate)."""
    adapt: bool = False
    """Regime adaptation, planned in updates: the run makes the reference's number of updates, with
    its milestones and warm-up at the same steps, whatever the dataset size (the last epoch may be
    partial); batches are drawn across epoch boundaries unless data.cross_epoch_batches=false."""
    warmup_epochs: float = 0.0
    """Gradual warm-up (Goyal et al. 2017): the lr ramps linearly from the reference's optim.lr to
    the planned (scaled) lr over this many reference epochs, converted to steps like the milestones;
    replaces schedule.warmup_*. 0 = off (the authors' recipe has none)."""


@dataclass
class BNConfig:
    """Batch normalization."""

    ghost_batch_size: int = 0
    """Normalize over ghost batches of this many samples (per forward, per process); 0 = plain BN."""


@dataclass
class DiffusionConfig:
    """The weight-distance monitor: ||w_t - w_0|| against the update count t."""

    every_steps: int = 0
    """Log the distance every N optimizer steps; 0 = off."""
    fit_until_step: int = 0
    """Fit a·log(t) + b on the points up to this step; 0 = the first lr milestone (or the last step)."""


@dataclass
class SwapPhase2Config:
    """SWAP phase 2: every replica refines its own copy with a small batch."""

    batch_size: int = 128
    """Global batch of one replica (split over its processes)."""
    epochs: int = 2
    lr: float = 0.01
    schedule: Literal["constant", "cosine"] = "cosine"


@dataclass
class SwapConfig:
    """SWAP (Gupta et al. 2020): large-batch DDP, independent small-batch replicas, one average."""

    enabled: bool = False
    replica_size: int = 0
    """Processes per phase-2 replica; 0 = one replica per node (torchrun's LOCAL_WORLD_SIZE); 1 = one per process."""
    phase1_max_epochs: int = 0
    """Epoch limit of phase 1; 0 = train.epochs."""
    phase1_train_acc: float = 0.0
    """Stop phase 1 once an epoch's training accuracy reaches this (the paper's criterion); 0 = epoch limit only."""
    phase2: SwapPhase2Config = field(default_factory=SwapPhase2Config)
    bn_recompute_batches: int = 200
    """Phase 3 recomputes the averaged model's BN statistics over this many unaugmented training batches (each
    data.batch_size / train.grad_accum_steps images, split over the ranks; 200 is the scale of "precise BN":
    51,200 images at batch 256); 0 = one pass over the whole training set."""


@dataclass
class CheckpointConfig:
    """Checkpointing."""

    every_epochs: int = 1
    """Write ``checkpoints/last.pt`` every N epochs (and after the last); 0 = only at the end."""
    every_steps: int = 0
    """Also write it every N optimizer steps inside an epoch (long epochs, preemptible jobs); 0 = off.
    Resuming from such a checkpoint starts the epoch's data at that step, skipping the samples before it
    without reading them, and the run continues exactly as if it had not stopped (a micro-batch's
    augmentation never depends on the batches before it: dist_train/data/loader.py)."""


@dataclass
class DistConfig:
    """torch.distributed settings."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto: nccl on CUDA, gloo on CPU."""
    timeout_s: int = 600
    """Collective timeout in seconds."""
    sync_buffers: bool = True
    """Let DDP copy rank 0's buffers (BN running statistics) to every rank at each forward."""


@dataclass
class Config:
    """A whole run."""

    name: str = ""
    """Run name; the run directory is ``out_dir/name``. Empty: the config file's stem."""
    out_dir: str = "runs"
    """Parent of run directories (shared between nodes in multi-node jobs)."""
    seed: int = 0
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
        key, sep, _ = item.partition("=")
        if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"bad override '{item}': expected dotted.key=value, e.g. optim.lr=0.2")
    return overrides


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """The top-level mapping of the ``kind`` file ``path`` (empty file: {}); else a one-line ConfigError
    (``expected`` says what the top level should be)."""
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {expected}")
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
    """Build the typed config from defaults, a YAML file and ``key=value`` overrides."""
    merged = OmegaConf.structured(Config)
    for layer_path, layer in _yaml_layers(Path(path)) if path is not None else []:
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


def _non_finite(tree: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in a config tree, if any."""
    items = (
        ((f.name, getattr(tree, f.name)) for f in fields(tree))
        if is_dataclass(tree)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(name, int) else f"{prefix}{'.' if prefix else ''}{name}"
        if isinstance(value, float) and not math.isfinite(value):
            return key
        found = _non_finite(value, key)
        if found:
            return found
    return None


def validate(config: Config) -> None:
    """Checks that types alone cannot express."""
    bad = _non_finite(config)
    if bad is not None:
        raise ConfigError(f"{bad} must be a finite number, got {_lookup(config, bad)}")
    positive = {
        "data.batch_size": config.data.batch_size,
        "train.epochs": config.train.epochs,
        "train.grad_accum_steps": config.train.grad_accum_steps,
        "train.eval_every": config.train.eval_every,
        "train.log_every": config.train.log_every,
        "augment.copies": config.augment.copies,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if config.checkpoint.every_steps < 0 or config.checkpoint.every_epochs < 0:
        raise ConfigError("checkpoint.every_steps and checkpoint.every_epochs must be at least 0")
    if config.swap.bn_recompute_batches < 0:
        raise ConfigError(f"swap.bn_recompute_batches must be at least 0, got {config.swap.bn_recompute_batches}")
    if config.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {config.optim.lr}")
    if not 0.0 <= config.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    if config.data.backend == "tensor" and config.data.dataset == "imagefolder":
        raise ConfigError("data.backend=tensor holds in-memory data sets only; use torch or dali for imagefolder")
    if config.data.dataset != "synthetic" and not config.data.root:
        raise ConfigError(f"data.root is required for data.dataset={config.data.dataset}")
    if config.schedule.factors and len(config.schedule.factors) != len(config.schedule.milestones):
        raise ConfigError(
            f"schedule.factors has {len(config.schedule.factors)} values for "
            f"{len(config.schedule.milestones)} schedule.milestones"
        )
    if sorted(config.schedule.milestones) != list(config.schedule.milestones):
        raise ConfigError(f"schedule.milestones must be increasing, got {config.schedule.milestones}")
    if "/" in config.name or config.name in {"", ".", ".."}:
        raise ConfigError(f"name must be a plain directory name, got '{config.name}'")


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
