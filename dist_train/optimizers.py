"""The optimizers, in one table (``optim.name``): a new optimizer is one builder plus one row here.

A leaf module (torch and timm are imported by the builders only): the config's choices derive from
:data:`OPTIMIZERS`. Each builder takes the parameter groups of :func:`dist_train.optim.parameter_groups`
(with ``optim.decay_bn_and_bias: false``, norm layers and biases form a group of their own whose weight
decay is 0), the peak lr and the ``optim`` section.

LARS and LAMB are timm's (``pip install 'dist_train[timm]'``): timm's ``Lars`` follows apex's LARC, its
``Lamb`` apex's FusedLAMB. With ``decay_bn_and_bias: false`` the group of norm layers and biases is left out
of the trust ratio as well as the weight decay, as MLPerf's ResNet-50 submissions do: its update is plain
momentum SGD (LARS) or Adam (LAMB). Every other parameter is adapted, with or without weight decay.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dist_train.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dist_train.config.schema import OptimConfig

Groups = list[dict[str, Any]]


def _sgd(groups: Groups, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _adamw(groups: Groups, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


def _missing_timm(name: str) -> ConfigError:
    return ConfigError(
        f"optim.name={name} needs timm, which is not installed: pip install 'dist_train[timm]' (or timm)"
    )


def timm_optim(name: str) -> Any:
    """``timm.optim``, or a one-line ConfigError naming the extra that provides it."""
    try:
        import timm.optim
    except ImportError:
        raise _missing_timm(name) from None
    return timm.optim


def check_installed(name: str) -> None:
    """Refuse ``optim.name`` when what builds it is not installed, without importing it (``dist-train submit``
    refuses before anything is queued what the nodes would refuse)."""
    if OPTIMIZERS[name].needs_timm:
        try:
            found = importlib.util.find_spec("timm") is not None
        except (ImportError, ValueError):  # a parent package, or a module hidden as None
            found = False
        if not found:
            raise _missing_timm(name)


def adapted(groups: Groups, cfg: OptimConfig) -> Groups:
    """The groups with timm's ``always_adapt`` set: every parameter gets the trust ratio but, with
    ``decay_bn_and_bias: false``, the group of norms and biases (the second), whatever the weight decay (timm
    would otherwise adapt only where it is not 0, and nothing at all with ``weight_decay: 0``)."""
    exempt = 1 if not cfg.decay_bn_and_bias else None
    return [dict(group, always_adapt=index != exempt) for index, group in enumerate(groups)]


def _lars(groups: Groups, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    lars = cfg.lars
    return timm_optim("lars").Lars(
        adapted(groups, cfg),
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        trust_coeff=lars.trust_coefficient,
        eps=lars.eps,
        trust_clip=lars.trust_clip,
    )


def _lamb(groups: Groups, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    lamb = cfg.lamb
    return timm_optim("lamb").Lamb(
        adapted(groups, cfg),
        lr=lr,
        betas=tuple(cfg.betas),
        eps=lamb.eps,
        max_grad_norm=lamb.max_grad_norm or None,
        trust_clip=lamb.trust_clip,
        decoupled_decay=lamb.decoupled_decay,
    )


@dataclass(frozen=True)
class OptimizerRow:
    """One optimizer: how it is built, and the ``optim`` keys it reads."""

    name: str
    """``optim.name``'s value."""
    build: Callable[[Groups, float, OptimConfig], torch.optim.Optimizer]
    """The optimizer over the parameter groups at the peak lr."""
    keys: str
    """The ``optim`` keys it reads besides ``lr`` and ``weight_decay`` (for the docs)."""
    needs_timm: bool = False
    """It is timm's (the ``timm`` extra)."""


OPTIMIZERS: dict[str, OptimizerRow] = {
    row.name: row
    for row in (
        OptimizerRow("sgd", _sgd, "momentum, nesterov"),
        OptimizerRow("adamw", _adamw, "betas (decoupled weight decay)"),
        OptimizerRow("lars", _lars, "momentum, nesterov, lars.* (timm's Lars)", needs_timm=True),
        OptimizerRow("lamb", _lamb, "betas, lamb.* (timm's Lamb)", needs_timm=True),
    )
}
"""Every optimizer by name."""


def describe_optimizer(cfg: OptimConfig) -> str:
    """``optim`` in words, for the plan."""
    exempt = "" if cfg.decay_bn_and_bias else ", norms and biases exempt"
    details = {
        "sgd": f"momentum {cfg.momentum:g}{', nesterov' * cfg.nesterov}",
        "adamw": f"betas {cfg.betas[0]:g}, {cfg.betas[1]:g}",
        "lars": f"momentum {cfg.momentum:g}, trust coefficient {cfg.lars.trust_coefficient:g}"
        + (", LARC clipping" if cfg.lars.trust_clip else ""),
        "lamb": f"betas {cfg.betas[0]:g}, {cfg.betas[1]:g}, eps {cfg.lamb.eps:g}",
    }
    return f"{cfg.name} ({details.get(cfg.name, '')}, weight decay {cfg.weight_decay:g}{exempt})"


OPTIMIZER_NAMES = tuple(OPTIMIZERS)
"""``optim.name``'s choices."""
