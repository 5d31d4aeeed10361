"""Command line: ``dist-train train|config --config FILE [key=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys

from dist_train.config import Config, load_config, to_yaml
from dist_train.errors import DistTrainError, one_line


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
    return parser


def _rank_prefix() -> str:
    world = os.environ.get("WORLD_SIZE")
    return f"[rank {os.environ.get('RANK', '0')}] " if world and world != "1" else ""


def describe_plan(cfg: Config) -> str:
    """The plan table for ``cfg`` (reads the dataset to count its training images)."""
    from dist_train.data import build_datasets
    from dist_train.regime import format_plan, plan_from_config

    train_size = len(build_datasets(cfg.data).train)
    header = f"{cfg.name}: {cfg.model.name} on {cfg.data.dataset} ({train_size} training images)"
    ghost = f"ghost batch {cfg.bn.ghost_batch_size}" if cfg.bn.ghost_batch_size else "plain BatchNorm"
    return f"{header}\n{format_plan(plan_from_config(cfg, train_size))}\nbatch norm: {ghost}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            print(to_yaml(cfg), end="")
            return 0
        if args.command == "plan":
            print(describe_plan(cfg))
            return 0
        from dist_train.run import train  # heavy imports only when training

        train(cfg)
        return 0
    except DistTrainError as e:
        # One write per line, so the lines of several ranks never interleave.
        os.write(2, f"{_rank_prefix()}dist-train: error: {one_line(e)}\n".encode())
        return 1
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}dist-train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
