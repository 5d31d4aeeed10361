"""One training run from a config, inside the process group the environment describes: the run directory's lock,
then a plain run or the SWAP phases (both assembled by :mod:`dist_train.assemble`).

The launch path goes one way: ``cli`` / ``slurm`` → ``run`` → ``swap`` / ``assemble`` → ``trainer``.
"""

from __future__ import annotations

from typing import Any

from dist_train.assemble import build_trainer
from dist_train.config import Config, to_dict
from dist_train.data.build import resolve_data_backend
from dist_train.distributed import DistContext, agree, distributed
from dist_train.jsonio import write_json
from dist_train.optimizers import check_installed
from dist_train.rundir import RunLock, write_summary
from dist_train.stop import catch_sigterm
from dist_train.swap import train_swap


def hparams_of(cfg: Config, world_size: int) -> dict[str, Any]:
    """The hyper-parameters shown in TensorBoard's HPARAMS tab: the ones that tell runs apart in the papers'
    experiments (config.yaml and TensorBoard's ``config`` text hold the rest)."""
    return {
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "batch_size": cfg.data.batch_size,
        "world_size": world_size,
        "lr": cfg.optim.lr,
        "lr_rule": cfg.regime.lr_rule,
        "regime_adaptation": cfg.regime.adapt,
        "ghost_batch_size": cfg.bn.ghost_batch_size,
        "augment_copies": cfg.augment.copies,
        "epochs": cfg.train.epochs,
    }


def train(cfg: Config) -> dict[str, Any]:
    """Run (or continue) one training run inside the process group the environment describes.

    Rank 0 holds the run directory's lock (see :mod:`dist_train.rundir`) from start to end. A SIGTERM
    ends the run cleanly (:mod:`dist_train.stop`): :class:`~dist_train.stop.Terminated` is raised once the
    lock is released.
    """
    check_installed(cfg.optim.name)  # before any process group or file
    with catch_sigterm(), distributed(cfg.device, cfg.dist.backend, cfg.dist.timeout_s) as ctx:
        resolve_data_backend(cfg)
        run_dir = cfg.run_dir
        lock = agree(lambda: RunLock.acquire(run_dir) if ctx.is_primary else None, undo=release)
        try:
            if lock is not None and lock.note:
                print(lock.note, flush=True)
            return _swap_run(cfg, ctx) if cfg.swap.enabled else _plain_run(cfg, ctx)
        finally:
            release(lock)


def release(lock: RunLock | None) -> None:
    if lock is not None:
        lock.release()


def _swap_run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    summary = train_swap(cfg, ctx)
    if ctx.is_primary:
        write_json(cfg.run_dir / "summary.json", {**summary, "config": to_dict(cfg)})
    return summary


def _plain_run(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    trainer = build_trainer(cfg, ctx)
    try:
        first_step = trainer.step
        summary = trainer.fit()
        summary |= {
            "lr_planned": trainer.optimizer.param_groups[0]["initial_lr"],
            "planned_epochs": trainer.total_epochs,
        }
        if ctx.is_primary:
            summary["config"] = to_dict(cfg)
            if trainer.step > first_step or not (trainer.run_dir / "summary.json").exists():
                write_summary(trainer.run_dir, summary, trainer.monitor.history)
            # One metric: TensorBoard shows 5 hyper-parameters (those that differ between runs first), and with
            # a second metric the table no longer fits a 1600-pixel window.
            trainer.monitor.hparams(hparams_of(cfg, ctx.world_size), {"val/acc": summary["val_acc"]})
            trainer.monitor.event(trainer.step, "end", val_acc=summary["val_acc"], steps=trainer.step)
            trainer.monitor.print(
                f"done: val acc {summary['val_acc']:.2%} after {trainer.step} steps "
                f"in {summary['train_seconds']:.1f}s; run directory {trainer.run_dir}"
            )
        return summary
    finally:
        trainer.monitor.close()
