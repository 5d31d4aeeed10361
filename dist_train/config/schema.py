"""The schema of a run: a tree of dataclasses, every key typed, documented and (numbers) bounded.

The docstring under each field is its documentation (the generated config reference reads it); a numeric
field declares its valid range with :func:`~dist_train.config.ranges.bounded`. The data sets, loader
backends, lr rules and schedules a key may name come from their tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, get_type_hints

from dist_train.config.ranges import SEED_MAX, bounded, limits
from dist_train.data.backends import BACKENDS
from dist_train.data.catalog import CATALOG
from dist_train.lr_rules import LR_RULE_NAMES
from dist_train.optimizers import OPTIMIZER_NAMES
from dist_train.schedules import SCHEDULE_NAMES, WITHOUT_MILESTONES

BACKEND_CHOICES = ("auto", *BACKENDS)
"""``data.backend``'s choices: a loader backend, or ``auto`` (decided when the run starts)."""


@dataclass
class DataConfig:
    """Where the images come from and how they are batched."""

    dataset: str = "synthetic"
    """Which reader to use: one of :data:`DATASETS`, or a data-set factory by import path
    (``my_pkg.data:build`` or ``path/to/data.py:build``, see :mod:`dist_train.data.plugin`)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a data-set factory (``data.dataset: module:attr``)."""
    backend: Literal[BACKEND_CHOICES] = "auto"
    """Training loader: torch DataLoader + torchvision transforms v2, NVIDIA DALI pipelines
    (``pip install .[dali]``; CPU operators when there is no GPU), or ``tensor``: the whole split on the
    training device, augmented a batch at a time by tensor ops (in-memory sets only, not ``imagefolder``).
    All give identical batches (shapes, dtype, layout, sample order); only the random augmentation draws differ.
    ``auto``: ``tensor`` for a built-in in-memory set whose crop it does, on a GPU or a CPU, else ``torch``
    (decided when the run starts; the run's ``config.yaml`` records the choice)."""
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
        if not self.root and self.dataset in CATALOG:
            self.root = CATALOG[self.dataset].default_root


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
class LarsConfig:
    """LARS (You, Gitman & Ginsburg 2017; timm's ``Lars``, after apex's LARC): each parameter's lr is scaled by
    its trust ratio ``trust_coefficient·|w| / (|g| + weight_decay·|w| + eps)``."""

    trust_coefficient: float = bounded(0.001, low=0.0, low_open=True)
    """η of the trust ratio (0.001 in the paper and MLPerf)."""
    eps: float = bounded(1e-8, low=0.0)
    """Added to the trust ratio's denominator."""
    trust_clip: bool = False
    """LARC clipping: the trust ratio divided by the lr, at most 1 (the adapted lr never exceeds the lr)."""


@dataclass
class LambConfig:
    """LAMB (You et al. 2019; timm's ``Lamb``, after apex's FusedLAMB): Adam's update scaled per parameter by the
    trust ratio |w| / |update|."""

    eps: float = bounded(1e-6, low=0.0, low_open=True)
    """Adam's epsilon."""
    max_grad_norm: float = bounded(1.0, low=0.0)
    """Clip the global gradient norm to this before the update, as FusedLAMB does (0: no clipping)."""
    decoupled_decay: bool = False
    """Decay the weights apart from the update (AdamW style) instead of adding the decay to it."""
    trust_clip: bool = False
    """Clip the trust ratio at 1."""


@dataclass
class OptimConfig:
    """The optimizer."""

    name: Literal[OPTIMIZER_NAMES] = "sgd"
    """SGD (with ``momentum``, ``nesterov``), AdamW (with ``betas``), LARS (``momentum``, ``nesterov``,
    ``optim.lars``) or LAMB (``betas``, ``optim.lamb``); LARS and LAMB are timm's
    (``pip install 'dist_train[timm]'``), see :mod:`dist_train.optimizers`."""
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
    """AdamW and LAMB betas."""
    decay_bn_and_bias: bool = True
    """Apply weight decay to BatchNorm parameters and biases too (false excludes them, and with LARS and LAMB
    also from the trust ratio: their update is plain momentum SGD or Adam, as in MLPerf)."""
    lars: LarsConfig = field(default_factory=LarsConfig)
    """LARS's own knobs (``optim.name: lars``)."""
    lamb: LambConfig = field(default_factory=LambConfig)
    """LAMB's own knobs (``optim.name: lamb``)."""


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, per optimizer step."""

    name: Literal[SCHEDULE_NAMES] = "step"
    """constant lr, ``step`` decays at ``milestones``, ``cosine`` annealing to ``min_lr_factor``·lr, or ``poly``
    decay to it with exponent ``power``."""
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
    """Final lr of ``cosine`` and ``poly`` as a fraction of the peak lr."""
    power: float = bounded(2.0, low=0.0, low_open=True)
    """The exponent of ``poly``: lr·(end + (1 − end)·(1 − t)^power) after the warm-up, t going from 0 to 1
    (2 in MLPerf's LARS recipes)."""


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
    rank_health: bool = True
    """Gather every rank's pace at each log step (``ranks/*``) and name a straggler
    (:mod:`dist_train.techniques.rank_health`)."""
    deterministic: bool = False
    """Ask for deterministic kernels (cuDNN); CPU runs are deterministic anyway."""
    label_smoothing: float = bounded(0.0, low=0.0, high=1.0, high_open=True)
    """Label smoothing of the training loss (0.1 in the large-batch ImageNet recipes); the validation loss is
    plain cross-entropy, so that runs with and without it compare."""
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
    lr_rule: Literal[LR_RULE_NAMES] = "none"
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
class NoiseScaleConfig:
    """The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018), measured from the gradients
    data-parallel training already has: each rank's (or micro-batch's) before the all-reduce, the reduced one after."""

    every_steps: int = bounded(0, low=0)
    """Measure every N optimizer steps; 0 = off. Between measurements it costs nothing."""
    ema_decay: float = bounded(0.95, low=0.0, high=1.0, high_open=True)
    """Decay of the moving averages of |G|² and tr(Σ), per measurement (bias-corrected); B_simple is the ratio
    of the two averages. 0 = each measurement on its own."""


@dataclass
class TargetConfig:
    """Train to a target (time-to-target runs, steps-to-target sweeps): end the run after the first epoch
    that reaches one (:mod:`dist_train.techniques.target`); ``train.epochs`` stays the limit."""

    train_loss: float = bounded(0.0, low=0.0)
    """Stop after the first epoch whose mean training loss is at or below this; 0 = no loss target."""
    train_acc: float = bounded(0.0, low=0.0, high=1.0)
    """Stop after the first epoch whose training accuracy is at or above this; 0 = no accuracy target."""


@dataclass
class SwapPhase2Config:
    """SWAP phase 2: every replica refines its own copy with a small batch."""

    batch_size: int = bounded(128, low=1)
    """Global batch of one replica (split over its processes)."""
    epochs: int = bounded(2, low=1)
    """Epochs every replica trains."""
    lr: float = bounded(0.01, low=0.0, low_open=True)
    """Peak lr of every replica."""
    schedule: Literal[WITHOUT_MILESTONES] = "cosine"
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
    noise_scale: NoiseScaleConfig = field(default_factory=NoiseScaleConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        """The run directory: ``out_dir/name``."""
        return Path(self.out_dir) / self.name


def valid_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections too, e.g. ``optim`` and ``optim.lr``."""
    hints = get_type_hints(schema)
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], f"{key}."))
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"optim.lr": 0.1, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
