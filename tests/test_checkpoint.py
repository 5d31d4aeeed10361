"""Atomic checkpoint writes and safe, clearly failing loads."""

import os
import pickle

import pytest
import torch

from dist_train import checkpoint
from dist_train.errors import CheckpointError
from dist_train.resume import find_resume


def state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "optimizer": {}, "scheduler": {}, "epoch": 1, "step": 7}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    checkpoint.atomic_save(state(2.0), path)
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 2.0)) and loaded["step"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save(state(1.0), path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        checkpoint.atomic_save({**state(3.0), "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read checkpoint"),
        (b"not a checkpoint at all", "cannot read checkpoint"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    checkpoint.atomic_save(state(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="is not a dist_train checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pt")


class Arbitrary:
    """A class the safe unpickler must refuse to instantiate."""


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({**state(), "payload": Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(path)


def test_find_resume(tmp_path):
    assert find_resume("auto", tmp_path) is None
    checkpoint.atomic_save(state(), tmp_path / "last.pt")
    assert find_resume("auto", tmp_path) == tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="resume=never"):
        find_resume("never", tmp_path)
    assert find_resume("/x/y.pt", tmp_path).name == "y.pt"
