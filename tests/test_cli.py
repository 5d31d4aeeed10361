"""The command line: the console script, `config` and `plan`."""

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, assert_ok, run_cli


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
