"""The docs site and the README: a strict build, and every command they show is one that a test runs.

The site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: a broken link, anchor, image or API
reference fails. Its config reference is generated from the schema (docs/hooks/config_reference.py) and must
cover every key. The shell commands in README.md and docs/ (``bash`` blocks, ``$`` lines of ``console``
blocks) must each be found, word for word, in one test, fixture or test constant of tests/ (or in .ci/run),
or be on NOT_RUN_HERE with the reason. The tests need the ``docs`` extra; elsewhere they skip, and
DIST_TRAIN_REQUIRE_DOCS=1 (set in CI) makes them fail instead.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, assert_ok, subprocess_env

VENV_BIN = Path(sys.executable).parent
PAGES = sorted((REPO / "docs").rglob("*.md"))
SHOWN = [REPO / "README.md", *PAGES]

QUICKSTART = "dist-train train --nproc-per-node 2 --config configs/quickstart.yaml"
"""The README's quickstart, run as written (adding only out_dir=) by test_readme_quickstart_runs_as_written."""
PLAN = "dist-train plan --config configs/mnist_f1_lb_lr_gbn_ra.yaml"
"""The plan shown in docs/papers/train-longer.md, run by test_plan_example_is_what_a_fresh_clone_prints."""

NOT_RUN_HERE = {
    # Needs a GPU, a real cluster or data that CI does not have.
    "dist-train train --nproc-per-node 8": "eight GPUs and CIFAR or ImageNet on /data",
    "NPROC_PER_NODE=8": "eight GPUs per node",
    "NNODES=2 NPROC_PER_NODE=8": "eight GPUs per node on two nodes (the 1-process form is run as written)",
    "dist-train submit --config configs/cifar10_resnet20.yaml --nodes 2 --gpus-per-node 4": (
        "a GPU cluster; tests/test_submit.py dry-runs it with its paths in a temporary folder"
    ),
    "dist-train submit --config configs/imagenet_resnet50.yaml": "a GPU cluster with ImageNet",
    "dist-train submit --sweep configs/sweeps/mnist_small_batch.yaml --array-parallelism 8": "42 runs on a cluster",
    "dist-train sweep configs/sweeps/mnist_small_batch.yaml": "42 runs, 471 s on a cluster (the experiment below)",
    "dist-train report runs/mnist_small_batch": "reads that sweep's 42 runs",
    "MAX_RESTARTS=3 launch/train.sh --config FILE": "a template (FILE); the two-node form is run as written",
    "dist-train shard /data/imagenet": "ImageNet",
    "dist-train train --config configs/quickstart.yaml data.dataset=webdataset": (
        "tests/test_shards.py trains from shards with the tests' small config instead"
    ),
    "bench/gpu_suite.sh": "a GPU (tests/test_gpu_suite.py runs the suite's smallest form)",
    "python bench/": "benchmarks: they print measurements against targets, not pass/fail",
    "python experiments/": "the experiments: minutes to hours on 2 cores; their results are committed",
    "experiments/small_batch_sweep_": "42 runs (28 min or more); the results are committed",
    # Installs and servers: what CI does not repeat.
    "pip install --index-url https://download.pytorch.org/whl/cpu": "the CPU-only variant; CI tests the CUDA build",
    'pip install -c constraints.txt -e ".[dev,docs]"': "the CPU-only variant's second step",
    "mkdocs serve": "a server that runs until stopped; test_site_builds_strictly builds what it serves",
    "slurm/local_cluster.sh": "run by .ci/run and tests/test_local_cluster.py in their own forms, as root",
    "slurm/local_nodes.sh": "run by the many-node tests through their helpers, as root",
    "LOCAL_NODES_NAME=dtslurm slurm/local_nodes.sh": "on the running two-node cluster, by hand",
    "srun -N2 hostname": "on the running two-node cluster, by hand",
    "sinfo": "on the running cluster, by hand",
    "tensorboard --logdir runs/": "a server that runs until stopped",
    # The test suite itself.
    'python -m pytest -m "not slow"': "the suite's fast tier, a part of what .ci/run runs as python -m pytest",
}
"""Commands shown but not run by the tests, by prefix, with the reason."""
SHELL_ONLY = ("source", "cd", "export")
TEMPORARY = ("out_dir=", "data.root=", "shards/fashion_mnist", "runs")
"""Paths the tests replace by a temporary folder: such a word counts as run where the test uses tmp_path or
sets the same key."""


def require_docs() -> None:
    """Skip where the docs extra is not installed, unless DIST_TRAIN_REQUIRE_DOCS is set (CI)."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if not find_module(m)]
    if missing:
        reason = f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        if os.environ.get("DIST_TRAIN_REQUIRE_DOCS"):
            pytest.fail(f"the docs site is required here (DIST_TRAIN_REQUIRE_DOCS) but {reason}")
        pytest.skip(reason)


def find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    command = [str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)]
    env = subprocess_env() | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every page, the generated config reference and the API reference."""
    require_docs()
    site = tmp_path / "site"
    assert_ok(mkdocs_build(REPO, site))
    reference = (site / "config-reference" / "index.html").read_text()
    from dist_train.config import Config, _valid_keys

    for key in _valid_keys(Config):
        assert f"<code>{key}</code>" in reference or f">{key}<" in reference, key
    api = (site / "api" / "index.html").read_text()
    import dist_train

    for name in dist_train.__all__:
        if name != "__version__":
            home = dist_train._HOMES[name]
            assert f'id="{home}.{name}"' in api, f"{name} is not in the API reference"


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """Strict mode is on: a link to a page that does not exist stops the build."""
    require_docs()
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "dist_train", root / "dist_train")
    shutil.copytree(REPO / "experiments" / "results", root / "experiments" / "results")
    shutil.copy(REPO / "mkdocs.yml", root)
    page = root / "docs" / "monitoring.md"
    page.write_text(page.read_text() + "\nSee [the old page](no-such-page.md).\n")
    result = mkdocs_build(root, tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr, result.stderr[-2000:]


def import_config_reference() -> ModuleType:
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        import config_reference
    finally:
        sys.path.remove(str(REPO / "docs" / "hooks"))
    return config_reference


def test_committed_config_reference_is_the_schema_s() -> None:
    """docs/config-reference.md holds the tables (readable on GitHub, not a bare marker) and they are current:
    ``python docs/hooks/config_reference.py --write`` regenerates them."""
    config_reference = import_config_reference()
    page = (REPO / "docs" / "config-reference.md").read_text()
    assert page == config_reference.with_reference(page), "stale: run python docs/hooks/config_reference.py --write"
    assert "| `data.dataset` |" in page and "one of `synthetic`, `cifar10`" in page  # the names, not DATASETS


def test_config_reference_documents_every_key() -> None:
    """Every leaf key of the schema has a row in the generated reference, with its docstring."""
    config_reference = import_config_reference()
    from dist_train.config import Config, _valid_keys

    rows = {key.name: key for _, _, keys in config_reference.sections() for key in keys}
    sections = {name for name, _, _ in config_reference.sections()}
    assert set(rows) == {key for key in _valid_keys(Config) if key not in sections}
    undocumented = [name for name, key in rows.items() if not key.doc]
    assert not undocumented, f"keys without a docstring in dist_train/config.py: {undocumented}"
    assert rows["data.batch_size"].values == "at least 1" and rows["optim.betas"].values.startswith("2 values")


# -- the commands shown ---------------------------------------------------------------------------


@dataclass
class Shown:
    file: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}: {self.text}"


def shown_commands(path: Path) -> list[Shown]:
    """The commands of ``bash``/``sh`` blocks (every line) and ``console`` blocks (``$`` lines), continued lines
    joined, comments dropped, split at ``&&``/``;``/``&``."""
    commands, language, pending, start = [], None, "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "text")
            continue
        if language not in ("bash", "sh", "shell", "console"):
            continue
        if language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "&", "||"):
                if command and command[0] not in SHELL_ONLY:
                    commands.append(Shown(path, start, shlex.join(command)))
                command = []
            else:
                command.append(word)
    return commands


def runner_units() -> list[tuple[str, str]]:
    """(name, source) of every test, fixture and constant in tests/, and .ci/run as a whole."""
    units = [(".ci/run", (REPO / ".ci" / "run").read_text())]
    for path in sorted((REPO / "tests").glob("*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.Assign)):
                name = node.name if isinstance(node, ast.FunctionDef) else ast.unparse(node.targets[0])
                if path.name == "test_docs.py" and name == "NOT_RUN_HERE":
                    continue
                first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
                text = "\n".join(source.splitlines()[first - 1 : node.end_lineno])
                units.append((f"{path.name}::{name}", text))
    return units


def launched_by(words: list[str], source: str) -> list[str] | None:
    """The command's words that the unit must hold, once the way it starts the program is accounted for:
    ``dist-train`` through run_cli or the console script, its ``train --nproc-per-node N`` and
    ``dist-torchrun --nproc-per-node=N`` also through ``run_cli(..., nproc=N)`` or ``torchrun_cmd(N)`` (the
    same agent, :mod:`dist_train.torchrun`), ``python`` through the tests' own interpreter; None when the unit
    does not start it that way."""
    if words[0] == "dist-train":
        if not re.search(r"run_cli|dist-train|DIST_TRAIN|main\(\[", source):
            return None
        if words[1:3] == ["train", "--nproc-per-node"] and "--nproc-per-node" not in source:
            nproc = words[3]
            return words[4:] if re.search(rf"nproc={nproc}\b|torchrun_cmd\({nproc}\b", source) else None
        return words[1:]
    if words[0] == "dist-torchrun" and words[1].startswith("--nproc-per-node="):
        nproc = words[1].split("=")[1]
        return words[2:] if re.search(rf"nproc={nproc}\b|torchrun_cmd\({nproc}\b", source) else None
    if words[0] in ("python", "python3") and words[1:2] != ["-m"]:
        return words[1:]
    if words[0] == "torchrun" and words[1].startswith("--nproc_per_node="):
        nproc = words[1].split("=")[1]
        if not re.search(rf"nproc={nproc}\b|torchrun_cmd\({nproc}\b", source):
            return None
        rest = words[2:]
        return rest[2:] if rest[:2] == ["-m", "dist_train"] else rest
    return words


def holds(source: str, word: str) -> bool:
    """Whether ``source`` holds ``word``: as written, a script by its file name, or a path a test replaces by a
    temporary folder."""
    if word in source:
        return True
    if word.endswith(".py") and "/" in word:
        return f'"{Path(word).name}"' in source
    for temporary in TEMPORARY:
        if word.startswith(temporary) if temporary.endswith("=") else word == temporary:
            return "tmp_path" in source or (temporary.endswith("=") and temporary in source)
    return False


def runner_of(command: str, units: list[tuple[str, str]]) -> str | None:
    """The first unit holding every word of ``command`` (``sudo`` dropped), or None."""
    words = shlex.split(command)
    if words[0] == "sudo":
        words = words[1:]
    for name, source in units:
        needed = launched_by(words, source)
        if needed is not None and all(holds(source, word) for word in needed):
            return name
    return None


def test_every_command_shown_is_run_by_a_test() -> None:
    """README.md and docs/: each command is found in a test, fixture or test constant (or .ci/run), or is on
    NOT_RUN_HERE with its reason; and every NOT_RUN_HERE entry is still shown somewhere."""
    units = runner_units()
    shown = [command for path in SHOWN for command in shown_commands(path)]
    assert len(shown) > 40, "the extraction found too few commands"
    unrun, allowed = [], set()
    for command in shown:
        prefix = next((p for p in NOT_RUN_HERE if command.text.startswith(shlex.join(shlex.split(p)))), None)
        if prefix is not None:
            allowed.add(prefix)
        elif runner_of(command.text, units) is None:
            unrun.append(str(command))
    assert not unrun, "commands shown that no test runs (run them in a test, or add to NOT_RUN_HERE):\n" + "\n".join(
        unrun
    )
    assert not set(NOT_RUN_HERE) - allowed, f"NOT_RUN_HERE entries no page shows: {set(NOT_RUN_HERE) - allowed}"


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The README's quickstart (2 processes, the whole recipe) ends as the README says: 192 steps."""
    assert QUICKSTART in (REPO / "README.md").read_text()
    words = shlex.split(QUICKSTART)
    command = [str(VENV_BIN / words[0]), *words[1:], f"out_dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert_ok(result)
    assert re.search(r"done: val acc \d+\.\d+% after 192 steps", result.stdout), result.stdout[-2000:]


@pytest.mark.slow
def test_plan_example_is_what_a_fresh_clone_prints(tmp_path: Path) -> None:
    """The ``dist-train plan`` output shown in docs/papers/train-longer.md, line for line, from a checkout without
    the tests' MNIST fixture beside it (a fresh clone)."""
    page = (REPO / "docs" / "papers" / "train-longer.md").read_text()
    block = re.search(r"```console\n\s*\$ (dist-train plan [^\n]+)\n(.*?)\n\s*```", page, re.S)
    assert block is not None and block.group(1) == PLAN
    checkout = tmp_path / "clone"
    checkout.mkdir()
    (checkout / "configs").symlink_to(REPO / "configs")
    words = shlex.split(block.group(1))
    command = [str(VENV_BIN / words[0]), *words[1:]]
    result = subprocess.run(command, cwd=checkout, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert_ok(result)
    shown = [line.strip() for line in block.group(2).splitlines()]
    assert [line.strip() for line in result.stdout.strip().splitlines()] == shown
