"""bench/gpu_suite.py in its smallest form on the CPU, so that the suite a GPU will run cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "bench" / "gpu_suite.py")
gpu_suite = importlib.util.module_from_spec(spec)
sys.modules["gpu_suite"] = gpu_suite  # dataclasses look their module up there
spec.loader.exec_module(gpu_suite)
SECTIONS = gpu_suite.SECTIONS

MUST_RUN_ON_CPU = ("environment", "sync_check", "trainer_eager", "gbn")


def test_smallest_suite_writes_every_section(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/gpu_suite.py", "--smallest", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["mode"] == "smallest" and report["device"] == "cpu"
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        status = section["status"]
        assert status == "ok" or status.startswith(("skipped: ", "not run: ", "failed: ")), (name, status)
    for name in MUST_RUN_ON_CPU:
        assert report["sections"][name]["status"] == "ok", (name, report["sections"][name])
    # The sync check ran real steps and found no host read inside them.
    reads = [r for r in report["sections"]["sync_check"]["rows"] if "host reads inside steps" in r["name"]]
    assert len(reads) == 2 and all(r["value"] == 0 and r["met"] for r in reads), reads
    steps = [r["value"] for r in report["sections"]["sync_check"]["rows"] if "steps checked" in r["name"]]
    assert steps and all(s > 0 for s in steps)
    rates = [r for r in report["sections"]["trainer_eager"]["rows"] if r["unit"] == "img/s"]
    assert len(rates) == 2 and all(r["value"] > 0 for r in rates)
    # Sections a CPU cannot run say why.
    for name in ("ghost_bn_bench", "quickstart_nccl"):
        assert report["sections"][name]["status"].startswith("skipped: "), report["sections"][name]
    markdown = (tmp_path / "cpu.md").read_text()
    for name in SECTIONS:
        assert f"| {name} |" in markdown, name
    assert "host reads inside steps" in markdown
    output = result.stdout + result.stderr
    assert "USDT" not in output and "gpuGetDeviceCount" not in output
