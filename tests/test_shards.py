"""Tar shards (``dist-train shard``, ``data.dataset=webdataset``): the files DALI and wds2idx read, the same
batches as the in-memory path, exact resume on 2 ranks with both backends, one line per bad shard."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    TINY,
    assert_ok,
    kill_process_group,
    load_weights,
    read_metrics,
    run_cli,
    subprocess_env,
    torchrun_cmd,
)
from PIL import Image
from test_errors import error_lines

from dist_train.config import DataConfig
from dist_train.data import build_datasets
from dist_train.data.loader import LoaderOptions, build_train_loader
from dist_train.data.shard_writer import ShardWriter, write_atomically, write_shards
from dist_train.data.shards import MANIFEST
from dist_train.errors import DataError

DIST_TRAIN = str(Path(sys.executable).parent / "dist-train")


def image_tree(root: Path, count: int = 24) -> Path:
    """An ImageFolder of JPEGs and PNGs of varying sizes, 2 classes, with a val/ split."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", 6)):
        for i in range(n):
            folder = root / split / ("cat" if i % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (18 + i % 5, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return root


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tree_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder sharded by the command line, 4 shards of training samples."""
    base = tmp_path_factory.mktemp("sharded")
    root, out = image_tree(base / "tree"), base / "shards"
    result = subprocess.run(
        [DIST_TRAIN, "shard", str(root), str(out), "--shard-size", "6KB"], capture_output=True, text=True, cwd=REPO
    )
    assert_ok(result)
    assert "wrote" in result.stdout and "train 24 samples in" in result.stdout
    return out


@pytest.mark.slow
def test_shards_are_webdataset_tars_that_dali_and_wds2idx_read(tree_shards: Path, tmp_path: Path) -> None:
    """The index is byte for byte wds2idx's; members have fixed metadata; DALI's own webdataset reader takes the
    shards and indices; a second run gives the same bytes."""
    manifest = json.loads((tree_shards / MANIFEST).read_text())
    assert manifest["classes"] == ["cat", "dog"] and manifest["splits"]["val"]["samples"] == 6
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 2 and sum(s["samples"] for s in shards) == 24
    for shard in shards:
        tar = tree_shards / shard["tar"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"]
        subprocess.run(
            [sys.executable, "-m", "wds2idx", str(tar), str(tmp_path / "x.idx")], check=True, capture_output=True
        )
        assert (tmp_path / "x.idx").read_bytes() == (tree_shards / shard["index"]).read_bytes()
        with tarfile.open(tar) as archive:
            members = archive.getmembers()
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
        assert [m.name.split(".")[1] for m in members][1::2] == ["cls"] * shard["samples"]
    # DALI's own reader: the same images and labels, in order, from our indices.
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=24, num_threads=1, device_id=None)
    def read() -> tuple:
        images, labels = fn.readers.webdataset(
            paths=[str(tree_shards / s["tar"]) for s in shards],
            index_paths=[str(tree_shards / s["index"]) for s in shards],
            ext=["jpg;png", "cls"],
        )
        return images, labels

    pipe = read()
    pipe.build()
    images, labels = pipe.run()
    data = build_datasets(DataConfig(dataset="webdataset", root=str(tree_shards)))
    for i in range(24):
        encoded, label = data.train.encoded(i)
        assert np.array_equal(images.at(i), encoded) and int(labels.at(i).tobytes()) == label
    # A second run: the same bytes.
    again = tmp_path / "again"
    write_shards(DataConfig(dataset="imagefolder", root=str(tree_shards.parent / "tree")), again, 6000)
    assert digests(again) == digests(tree_shards)


@pytest.mark.slow
def test_an_interrupted_run_leaves_no_half_shard(tmp_path: Path) -> None:
    """SIGKILL while shards are being written: every file under a shard's name is complete, there is no
    manifest (the directory is not a data set yet); a new run finishes and clears the leftovers."""
    out = tmp_path / "out"
    args = [DIST_TRAIN, "shard", "synthetic", str(out), "--shard-size", "50KB", "data.synthetic_train_size=6000"]
    process = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.idx"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / MANIFEST).exists()
    tars = sorted(out.glob("*.tar"))
    assert tars
    for tar in tars:
        with tarfile.open(tar) as archive:
            assert len(archive.getmembers()) % 2 == 0
        assert tar.read_bytes()[-1024:] == bytes(1024)  # the end blocks: written whole
    with pytest.raises(DataError, match=f"no {MANIFEST} in {out}"):
        build_datasets(DataConfig(dataset="webdataset", root=str(out)))
    result = subprocess.run([*args[:-1], "data.synthetic_train_size=300"], env=subprocess_env(), capture_output=True)
    assert_ok(result)
    assert (
        not list(out.glob(".*.tmp"))
        and len(build_datasets(DataConfig(dataset="webdataset", root=str(out))).train) == 300
    )


@pytest.mark.slow
def test_fashion_mnist_shards_give_the_in_memory_batches(tmp_path: Path, fashion_mnist: Path) -> None:
    """The torch loader over Fashion-MNIST shards yields the in-memory path's labels and pixels, batch for batch,
    on both ranks of 2, per epoch and across epochs."""
    subset = ["data.dataset=fashion_mnist", f"data.root={fashion_mnist}", "data.train_subset=300"]
    result = subprocess.run([DIST_TRAIN, "shard", "fashion_mnist", str(tmp_path), *subset[1:]], capture_output=True)
    assert_ok(result)
    shards = build_datasets(DataConfig(dataset="webdataset", root=str(tmp_path)))
    memory = build_datasets(DataConfig(dataset="fashion_mnist", root=str(fashion_mnist), train_subset=300))
    assert (shards.in_channels, shards.image_size, shards.class_names) == (1, 28, memory.class_names)
    for rank in (0, 1):
        for across in (False, True):
            options = LoaderOptions(16, rank=rank, world_size=2, seed=5, workers=1, across_epochs=across)
            loaders = [build_train_loader(data.train, options) for data in (shards, memory)]
            for epoch in (0, 1):
                for (x, y), (u, v) in zip(*(loader.epoch(epoch) for loader in loaders), strict=True):
                    assert torch.equal(y, v) and torch.equal(x, u)
    for i in (0, 4321, 9999):
        assert torch.equal(shards.val[i][0], memory.val[i][0]) and shards.val[i][1] == memory.val[i][1]


@pytest.mark.slow
def test_each_rank_reads_only_its_samples(tree_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank reads exactly the samples of its micro-batches; a resumed epoch reads none of those before it."""
    from dist_train.data.shards import ShardReader

    reads: list[int] = []
    read = ShardReader.read
    monkeypatch.setattr(ShardReader, "read", lambda self, i: reads.append(i) or read(self, i))
    data = build_datasets(DataConfig(dataset="webdataset", root=str(tree_shards), image_size=8))
    seen = []
    for rank in (0, 1):
        loader = build_train_loader(data.train, LoaderOptions(3, rank=rank, world_size=2, seed=1))
        reads.clear()
        list(loader.epoch(2, start=1))
        batches = loader.order.micro_batches(2)
        assert reads == [i for batch in batches[1:] for i in batch]
        seen += [i for batch in batches for i in batch]
    assert sorted(seen) == list(range(24))


# --- bad shards ------------------------------------------------------------------------------------


def small_shards(folder: Path, damage: str = "") -> Path:
    """Two train shards of 4 greyscale PNG samples and one val shard, written by ShardWriter; ``damage`` makes
    sample 2 of the second train shard (key 00000006) lack its label or its image bytes garbage."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, shards in (("train", 2), ("val", 1)):
        entries = []
        for s in range(shards):
            writer = ShardWriter(folder, f"{split}-{s:06d}")
            for i in range(4):
                out = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
                buffer = io.BytesIO()
                out.save(buffer, format="PNG")
                members = [("png", buffer.getvalue()), ("cls", str(i % 2).encode())]
                if split == "train" and s == 1 and i == 2:
                    members = members[:1] if damage == "no label" else members
                    members[0] = ("png", b"\x89PNG not an image") if damage == "garbage" else members[0]
                writer.add(f"{s * 4 + i:08d}", members)
            entries.append(writer.close())
        splits[split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    manifest = {"source": "fashion_mnist", "classes": ["a", "b"], "channels": 1, "image_size": 8, "splits": splits}
    write_atomically(folder / MANIFEST, [json.dumps(manifest).encode()])
    return folder


def truncate(folder: Path) -> None:
    tar = folder / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])


def stale_index(folder: Path) -> None:
    shutil.copy(folder / "train-000000.idx", folder / "train-000001.idx")


def disagree(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["splits"]["train"]["samples"] = 9
    (folder / MANIFEST).write_text(json.dumps(manifest))


def bad_label(folder: Path) -> None:
    tar = folder / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    line = (folder / "train-000001.idx").read_text().splitlines()[3].split()
    data[int(line[5])] = ord("7")  # sample 00000006's label: class 7 of 2
    tar.write_bytes(bytes(data))


DAMAGE = {
    "truncated tar": (truncate, "shard {0}/train-000001.tar is truncated", "sample {0}/train-000001.tar:00000006.png"),
    "missing index": (lambda f: (f / "train-000001.idx").unlink(), "index {0}/train-000001.idx of shard", "missing"),
    "stale index": (stale_index, "index {0}/train-000001.idx is stale", "train-000001.tar"),
    "manifest disagrees": (disagree, "counts 9 train samples but its shards hold 8", "manifest disagrees"),
    "no label": (None, "{0}/train-000001.tar sample 00000006 has no label", ".cls"),
    "label out of range": (bad_label, "{0}/train-000001.tar:00000006.cls: label 7 is outside the 2 classes", ""),
    "garbage": (None, "cannot decode image {0}/train-000001.tar:00000006.png", ""),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_bad_shards_give_one_line_naming_shard_and_sample(tmp_path: Path, kind: str) -> None:
    spoil, *fragments = DAMAGE[kind]
    folder = small_shards(tmp_path / "s", kind if spoil is None else "")
    if spoil is not None:
        spoil(folder)
    with pytest.raises(DataError) as error:
        data = build_datasets(DataConfig(dataset="webdataset", root=str(folder)))
        [data.train[i] for i in range(len(data.train))]
    message = str(error.value)
    assert "\n" not in message and message.startswith("webdataset: ")
    for fragment in fragments:
        assert fragment.format(folder) in message, message


@pytest.mark.slow
def test_dali_names_the_undecodable_sample(tmp_path: Path, dali: None) -> None:
    from dist_train.data.dali import DaliEvalLoader, DaliTrainLoader
    from dist_train.data.transforms import recipe_for

    cfg = DataConfig(dataset="webdataset", root=str(small_shards(tmp_path, "garbage")))
    data = build_datasets(cfg)
    loader = DaliTrainLoader(data.train, recipe_for(cfg), data.image_size, LoaderOptions(4, seed=0))
    with pytest.raises(DataError, match=f"cannot decode image {tmp_path}/train-000001.tar:00000006.png"):
        list(loader.epoch(0))
    assert len(list(DaliEvalLoader(data.val, recipe_for(cfg), data.image_size, 2))) == 2  # the val shard is sound


# --- training on 2 ranks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_shards(DataConfig(synthetic_train_size=1024, synthetic_val_size=64), out, 400_000)
    return out


def run_until_mid_epoch_checkpoint(args: list[str], run_dir: Path) -> None:
    """Start the 2-rank run, SIGKILL it once it has written a checkpoint inside an epoch."""
    command = [*torchrun_cmd(2), "-m", "dist_train", *args]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    kill_process_group(process)
    progress = torch.load(last, weights_only=True)["epoch_progress"]
    assert progress is not None and progress["steps"] > 0
    assert_ok(run_cli(["unlock", str(run_dir)]))  # the killed run could not release its lock


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_two_ranks_resume_exactly(
    tmp_path: Path, synthetic_shards: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """2 ranks train from the shards; a run killed after a mid-epoch checkpoint and run again ends with the
    weights of the run never stopped."""
    if backend == "dali":
        request.getfixturevalue("dali")
    args = [
        "train",
        *TINY,
        "data.dataset=webdataset",
        f"data.root={synthetic_shards}",
        f"data.backend={backend}",
        "train.epochs=1",
        "checkpoint.every_steps=5",
        f"out_dir={tmp_path}",
    ]
    assert_ok(run_cli([*args, "name=straight"], nproc=2))
    run_until_mid_epoch_checkpoint([*args, "name=cut"], tmp_path / "cut")
    assert_ok(run_cli([*args, "name=cut"], nproc=2))
    starts = [r for r in read_metrics(tmp_path / "cut") if r.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"]
    straight, cut = load_weights(tmp_path / "straight"), load_weights(tmp_path / "cut")
    assert all(torch.equal(straight[k], cut[k]) for k in straight)


@pytest.mark.slow
def test_a_corrupt_sample_on_one_rank_stops_every_rank(tmp_path: Path, synthetic_shards: Path) -> None:
    """A sample that cannot be decoded, read by one rank in the second epoch: that rank names it, the other
    stops too (no hang); the checkpoint and records of the first epoch are left as they were."""
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    args = [
        "train",
        *TINY,
        "data.dataset=webdataset",
        f"data.root={shards}",
        "dist.timeout_s=60",
        f"out_dir={tmp_path}",
        "name=run",
    ]
    assert_ok(run_cli([*args, "train.epochs=1"], nproc=2))
    run_dir = tmp_path / "run"
    checkpoint, records = (run_dir / "checkpoints" / "last.pt").read_bytes(), (run_dir / "metrics.jsonl").read_text()
    line = (shards / "train-000000.idx").read_text().splitlines()[6].split()  # sample 00000005
    tar = shards / "train-000000.tar"
    data = bytearray(tar.read_bytes())
    data[int(line[1]) : int(line[1]) + 16] = b"\0" * 16  # PNG signature gone: same size, the index still fits
    tar.write_bytes(bytes(data))
    started = time.monotonic()
    result = run_cli([*args, "train.epochs=2", "on_config_change=continue"], nproc=2, timeout=150)
    assert result.returncode != 0 and time.monotonic() - started < 120
    lines = error_lines(result)
    named = [x for x in lines if f"cannot decode image {tar}:00000005.png" in x]
    assert len(named) == 1, result.stderr[-3000:]
    assert all("lost contact with the other processes" in x for x in lines if x not in named), lines
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == checkpoint
    assert (run_dir / "metrics.jsonl").read_text().startswith(records)
    assert not list(run_dir.rglob("*.tmp"))
