"""Bad input end to end: one line per rank, a non-zero exit, nothing already written damaged."""

from __future__ import annotations

import gzip
import subprocess
import time

import numpy as np
import pytest
from conftest import TINY, run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "dist-train: error:" in line]


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str, ranks: int = 1) -> None:
    """Exit 1, exactly one error line per rank containing ``fragment``, and no traceback from our code."""
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == ranks, result.stderr[-3000:]
    assert all(fragment in line for line in lines), lines
    if ranks > 1:
        assert sorted(line.split("]")[0] for line in lines) == [f"[rank {r}" for r in range(ranks)]
    # Workers' uncaught exceptions print "[rankN]: Traceback"; torchrun's own report of the exit is fine.
    assert ("]: Traceback" if ranks > 1 else "Traceback") not in result.stderr


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model.name=resnet200"], "unknown model 'resnet200'; did you mean 'resnet20'"),
        (["optim.lr=abc"], "bad value for 'optim.lr'"),
        (["optim.lrr=0.1"], "did you mean 'optim.lr'"),
        (["data.dataset=cifar10", "data.root=/nonexistent/cifar"], "cifar10: directory not found: /nonexistent/cifar"),
        (["device=cuda"], "no CUDA device is available"),
        (["bn.ghost_batch_size=64"], "bn.ghost_batch_size=64 is larger than the per-process batch 32"),
    ],
)
def test_single_process_errors(tmp_path, overrides, fragment):
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", *overrides])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()  # failed before writing anything


def test_corrupt_dataset_file(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 10))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x03"))
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "data.dataset=mnist", f"data.root={root}"])
    assert_one_line_error(result, "t10k-images-idx3-ubyte.gz is truncated")


def test_batch_not_divisible_by_world_size_fails_on_every_rank(tmp_path):
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "data.batch_size=33"], nproc=2)
    assert_one_line_error(result, "data.batch_size=33 does not divide by world size 2", ranks=2)


def test_unreadable_checkpoint_fails_on_every_rank_and_is_left_alone(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    garbage = b"PK\x03\x04 half a zip file"
    (checkpoints / "last.pt").write_bytes(garbage)
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=run"], nproc=2)
    assert_one_line_error(result, f"cannot read checkpoint {checkpoints / 'last.pt'}", ranks=2)
    assert (checkpoints / "last.pt").read_bytes() == garbage
    assert [p.name for p in checkpoints.iterdir()] == ["last.pt"]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from conftest import assert_ok

    assert_ok(run_cli(["train", *TINY, "train.epochs=1", f"out_dir={tmp_path}", "name=a"]))
    source = tmp_path / "a" / "checkpoints" / "last.pt"
    before = source.read_bytes()
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=b", f"resume={source}", "model.width=16"])
    assert_one_line_error(result, f"checkpoint {source} was trained with another config (model.width: 8 → 16")
    told = ["on_config_change=continue"]  # the configs may differ, but the weights still do not fit
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", "name=b", f"resume={source}", "model.width=16", *told])
    mismatch = "shape mismatch: 0.weight (8, 3, 3, 3) vs (16, 3, 3, 3) here"
    assert_one_line_error(result, f"checkpoint {source} does not fit this run's model: {mismatch}")
    assert source.read_bytes() == before and not (tmp_path / "b" / "checkpoints").exists()


def test_failure_on_one_rank_ends_the_whole_job(tmp_path):
    """One undecodable JPEG lands on one rank: that rank reports it, the other does not hang."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for index in range(16):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    broken = root / "train" / "b" / "7.png"
    broken.write_bytes(b"\x89PNG not really")
    overrides = [
        "data.dataset=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.val_fraction=0",
        "data.batch_size=4",
        "model.width=4",
        "dist.timeout_s=60",
    ]
    started = time.monotonic()
    result = run_cli(["train", *TINY, f"out_dir={tmp_path}", *overrides], nproc=2, timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - started < 100
    lines = error_lines(result)
    decode = [line for line in lines if f"cannot decode image {broken}" in line]
    others = [line for line in lines if line not in decode]
    assert len(decode) == 1, result.stderr[-3000:]
    assert all("lost contact with the other processes of the job" in line for line in others), others
    assert "]: Traceback" not in result.stderr
