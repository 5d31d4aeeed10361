"""Dataset readers, splits and transforms on small files written in the real formats."""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from dist_train.config import DataConfig
from dist_train.data import DatasetSplits, ImageArrays, TensorImageDataset, build_datasets, split
from dist_train.data.synthetic import make_synthetic
from dist_train.data.transforms import build_transform
from dist_train.errors import DataError

REAL_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-t10k"


def unique_images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 images whose first two pixels encode their index (so they are all distinct)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)
    flat = images.reshape(count, -1)
    flat[:, 0] = np.arange(count) % 256
    flat[:, 1] = np.arange(count) // 256
    return images


def image_ids(images: torch.Tensor) -> set[int]:
    flat = images.reshape(len(images), -1).to(torch.int64)
    return set((flat[:, 0] + 256 * flat[:, 1]).tolist())


def assert_data_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# --- CIFAR -----------------------------------------------------------------------------------------


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    batch = {
        b"batch_label": b"test",
        b"data": images.reshape(len(images), -1),
        label_key: labels,
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n, name in enumerate(names):
        images = unique_images(20, (3, 32, 32), seed=n)
        write_cifar_batch(folder / name, images, [(i + n) % 10 for i in range(20)], b"labels")
    return folder


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", unique_images(50, (3, 32, 32)), [i * 2 for i in range(50)], b"fine_labels")
    write_cifar_batch(folder / "test", unique_images(10, (3, 32, 32), 1), list(range(90, 100)), b"fine_labels")
    return folder


def check_splits(splits: DatasetSplits, n_train: int, n_val: int, classes: int, channels: int, size: int) -> None:
    assert (len(splits.train), len(splits.val)) == (n_train, n_val)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (classes, channels, size)
    for dataset in (splits.train, splits.val):
        image, label = dataset[0]
        assert image.dtype == torch.float32 and image.shape == (channels, size, size)
        assert isinstance(label, int) and 0 <= label < classes


def test_cifar10_reads_folder_or_parent(cifar10_dir: Path) -> None:
    for root in (cifar10_dir, cifar10_dir.parent):
        splits = build_datasets(DataConfig(dataset="cifar10", root=str(root)))
        check_splits(splits, 100, 20, 10, 3, 32)
    labels = splits.train.arrays.labels
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    # The validation transform is ToDtype + Normalize only: pixels are recoverable exactly.
    raw = unique_images(20, (3, 32, 32), seed=5)[3]
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    expected = (torch.from_numpy(raw).float() / 255 - mean) / std
    image, label = splits.val[3]
    assert torch.allclose(image, expected, atol=1e-5) and label == (3 + 5) % 10


def test_cifar100(cifar100_dir: Path) -> None:
    splits = build_datasets(DataConfig(dataset="cifar100", root=str(cifar100_dir.parent)))
    check_splits(splits, 50, 10, 100, 3, 32)
    assert splits.val.arrays.labels.tolist() == list(range(90, 100))


def test_cifar_errors(cifar10_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path / "nowhere")))
    assert_data_error(e, "cifar10", "nowhere", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(empty)))
    assert_data_error(e, "cifar10", str(empty))

    (cifar10_dir / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(cifar10_dir)))
    assert_data_error(e, "cifar10", "missing file", str(cifar10_dir / "data_batch_3"))

    write_cifar_batch(cifar10_dir / "data_batch_3", unique_images(20, (3, 32, 32)), [0] * 20, b"labels")
    test_batch = cifar10_dir / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:1000])
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(cifar10_dir)))
    assert_data_error(e, "cifar10", str(test_batch), "truncated")

    write_cifar_batch(test_batch, unique_images(20, (3, 32, 32)), [0] * 19, b"labels")
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(cifar10_dir)))
    assert_data_error(e, str(test_batch), "20 images but 19 labels")

    write_cifar_batch(test_batch, unique_images(20, (3, 32, 32)), [10] * 20, b"labels")
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="cifar10", root=str(cifar10_dir)))
    assert_data_error(e, str(test_batch), "labels outside 0..9")


# --- MNIST -----------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> Path:
    data = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist(folder: Path, prefix: str, count: int, compress: bool, seed: int = 0) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = write_idx(folder / f"{prefix}-images-idx3-ubyte", unique_images(count, (28, 28), seed), 2051, compress)
    labels = write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, 2049, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_both_pairs(tmp_path: Path, compress: bool) -> None:
    write_mnist(tmp_path, "train", 60, compress)
    write_mnist(tmp_path, "t10k", 30, compress, seed=1)
    splits = build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    check_splits(splits, 60, 30, 10, 1, 28)
    assert splits.train.arrays.images.dtype == torch.uint8
    assert splits.val.arrays.labels.tolist() == [i % 10 for i in range(30)]
    # No augmentation for MNIST: a training item is the same every time.
    assert torch.equal(splits.train[7][0], splits.train[7][0])


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_single_pair_is_split(tmp_path: Path, compress: bool) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", "t10k", 100, compress)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), val_fraction=0.2, split_seed=0)
    first, again = build_datasets(cfg), build_datasets(cfg)
    check_splits(first, 80, 20, 10, 1, 28)
    train_ids, val_ids = image_ids(first.train.arrays.images), image_ids(first.val.arrays.images)
    assert not train_ids & val_ids and train_ids | val_ids == set(range(100))
    assert torch.equal(first.val.arrays.images, again.val.arrays.images)
    assert torch.equal(first.train.arrays.labels, again.train.arrays.labels)
    other = build_datasets(replace(cfg, split_seed=1))
    assert image_ids(other.val.arrays.images) != val_ids


def test_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path / "absent")))
    assert_data_error(e, "mnist", "absent", "not found")
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, "mnist", str(tmp_path), "no IDX files")

    images, labels = write_mnist(tmp_path, "t10k", 20, compress=False)
    labels.unlink()
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, "missing file", "t10k-labels-idx1-ubyte")

    images, labels = write_mnist(tmp_path, "t10k", 20, compress=False)
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, str(images), "truncated")

    write_idx(images, unique_images(20, (28, 28)), 2049, compress=False)
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, str(images), "magic number 2049, expected 2051")

    write_idx(images, unique_images(21, (28, 28)), 2051, compress=False)
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, str(images), "21 images", "20 labels")


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    images, _ = write_mnist(tmp_path, "t10k", 20, compress=True)
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert_data_error(e, str(images), "corrupt")


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="real MNIST t10k not available")
def test_real_mnist_t10k() -> None:
    cfg = DataConfig(dataset="mnist", root=str(REAL_MNIST), val_fraction=0.2, split_seed=0)
    splits = build_datasets(cfg)
    check_splits(splits, 8000, 2000, 10, 1, 28)
    labels = torch.cat([splits.train.arrays.labels, splits.val.arrays.labels])
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again = build_datasets(cfg)
    assert torch.equal(splits.val.arrays.images, again.val.arrays.images)


# --- Fashion-MNIST ---------------------------------------------------------------------------------


def test_fashion_mnist_real_files(fashion_mnist: Path) -> None:
    """The installed Fashion-MNIST with the default root: its real 60,000 / 10,000 split and class names."""
    cfg = DataConfig(dataset="fashion_mnist")
    assert cfg.root == str(fashion_mnist)  # the default root
    splits = build_datasets(cfg)
    check_splits(splits, 60_000, 10_000, 10, 1, 28)
    assert torch.bincount(splits.train.arrays.labels).tolist() == [6000] * 10
    assert torch.bincount(splits.val.arrays.labels).tolist() == [1000] * 10  # the test set, not carved
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.train.classes == splits.class_names and splits.class_name(8) == "Bag"
    # The mean pixel is Fashion-MNIST's (0.2860), which the normalisation uses.
    assert splits.train.arrays.images.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-3)
    image, _ = splits.val[0]
    assert abs(image.mean().item()) < 0.5


def test_fashion_mnist_subset_is_seeded(fashion_mnist: Path) -> None:
    cfg = DataConfig(dataset="fashion_mnist", train_subset=1000)
    first, again = build_datasets(cfg), build_datasets(cfg)
    check_splits(first, 1000, 10_000, 10, 1, 28)
    assert torch.equal(first.train.arrays.images, again.train.arrays.images)
    other = build_datasets(replace(cfg, split_seed=1))
    assert not torch.equal(first.train.arrays.labels, other.train.arrays.labels)
    assert len(image_ids_of(first.train.arrays.images)) == 1000  # distinct images


def image_ids_of(images: torch.Tensor) -> set[bytes]:
    return {bytes(image.flatten().tolist()) for image in images}


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path: Path) -> None:
    install = "apt-get install -y dataset-fashion-mnist"
    absent = tmp_path / "absent"
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="fashion_mnist", root=str(absent)))
    assert_data_error(e, "fashion_mnist", "directory not found", str(absent), install, "data.download=true")
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert_data_error(e, "fashion_mnist", "no IDX files", str(tmp_path), install)
    # Only the test pair: the real split needs both; the test set is never carved into train/val.
    write_mnist(tmp_path, "t10k", 30, compress=True)
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert_data_error(e, "fashion_mnist", "no train pair", "train-images-idx3-ubyte", install)
    write_mnist(tmp_path / "FashionMNIST" / "raw", "train", 40, compress=False)  # torchvision's layout
    write_mnist(tmp_path / "FashionMNIST" / "raw", "t10k", 20, compress=False)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    check_splits(build_datasets(DataConfig(dataset="fashion_mnist", root=str(tmp_path))), 40, 20, 10, 1, 28)


@pytest.mark.slow
def test_fashion_mnist_missing_is_one_line_from_the_cli(tmp_path: Path) -> None:
    result = run_cli(["train", "--config", "configs/fashion_mnist_f1_sb.yaml", f"data.root={tmp_path / 'none'}"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"dist-train: error: fashion_mnist: directory not found: {tmp_path / 'none'} "
        "(install it: apt-get install -y dataset-fashion-mnist; or set data.download=true)"
    )


# --- ImageFolder -----------------------------------------------------------------------------------


def write_tree(split_dir: Path, per_class: int, classes: tuple[str, ...] = ("cat", "ant", "bee")) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        (split_dir / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = 40 + 3 * i, 50 - 2 * i
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            suffix = [".jpg", ".png", ".jpeg", ".PNG"][i % 4]
            Image.fromarray(pixels).save(split_dir / name / f"img{i}{suffix}")
    (split_dir / classes[0] / "notes.txt").write_text("not an image")


def test_imagefolder_split_from_train(tmp_path: Path) -> None:
    write_tree(tmp_path / "train", per_class=5)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=24, val_fraction=0.2)
    splits = build_datasets(cfg)
    check_splits(splits, 12, 3, 3, 3, 24)
    train_files = {p for p, _ in splits.train.samples}
    val_files = {p for p, _ in splits.val.samples}
    assert not train_files & val_files and len(train_files | val_files) == 15
    assert val_files == {p for p, _ in build_datasets(cfg).val.samples}
    # Sorted class names: ant=0, bee=1, cat=2.
    assert all(Path(p).parent.name == ["ant", "bee", "cat"][label] for p, label in splits.train.samples)


def test_imagefolder_with_val(tmp_path: Path) -> None:
    write_tree(tmp_path / "train", per_class=4)
    write_tree(tmp_path / "val", per_class=2, classes=("bee", "cat"))
    splits = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=16, augment=False))
    check_splits(splits, 12, 4, 3, 3, 16)
    assert sorted({label for _, label in splits.val.samples}) == [1, 2]
    assert torch.equal(splits.train[0][0], splits.train[0][0])


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "absent")))
    assert_data_error(e, "imagefolder", "absent")
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert_data_error(e, str(tmp_path), "train/")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert_data_error(e, "no class folders", str(tmp_path / "train"))

    write_tree(tmp_path / "train", per_class=3)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert_data_error(e, str(tmp_path / "train" / "dog"), "no")
    (tmp_path / "train" / "dog").rmdir()

    write_tree(tmp_path / "val", per_class=1, classes=("cat", "eel"))
    with pytest.raises(DataError) as e:
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert_data_error(e, str(tmp_path / "val"), "eel")


def test_imagefolder_corrupt_image_fails_when_loaded(tmp_path: Path) -> None:
    write_tree(tmp_path / "train", per_class=2)
    write_tree(tmp_path / "val", per_class=1)
    bad = tmp_path / "val" / "ant" / "img0.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    splits = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=16))
    index = next(i for i, (path, _) in enumerate(splits.val.samples) if path == str(bad))
    with pytest.raises(DataError) as e:
        splits.val[index]
    assert_data_error(e, "imagefolder", str(bad))
    garbage = tmp_path / "val" / "bee" / "img0.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    index = next(i for i, (path, _) in enumerate(splits.val.samples) if path == str(garbage))
    with pytest.raises(DataError) as e:
        splits.val[index]
    assert_data_error(e, str(garbage))


# --- synthetic, splits, transforms -----------------------------------------------------------------


def test_synthetic_deterministic_and_learnable() -> None:
    cfg = DataConfig(synthetic_train_size=2000, synthetic_val_size=500, synthetic_classes=10, split_seed=3)
    start = time.perf_counter()
    train, val = make_synthetic(cfg)
    assert time.perf_counter() - start < 5.0
    assert train.images.shape == (2000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert val.images.shape == (500, 3, 32, 32) and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [200] * 10
    same_train, same_val = make_synthetic(cfg)
    assert torch.equal(train.images, same_train.images) and torch.equal(val.labels, same_val.labels)
    other, _ = make_synthetic(replace(cfg, split_seed=4))
    assert not torch.equal(train.images, other.images)

    def nearest_mean_accuracy(features_train: torch.Tensor, features_val: torch.Tensor) -> float:
        means = torch.stack([features_train[train.labels == k].mean(0) for k in range(10)])
        return (torch.cdist(features_val, means).argmin(1) == val.labels).float().mean().item()

    pixels = nearest_mean_accuracy(train.images.flatten(1).float(), val.images.flatten(1).float())
    colour = nearest_mean_accuracy(train.images.float().mean((2, 3)), val.images.float().mean((2, 3)))
    assert pixels > 0.2 and colour < 0.5, (pixels, colour)


def test_synthetic_datasets() -> None:
    cfg = DataConfig(image_size=16, synthetic_train_size=64, synthetic_val_size=32, synthetic_classes=4)
    splits = build_datasets(cfg)
    check_splits(splits, 64, 32, 4, 3, 16)
    assert {splits.val[i][1] for i in range(32)} == set(range(4))


def test_split_is_seeded_and_disjoint() -> None:
    arrays = ImageArrays(torch.from_numpy(unique_images(50, (1, 2, 2))), torch.arange(50) % 5)
    train, val = split(arrays, 0.2, seed=0)
    assert (len(train), len(val)) == (40, 10)
    assert image_ids(train.images) | image_ids(val.images) == set(range(50))
    assert not image_ids(train.images) & image_ids(val.images)
    assert torch.equal(split(arrays, 0.2, seed=0)[1].images, val.images)
    assert not torch.equal(split(arrays, 0.2, seed=1)[1].images, val.images)
    assert len(split(arrays, 0.0, seed=0)[1]) == 0


def test_transforms_augment_only_when_asked() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    augmented = build_transform("cifar10", 32, train=True, augment=True)
    outputs = [augmented(image) for _ in range(8)]
    assert any(not torch.equal(outputs[0], out) for out in outputs[1:])
    plain = build_transform("cifar10", 32, train=True, augment=False)
    assert torch.equal(plain(image), build_transform("cifar10", 32, train=False)(image))
    big = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    for train in (True, False):
        out = build_transform("imagefolder", 24, train=train)(big)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    dataset = TensorImageDataset(ImageArrays(image[None], torch.tensor([3])), plain)
    assert dataset[0][1] == 3 and dataset[0][0].dtype == torch.float32
