"""The command line: the console script, `config` and `plan`."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_ok, run_cli

pytestmark = pytest.mark.slow


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).parent / "dist-train"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert_ok(result)
    assert "train" in result.stdout and "plan" in result.stdout


def test_config_prints_the_resolved_config():
    result = run_cli(["config", "--config", "configs/quickstart.yaml", "optim.lr=0.3"])
    assert_ok(result)
    resolved = yaml.safe_load(result.stdout)
    assert resolved["optim"]["lr"] == 0.3 and resolved["name"] == "quickstart" and resolved["model"]["name"] == "c1"


def test_plan_shows_scaled_lr_and_adapted_regime():
    overrides = ["data.batch_size=512", "regime.reference_batch_size=128", "regime.lr_rule=sqrt", "regime.adapt=true"]
    result = run_cli(["plan", "--config", "configs/quickstart.yaml", *overrides])
    assert_ok(result)
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "0.2000" in lines["lr (rule sqrt)"] and "0.4000" in lines["lr (rule sqrt)"]  # × sqrt(4)
    assert lines["epochs"].split()[1:3] == ["6", "24"]  # × 4 with regime adaptation
    assert "total updates" in result.stdout and "4096 training images" in result.stdout
    assert (REPO / "configs" / "quickstart.yaml").is_file()


def test_plan_rejects_a_rule_without_reference():
    result = run_cli(["plan", "--config", "configs/quickstart.yaml", "regime.lr_rule=sqrt"])
    assert result.returncode == 1 and "regime.reference_batch_size" in result.stderr


def plan_header(result) -> str:
    assert_ok(result)
    return result.stdout.splitlines()[0]


def test_plan_of_a_recipe_needs_no_data(tmp_path):
    """A standard set that is not on disk is planned with its published size; nothing is read or written."""
    result = run_cli(["plan", "--config", "configs/cifar10_resnet44_lb_lr_gbn_ra.yaml", f"data.root={tmp_path}/none"])
    assert "(50000 training images: the published size of the CIFAR-10 training set)" in plan_header(result)
    assert "total updates" in result.stdout and not (tmp_path / "none").exists()


def test_plan_counts_idx_and_imagefolder_sets_without_decoding_them(tmp_path):
    """Only IDX headers and file lists are read: files whose pixels are missing or undecodable still count."""
    idx = tmp_path / "mnist"
    idx.mkdir()
    header = (2051).to_bytes(4, "big") + (1000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (idx / "t10k-images-idx3-ubyte").write_bytes(header)  # no pixels: training would refuse it
    (idx / "t10k-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (1000).to_bytes(4, "big"))
    result = run_cli(["plan", "--config", "configs/mnist_f1.yaml", f"data.root={idx}", "data.val_fraction=0.2"])
    assert "(800 training images: counted from the IDX header" in plan_header(result)

    for label in ("a", "b"):
        (tmp_path / "folder" / "train" / label).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "folder" / "train" / label / f"{i}.jpg").write_bytes(b"not a jpeg")
    folder = [
        "data.dataset=imagefolder",
        f"data.root={tmp_path / 'folder'}",
        "data.val_fraction=0.2",
        "data.batch_size=4",
    ]
    result = run_cli(["plan", "--config", "configs/quickstart.yaml", *folder])
    assert "(8 training images: counted from the file list of" in plan_header(result)


def test_plan_without_a_known_size_asks_for_train_size():
    result = run_cli(["plan", "--config", "configs/imagenet_resnet50.yaml", "data.root=/no/such/imagenet"])
    assert result.returncode == 1 and "--train-size N" in result.stderr
    result = run_cli(["plan", "--config", "configs/imagenet_resnet50.yaml", "--train-size", "1281167"])
    assert "(1281167 training images: given with --train-size)" in plan_header(result)
    assert "steps/epoch" in result.stdout


def test_recipes_lists_whole_first_sentences_and_survives_a_closed_pipe():
    from dist_train.named_configs import describe

    assert describe("cifar10_resnet20") == "CIFAR-10 ResNet-20 (He et al. 2016 recipe)."
    assert describe("cifar100_wrn16_4").endswith("160 epochs is our choice.")  # "et al." does not end it
    closed = f"{sys.executable} -m dist_train recipes | true"  # the reader is gone before the first write
    result = subprocess.run(["bash", "-c", closed], capture_output=True, text=True, timeout=60)
    assert result.stderr == "", result.stderr


def test_the_start_line_counts_parameters_and_epochs_in_words():
    from dist_train.dashboard import count, plural

    assert [count(n) for n in (512, 23_416, 1_460_000, 25_557_032)] == ["512", "23.4k", "1.46M", "25.6M"]
    assert plural(1, "epoch") == "1 epoch" and plural(20, "step") == "20 steps"
