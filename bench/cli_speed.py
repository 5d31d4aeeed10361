"""How long the commands that should answer at once take: ``--help``, ``recipes``, ``plan``, ``submit --dry-run``.

    python bench/cli_speed.py                   # each command 5 times, each time a fresh process
    python bench/cli_speed.py --runs 9

Each run is ``python -m dist_train ...`` from the repository root, timed from start to exit (the interpreter's
start-up included); ``plan`` and ``submit --dry-run`` take configs/quickstart.yaml (synthetic data, nothing
to read) and the dry run writes nothing (its ``out_dir`` is a temporary folder; no SLURM needed). The median
of the runs is printed per command. Targets: ``--help`` under 0.5 s, ``plan`` under 2.5 s (on 2 CPU cores).
tests/test_cli_imports.py checks what each command imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"--help": 0.5, "plan": 2.5}
"""Seconds each command should take at most (the others have none)."""


def commands(out_dir: str) -> dict[str, list[str]]:
    """Each command's arguments, by the name it is printed under."""
    quickstart = ["--config", "configs/quickstart.yaml"]
    return {
        "--help": ["--help"],
        "recipes": ["recipes"],
        "plan": ["plan", *quickstart],
        "submit --dry-run": ["submit", *quickstart, "--dry-run", f"out_dir={out_dir}"],
    }


def seconds(args: list[str]) -> float:
    """Wall time of one ``python -m dist_train ARGS`` in a fresh process (it must succeed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dist_train", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dist-train {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (the median is printed)")
    args = parser.parse_args()
    print(f"dist-train commands, median of {args.runs} fresh processes, {os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory() as out_dir:
        for name, command in commands(f"{out_dir}/runs").items():
            median = statistics.median(seconds(command) for _ in range(args.runs))
            target = f"  (target < {TARGETS[name]:g} s)" if name in TARGETS else ""
            print(f"  {name:<17} {median:6.2f} s{target}")


if __name__ == "__main__":
    main()
