"""Command line: ``dist-train train|config|plan|submit|sweep|shard|report|noise|recipes|unlock``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import NoReturn

from dist_train import slurm
from dist_train.config import Config, load_config, to_yaml
from dist_train.errors import ConfigError
from dist_train.failures import failure_line, print_error, rank_prefix
from dist_train.stop import EXIT_STATUS, Terminated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-train", description="Large-batch distributed training.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "train (alone, or one process of a torchrun/SLURM job)"),
        ("config", "print the resolved config without training"),
        ("plan", "print the learning-rate regime the run would follow, without training"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", "-c", help="YAML config file (see configs/)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.2")
        if name == "train":
            sub.add_argument(
                "--nproc-per-node",
                type=int,
                default=1,
                metavar="N",
                help="start N processes on this machine (torchrun's agent; a failure ends in one line)",
            )
        if name == "plan":
            sub.add_argument(
                "--train-size",
                type=int,
                default=0,
                metavar="N",
                help="training images (default: counted without loading them, or the standard set's size)",
            )
            sub.add_argument(
                "--noise-scale",
                metavar="B|RUN_DIR",
                help="a measured gradient noise scale (a number, or a run that measured one): also print the "
                "predicted steps and samples at other batch sizes",
            )

    text = "submit a run (--config) or a sweep (--sweep, as one job array) to SLURM with submitit"
    submit = commands.add_parser("submit", help=text, description=text)
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", "-c", help="run config file")
    what.add_argument("--sweep", help="sweep file (see configs/sweeps/)")
    submit.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for the run (every run)")
    submit.add_argument("--logs", help="submitit/SLURM log folder (default: RUN_DIR/slurm or SWEEP_DIR/slurm)")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch options and config; submit nothing")
    submit.add_argument("--wait", action="store_true", help="wait for the job(s) to end (through requeues)")
    slurm.add_arguments(submit)

    text = "run a sweep here, one run after another (finished runs are skipped)"
    sweep = commands.add_parser("sweep", help=text, description=text)
    sweep.add_argument("sweep", help="sweep file (see configs/sweeps/)")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    sweep.add_argument("--nproc-per-node", type=int, default=1, help="processes per run (torchrun when > 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs; train nothing")

    text = "write a data set as WebDataset tar shards with DALI index files and a manifest (data.dataset=webdataset)"
    shard = commands.add_parser("shard", help=text, description=text)
    shard.add_argument(
        "source", metavar="SRC", help="a data set (fashion_mnist, cifar10, synthetic, ...) or an ImageFolder"
    )
    shard.add_argument("destination", metavar="DST", help="the shard directory (data.root of the runs that read it)")
    shard.add_argument("--shard-size", default="256MiB", help="bytes per shard at most (default 256MiB)")
    shard.add_argument("overrides", nargs="*", metavar="key=value", help="data keys of the source, e.g. data.root=...")

    text = "a run's measured gradient noise scale: the critical batch, and the predicted steps and samples at others"
    noise = commands.add_parser("noise", help=text, description=text)
    noise.add_argument("run_dir", metavar="RUN_DIR", help="a run trained with noise_scale.every_steps=N")
    noise.add_argument("--batch-sizes", help="global batch sizes to predict, e.g. 64,256,1024 (default: powers of two)")

    text = "list the recipes installed with the package (--config NAME takes them by name)"
    commands.add_parser("recipes", help=text, description=text)

    text = "remove the lock that a killed run left in its run directory (refused while its holder runs)"
    unlock = commands.add_parser("unlock", help=text, description=text)
    unlock.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (out_dir/name)")

    text = "gather runs' summary.json into report.md, report.csv and heatmap.png"
    report = commands.add_parser("report", help=text, description=text)
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or directories holding them")
    report.add_argument("--out", help="output directory (default: the runs' common parent)")
    report.add_argument("--x", default="data.batch_size", help="heatmap columns (default data.batch_size)")
    report.add_argument("--y", default="optim.lr", help="heatmap rows (default optim.lr, the base LR)")
    report.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib needed)")
    return parser


def describe_plan(cfg: Config, given_train_size: int = 0, noise_scale: str | None = None) -> str:
    """The plan table for ``cfg``; the training set is counted without loading it (see data/sizes.py). With
    ``noise_scale`` (a number or a run directory), the steps and samples predicted at other batch sizes."""
    from dist_train.batch_prediction import describe_prediction, given_noise_scale
    from dist_train.data.sizes import train_size
    from dist_train.optimizers import describe_optimizer
    from dist_train.regime import bn_recompute_plan, format_plan, plan_from_config
    from dist_train.schedules import describe_schedule

    if given_train_size < 0:
        raise ConfigError(f"--train-size must be at least 1, got {given_train_size}")
    prediction = describe_prediction(given_noise_scale(noise_scale, cfg.data.batch_size)) if noise_scale else ""
    size = train_size(cfg.data, given_train_size)
    header = f"{cfg.name}: {cfg.model.name} on {cfg.data.dataset} ({size.count} training images: {size.source})"
    ghost = f"ghost batch {cfg.bn.ghost_batch_size}" if cfg.bn.ghost_batch_size else "plain BatchNorm"
    smoothing = f", label smoothing {cfg.train.label_smoothing:g}" if cfg.train.label_smoothing else ""
    text = (
        f"{header}\n{format_plan(plan_from_config(cfg, size.count))}\n"
        f"optimizer: {describe_optimizer(cfg.optim)}; schedule: {describe_schedule(cfg.schedule)}{smoothing}\n"
        f"batch norm: {ghost}"
    )
    if cfg.swap.enabled:
        text += f"\n{bn_recompute_plan(cfg, size.count)}"
    return f"{text}\n{prediction}" if prediction else text


def submit(args: argparse.Namespace) -> int:
    from dist_train.sweep import describe, is_done, load_sweep

    options = slurm.options_from_args(args)
    if args.sweep:
        plan = load_sweep(args.sweep, tuple(args.overrides))
        pending = [run for run in plan.runs if not is_done(run)]
        if len(pending) < len(plan.runs):
            print(f"{len(plan.runs) - len(pending)} of {len(plan.runs)} runs have finished already; not submitted")
        if not pending:
            return 0
        configs = [run.config for run in pending]
        default_logs = plan.directory / "slurm"
    else:
        configs = [load_config(args.config, args.overrides)]
        default_logs = configs[0].run_dir / "slurm"
    logs = Path(args.logs or default_logs).resolve()
    # Every run is checked before anything is submitted (a dry run does not look for data.root here).
    configs = [slurm.prepare(cfg, options, check_data=not args.dry_run) for cfg in configs]
    if args.dry_run:
        print(f"# plug-ins\n{slurm.describe_plugins(configs[0])}")
        print(f"# sbatch options ({len(configs)} run(s); logs in {logs})")
        slurm.submit(configs, options, logs, dry_run=True)
        if args.sweep:
            print(f"\n# {describe(plan)}")
        print(f"\n# resolved config{' of the first run' if args.sweep else ''}\n{to_yaml(configs[0])}", end="")
        return 0
    jobs = slurm.submit(configs, options, logs)
    ranks = f"{options.world_size} rank(s) on {options.nodes} node(s)"
    if args.sweep:
        array = jobs[0].job_id.split("_")[0]
        at_once = f"at most {options.array_parallelism} at once"
        print(f"submitted job array {array}: {len(jobs)} runs, {at_once}, {ranks} each")
        print(f"runs: {configs[0].out_dir}")
    else:
        print(f"submitted job {jobs[0].job_id}: {ranks}")
        print(f"run: {configs[0].run_dir}")
    print(f"logs: {logs}\nwatch: squeue --me; tensorboard --logdir {configs[0].out_dir}", flush=True)
    if args.wait:
        for job, summary in zip(jobs, slurm.wait(jobs), strict=True):
            steps = summary.get("steps", summary.get("sequential_steps"))  # SWAP runs count sequential steps
            print(f"job {job.job_id}: {summary['name']}: val acc {summary['val_acc']:.2%} after {steps} steps")
        print(f"done: {len(jobs)} job(s) finished")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from dist_train.sweep import describe, load_sweep, run_locally

    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    plan = load_sweep(args.sweep, tuple(args.overrides))
    print(describe(plan), flush=True)
    if args.dry_run:
        return 0
    failed = run_locally(plan, args.nproc_per_node)
    return 1 if failed else 0


def report(args: argparse.Namespace) -> int:
    from dist_train.report import write_report

    written = write_report(args.runs, args.out, args.x, args.y, plot=not args.no_plot)
    print(written["markdown"].read_text(), end="")
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0


def shard(args: argparse.Namespace) -> int:
    from dist_train.data.shard_writer import parse_size, source_config, write_shards

    manifest = write_shards(source_config(args.source, args.overrides), args.destination, parse_size(args.shard_size))
    counts = ", ".join(
        f"{name} {split['samples']} samples in {len(split['shards'])} shard(s)"
        for name, split in manifest["splits"].items()
    )
    print(f"wrote {args.destination}: {counts}")
    return 0


def noise_prediction(args: argparse.Namespace) -> int:
    from dist_train.batch_prediction import describe_prediction, parse_batches, read_measured

    batches = parse_batches(args.batch_sizes) if args.batch_sizes else None
    print(describe_prediction(read_measured(Path(args.run_dir)), batches))
    return 0


def list_recipes() -> int:
    from dist_train.named_configs import RECIPES, describe, recipe_names

    names = recipe_names()
    width = max(map(len, names), default=0)
    columns = max(shutil.get_terminal_size().columns, width + 40)
    for name in names:
        wrapped = textwrap.wrap(describe(name), columns - width - 2) or [""]
        print(f"{name:<{width}}  {wrapped[0]}", *(f"{'':<{width}}  {line}" for line in wrapped[1:]), sep="\n")
    print(f"({len(names)} recipes in {RECIPES.resolve()}; use one with --config NAME)")
    return 0


def unlock_runs(args: argparse.Namespace) -> int:
    from dist_train.rundir import clear_stale_lock

    for run_dir in map(Path, args.run_dirs):
        print(clear_stale_lock(run_dir) or f"{run_dir}: not locked")
    return 0


def launch_here(args: argparse.Namespace) -> NoReturn:
    """``train --nproc-per-node N``: become a one-machine torchrun of N ``dist-train train`` processes (through
    :mod:`dist_train.torchrun`, so that whatever fails ends in one line). The config was checked already."""
    from dist_train.local_launch import local_torchrun

    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if "LOCAL_RANK" in os.environ:
        raise ConfigError(
            "--nproc-per-node starts processes on this machine, but this is already one process of a job "
            "(LOCAL_RANK is set): leave the option out and let the launcher start them"
        )
    # torchrun's own default (one thread per process), set so that it does not print its 4-line notice.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = ["--config", args.config] if args.config else []
    command = local_torchrun(args.nproc_per_node, "-m", "dist_train", "train", *config, *args.overrides)
    sys.stdout.flush()
    os.execv(command[0], command)  # signals (timeout, Ctrl-C) now reach torchrun's agent itself


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may also come after options (``--nodes 2 optim.lr=0.1``)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = None
    try:
        if args.command == "submit":
            return submit(args)
        if args.command == "sweep":
            return run_sweep(args)
        if args.command == "report":
            return report(args)
        if args.command == "unlock":
            return unlock_runs(args)
        if args.command == "noise":
            return noise_prediction(args)
        if args.command == "recipes":
            return list_recipes()
        if args.command == "shard":
            return shard(args)
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            print(to_yaml(cfg), end="")
            return 0
        if args.command == "plan":
            print(describe_plan(cfg, args.train_size, args.noise_scale))
            return 0
        if args.nproc_per_node != 1:
            return launch_here(args)
        from dist_train.run import train  # heavy imports only when training

        train(cfg)
        return 0
    except BrokenPipeError:  # the reader left (``dist-train recipes | head``): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated as e:  # every rank stops at the same step; rank 0 says where
        if os.environ.get("RANK", "0") == "0":
            print(f"dist-train: {e}", file=sys.stderr, flush=True)
        return EXIT_STATUS
    except Exception as e:
        line = failure_line(e, cfg.dist.timeout_s if cfg else None)
        if line is None:
            raise
        return print_error(line)
    except KeyboardInterrupt:
        print(f"{rank_prefix()}dist-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
