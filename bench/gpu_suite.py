"""The speed suite: one command that measures what a GPU is lent for, and the same on a CPU at small sizes.

    PYTHONPATH=. python3 bench/gpu_suite.py              # auto: GPU sizes with CUDA (≤ 8 min on one H100), else --cpu
    bench/gpu_suite.sh                                   # the same, from the repo root, with a missing-package check
    python bench/gpu_suite.py --cpu                      # CPU sizes (≤ 5 min on 2 cores)
    python bench/gpu_suite.py --smallest --out /tmp/s    # the test's form (tests/test_gpu_suite.py)
    python bench/gpu_suite.py --only sync_check,gbn      # some sections

No install needed: run from the repo root with ``PYTHONPATH=.`` (the package's own imports are torch,
torchvision, numpy, PIL, tensorboard, omegaconf and PyYAML; the ``environment`` section names any that
is missing, and every section then says it could not run). ``bench/gpu_suite.sh --vendor`` copies
omegaconf and PyYAML (pure Python) from this checkout's .venv to ``build/vendor`` for a machine without
them; the .sh puts ``build/vendor`` on PYTHONPATH when it exists.

Each section runs in its own process with its own time limit (a hang or a crash loses that section
only) and the results are written after every section: ``<out>/<device>.json`` and ``<out>/<device>.md``
(default ``bench/results``; ``<device>`` is the GPU's name, or ``cpu``). Sections:

* ``environment``: versions, device, which optional parts (DALI, the tensor backend) are importable.
* ``sync_check``: the trainer's training steps under ``torch.cuda.set_sync_debug_mode("error")`` (GPU)
  and a :class:`~dist_train.debug.HostReadCounter` (both devices): no step may synchronise with the
  device; plain BN and Ghost BN, bf16 and channels_last.
* ``trainer_eager`` / ``trainer_compiled``: images/s of a minimal hand-written loop (data resident on the
  device, one fixed batch: the compute bound) against ``dist-train train`` (its real loader: the tensor
  backend when present, else the torch DataLoader with pinned memory) at the same model, batch, bf16 and
  channels_last, eager and ``torch.compile``; GPU: ResNet-50 at 224×224, batch 256.
* ``gbn``: ``dist-train train`` with Ghost BN (ghost 32) against plain BN, same run otherwise.
* ``ghost_bn_bench``: ``bench/ghost_bn.py --shapes resnet50 --device cuda`` (its own figures, verbatim).
* ``loaders``: ``bench/loaders.py`` (tensor backend against the torch DataLoader, CIFAR-shaped, M = 1 and 4).
* ``quickstart_nccl``: the quickstart under ``torchrun --nproc_per_node 1`` with ``dist.backend=nccl``.

GPU targets are figures to report beside the measurements, not pass/fail tests: ResNet-50 ≥ 4,500 images/s
on one H100 in bf16, the trainer within 5 % of the minimal loop, Ghost BN ≤ 1.15× the time of BN.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # torch's profiler (kineto) prints USDT/ERROR lines otherwise

import argparse
import contextlib
import importlib.util
import io
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "environment",
    "sync_check",
    "trainer_eager",
    "trainer_compiled",
    "gbn",
    "ghost_bn_bench",
    "loaders",
    "quickstart_nccl",
)
RUNTIME_MODULES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "PIL": "pillow",
    "tensorboard": "tensorboard",
    "omegaconf": "omegaconf",
    "yaml": "PyYAML",
}
"""What ``dist_train`` imports at run time (module: package), DALI and submitit aside (optional)."""
TARGET_IMAGES_PER_S = 4500  # ResNet-50, one H100, bf16, batch 256
TARGET_TRAINER_RATIO = 0.95  # trainer images/s ≥ 95 % of the minimal loop's
TARGET_GBN_SLOWDOWN = 1.15  # Ghost BN epoch time ≤ 1.15× BN's
KINETO_NOISE = re.compile(r"^(USDT|ERROR|WARNING|INFO|STAGE):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \S+\.cpp:\d+\]")


@dataclass(frozen=True)
class Size:
    """The shapes of one mode of the suite."""

    model: str
    width: int
    image: int
    batch: int
    steps: int  # optimizer steps per epoch of the trainer runs
    epochs: int  # the first is a warm-up (cudnn autotuning, compilation)
    classes: int
    ghost: int
    workers: int  # torch backend's DataLoader workers (when the tensor backend is absent)
    minimal_steps: int
    minimal_warmup: int
    timeouts: dict[str, int]
    budget: int  # seconds for the whole suite; a section gets at most what is left


SIZES = {
    "gpu": Size(
        model="resnet50",
        width=0,
        image=224,
        batch=256,
        steps=12,
        epochs=4,
        classes=10,
        ghost=32,
        workers=8,
        minimal_steps=30,
        minimal_warmup=10,
        timeouts={
            "environment": 30,
            "sync_check": 100,
            "trainer_eager": 100,
            "trainer_compiled": 200,
            "gbn": 100,
            "ghost_bn_bench": 90,
            "loaders": 60,
            "quickstart_nccl": 60,
        },
        budget=470,
    ),
    "cpu": Size(
        model="c1",
        width=16,
        image=32,
        batch=64,
        steps=8,
        epochs=3,
        classes=10,
        ghost=16,
        workers=0,
        minimal_steps=16,
        minimal_warmup=4,
        timeouts={
            "environment": 60,
            "sync_check": 60,
            "trainer_eager": 60,
            "gbn": 90,
            "ghost_bn_bench": 60,
            "loaders": 60,
            "quickstart_nccl": 60,
            "trainer_compiled": 90,
        },
        budget=290,
    ),
    "smallest": Size(
        model="c1",
        width=8,
        image=32,
        batch=32,
        steps=4,
        epochs=2,
        classes=10,
        ghost=8,
        workers=0,
        minimal_steps=4,
        minimal_warmup=1,
        timeouts={
            "environment": 30,
            "sync_check": 90,
            "trainer_eager": 90,
            "gbn": 120,
            "ghost_bn_bench": 10,
            "loaders": 90,
            "quickstart_nccl": 10,
            "trainer_compiled": 10,
        },
        budget=300,
    ),
}


# -- helpers -------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of every process the suite starts: the repo on PYTHONPATH, no profiler noise."""
    env = dict(os.environ)
    paths = [str(REPO)]
    vendor = REPO / "build" / "vendor"
    if vendor.is_dir():
        paths.append(str(vendor))
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env["KINETO_LOG_LEVEL"] = env.get("KINETO_LOG_LEVEL", "6")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def figure_lines(text: str) -> list[str]:
    """Output lines worth keeping: no profiler noise, no blank lines."""
    return [line.rstrip() for line in text.splitlines() if line.strip() and not KINETO_NOISE.match(line)]


class CommandTimeout(TimeoutError):
    """A command ran past its limit; ``output`` holds what it printed until then."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def run_command(command: list[str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the group and raise TimeoutError."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        tail = " | ".join(figure_lines(stdout + stderr)[-3:])
        raise CommandTimeout(f"{' '.join(command[1:4])} ran past {timeout:.0f} s: {tail}", stdout) from None
    except BaseException:  # the section's own time limit (SectionTimeout), ^C: leave no process behind
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def last_error(result: subprocess.CompletedProcess) -> str:
    lines = figure_lines(result.stderr) or figure_lines(result.stdout) or ["(no output)"]
    return f"exit {result.returncode}: {lines[-1][:300]}"


def row(name: str, value: Any, unit: str = "", target: str = "", met: bool | None = None, note: str = "") -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "met": met, "note": note}


def is_cuda(device: str) -> bool:
    return device == "cuda"


def tensor_backend_available() -> bool:
    return importlib.util.find_spec("dist_train.data.tensor_loader") is not None


# -- sections (each runs in a child process: ``--section NAME``) -----------------------------------------


def section_environment(size: Size, device: str, smallest: bool) -> dict:
    import torch

    rows = [row("python", sys.version.split()[0]), row("torch", torch.__version__)]
    missing = []
    for module, package in RUNTIME_MODULES.items():
        found = importlib.util.find_spec(module) is not None
        missing += [] if found else [package]
        rows.append(row(f"import {module}", "yes" if found else f"MISSING: pip install {package}", met=found))
    rows.append(row("DALI (nvidia.dali)", "yes" if importlib.util.find_spec("nvidia.dali") else "no (optional)"))
    rows.append(row("tensor data backend", "yes" if tensor_backend_available() else "no (not in this checkout)"))
    if torch.cuda.is_available():
        rows.append(row("GPU", f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible)"))
        rows.append(row("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"))
    else:
        rows.append(row("GPU", "none: CPU sizes"))
    rows.append(row("CPU threads", torch.get_num_threads()))
    status = "ok" if not missing else f"failed: missing {', '.join(missing)} (the package's sections cannot run)"
    return {"status": status, "rows": rows}


def run_config(size: Size, device: str, *extra: str) -> list[str]:
    """Overrides of a ``dist-train train`` run (and of the in-process trainer) at ``size``."""
    images = size.batch * size.steps
    backend = "tensor" if tensor_backend_available() else "torch"
    overrides = [
        "data.dataset=synthetic",
        f"data.backend={backend}",
        f"data.image_size={size.image}",
        f"data.synthetic_classes={size.classes}",
        f"data.synthetic_train_size={images}",
        f"data.synthetic_val_size={size.batch}",
        f"data.batch_size={size.batch}",
        f"data.num_workers={size.workers if backend == 'torch' else 0}",
        f"model.name={size.model}",
        f"train.epochs={size.epochs}",
        f"train.eval_every={size.epochs}",
        "train.log_every=20",
        "train.precision=bf16",
        "train.channels_last=true",
        "checkpoint.every_epochs=0",
        "schedule.name=constant",
        f"device={device}",
    ]
    if size.width:
        overrides.append(f"model.width={size.width}")
    return [*overrides, *extra]


def trainer_images_per_s(size: Size, device: str, name: str, timeout: float, *extra: str) -> tuple[float, str]:
    """``dist-train train`` at ``size``: images/s of its epochs after the first (median), and how it loaded."""
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as out:
        command = [sys.executable, "-m", "dist_train", "train", *run_config(size, device, *extra), f"out_dir={out}"]
        result = run_command([*command, f"name={name}"], timeout)
        if result.returncode != 0:
            raise RuntimeError(f"dist-train train {' '.join(extra)}: {last_error(result)}")
        records = [json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r][1:]
    backend = next(o.split("=")[1] for o in run_config(size, device) if o.startswith("data.backend="))
    return statistics.median(rates), f"data.backend={backend}, median of {len(rates)} epochs after a warm-up epoch"


def minimal_images_per_s(size: Size, device: str, compiled: bool) -> float:
    """The loop every tutorial shows, data already on the device: the compute bound of the same step."""
    import torch
    import torch.nn.functional as F

    from dist_train.models import build_model

    torch.manual_seed(0)
    dev = torch.device(device)
    if is_cuda(device):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = build_model(size.model, size.classes, 3, size.image, size.width).to(dev)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    forward = torch.compile(model) if compiled else model
    images = torch.randn(size.batch, 3, size.image, size.image, device=dev).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, size.classes, (size.batch,), device=dev)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(size.minimal_warmup):
        step()
    if is_cuda(device):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(size.minimal_steps):
        step()
    if is_cuda(device):
        torch.cuda.synchronize()
    return size.batch * size.minimal_steps / (time.perf_counter() - start)


def compare_trainer(size: Size, device: str, compiled: bool, timeout: float) -> dict:
    label = "compiled" if compiled else "eager"
    what = f"{size.model} {size.image}×{size.image}, batch {size.batch}, bf16, channels_last, {label}"
    start = time.perf_counter()
    minimal = minimal_images_per_s(size, device, compiled)
    left = timeout - (time.perf_counter() - start)
    extra = ["train.compile=true"] if compiled else []
    trainer, how = trainer_images_per_s(size, device, f"trainer_{label}", left, *extra)
    gpu = is_cuda(device)
    target = f"≥ {TARGET_IMAGES_PER_S} (one H100)" if gpu else ""
    return {
        "status": "ok",
        "rows": [
            row(
                f"minimal loop, {what}",
                round(minimal),
                "img/s",
                target,
                minimal >= TARGET_IMAGES_PER_S if gpu else None,
            ),
            row(
                f"dist-train train, {what}",
                round(trainer),
                "img/s",
                target,
                trainer >= TARGET_IMAGES_PER_S if gpu else None,
                how,
            ),
            row(
                f"trainer / minimal loop ({label})",
                round(trainer / minimal, 3),
                "×",
                f"≥ {TARGET_TRAINER_RATIO}",
                trainer / minimal >= TARGET_TRAINER_RATIO if gpu else None,
                "minimal loop: one batch resident on the device (no loader)",
            ),
        ],
    }


def section_trainer_eager(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    return compare_trainer(size, device, False, timeout)


def section_trainer_compiled(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    if smallest:
        return {"status": "skipped: --smallest does not compile (inductor's start-up alone exceeds its budget)"}
    return compare_trainer(size, device, True, timeout)


def section_gbn(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    start = time.perf_counter()
    bn, how = trainer_images_per_s(size, device, "bn", timeout * 0.55, "bn.ghost_batch_size=0")
    left = timeout - (time.perf_counter() - start)
    ghost, _ = trainer_images_per_s(size, device, "gbn", left, f"bn.ghost_batch_size={size.ghost}")
    slowdown = bn / ghost
    gpu = is_cuda(device)
    return {
        "status": "ok",
        "rows": [
            row(f"dist-train train, {size.model}, batch {size.batch}, BN", round(bn), "img/s", note=how),
            row(f"dist-train train, {size.model}, batch {size.batch}, Ghost BN {size.ghost}", round(ghost), "img/s"),
            row(
                "Ghost BN time / BN time",
                round(slowdown, 3),
                "×",
                f"≤ {TARGET_GBN_SLOWDOWN}",
                slowdown <= TARGET_GBN_SLOWDOWN if gpu else None,
            ),
        ],
    }


@contextmanager
def sync_errors(enabled: bool):
    """``torch.cuda.set_sync_debug_mode("error")`` while inside (a no-op on a CPU)."""
    import torch

    if not enabled:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def check_steps(size: Size, device: str, ghost: int) -> list[dict]:
    """One warm-up epoch, then an epoch whose every step runs under the guards; rows of what they saw."""
    import torch

    from dist_train.assemble import build_trainer
    from dist_train.config import load_config
    from dist_train.debug import HostReadCounter
    from dist_train.distributed import distributed

    name = f"{'Ghost BN ' + str(ghost) if ghost else 'BN'}, bf16, channels_last"
    with tempfile.TemporaryDirectory(prefix="gpu_suite_sync_") as out:
        overrides = run_config(size, device, f"bn.ghost_batch_size={ghost}", "train.log_every=5", "train.epochs=2")
        cfg = load_config(None, [*overrides, f"out_dir={out}", "name=sync"])
        with distributed(cfg.device) as ctx:
            with contextlib.redirect_stdout(io.StringIO()):  # the run's start-up lines
                trainer = build_trainer(cfg, ctx)
            try:
                trainer.train_epoch(0)  # warm-up: cudnn autotuning and first allocations may synchronise
                counters: list[HostReadCounter] = []

                @contextmanager
                def guard():
                    counter = HostReadCounter(lambda: trainer.step)
                    counters.append(counter)
                    with sync_errors(ctx.device.type == "cuda"), counter:
                        yield

                trainer.step_guard = guard
                error = ""
                try:
                    trainer.train_epoch(1)
                except RuntimeError as e:
                    package = REPO / "dist_train"
                    frames = traceback.extract_tb(e.__traceback__)
                    ours = [f for f in frames if Path(f.filename).is_relative_to(package)]
                    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
                    error = f"{str(e).strip().splitlines()[0][:300]} (step {trainer.step + 1}, {where})"
            finally:
                trainer.monitor.close()
    reads = [read for counter in counters for read in counter.reads]
    on_gpu = torch.cuda.is_available() and is_cuda(device)
    rows = [
        row(f"{name}: steps checked", len(counters) - bool(error)),
        row(
            f"{name}: host reads inside steps",
            len(reads),
            target="0",
            met=not reads,
            note="; ".join(f"step {s}: {w}" for s, w in reads[:3]),
        ),
    ]
    if on_gpu:
        rows.append(
            row(f"{name}: sync_debug_mode('error')", error or "no synchronisation", target="none", met=not error)
        )
    else:
        rows.append(row(f"{name}: sync_debug_mode('error')", "not checked (no GPU: set_sync_debug_mode is CUDA's)"))
    return rows


def section_sync_check(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    rows = check_steps(size, device, 0) + check_steps(size, device, size.ghost)
    bad = [r["name"] for r in rows if r["met"] is False]
    return {"status": "ok" if not bad else f"failed: {'; '.join(bad)}", "rows": rows}


def run_bench_script(script: str, args: list[str], timeout: float) -> dict:
    """A bench script as a subprocess: its figure lines verbatim, or why it did not run."""
    try:
        result = run_command([sys.executable, script, *args], timeout)
    except CommandTimeout as e:
        return {
            "status": f"failed: {script} ran past {timeout:.0f} s (its lines so far below)",
            "output": figure_lines(e.output),
        }
    lines = figure_lines(result.stdout)
    if result.returncode != 0:
        return {"status": f"not run: {script} {' '.join(args)}: {last_error(result)}", "output": lines[-40:]}
    return {"status": "ok", "command": f"{script} {' '.join(args)}", "output": lines}


def section_ghost_bn_bench(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    """bench/ghost_bn.py at ResNet-50's BN shapes, batch 256, on the GPU; its default shape at batch 32 on a CPU."""
    if smallest:
        return {"status": "skipped: --smallest (CPU: bench/ghost_bn.py --shapes resnet50 runs with --cpu)"}
    if is_cuda(device):
        args = ["--shapes", "resnet50", "--device", "cuda", "--repeats", "3"]
    else:
        # ResNet-50's shapes take minutes on a small CPU: the default shape at batch 32 checks the bench runs.
        args = ["--device", "cpu", "--batch", "32", "--repeats", "1", "--iters", "1", "--warmup", "1"]
    return run_bench_script("bench/ghost_bn.py", args, timeout)


def section_loaders(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    """bench/loaders.py on CIFAR-shaped data: the tensor backend against the torch DataLoader (and DALI's CPU
    pipeline when DALI is importable), M = 1 and 4."""
    dali = not smallest and importlib.util.find_spec("nvidia.dali") is not None
    backends = "torch,tensor" + (",dali" if dali else "")
    args = ["--sources", "synthetic", "--backends", backends]
    if smallest:
        args += ["--images", "512", "--repeats", "1", "--cifar-batch", "32"]
    elif is_cuda(device):
        args += ["--images", "16384", "--repeats", "2", "--workers", "8"]
    else:
        args += ["--images", "4096", "--repeats", "1"]
    return run_bench_script("bench/loaders.py", args, timeout)


def section_quickstart_nccl(size: Size, device: str, smallest: bool, timeout: float) -> dict:
    if not is_cuda(device):
        return {"status": "skipped: NCCL needs a GPU (the CPU quickstart runs in tests/test_training.py)"}
    with tempfile.TemporaryDirectory(prefix="gpu_suite_quickstart_") as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        command += ["-m", "dist_train", "train", "--config", "configs/quickstart.yaml", "dist.backend=nccl"]
        result = run_command([*command, f"out_dir={out}"], timeout)
        if result.returncode != 0:
            return {"status": f"failed: {last_error(result)}", "output": figure_lines(result.stdout)[-20:]}
        summary = json.loads((Path(out) / "quickstart" / "summary.json").read_text())
        records = [json.loads(line) for line in (Path(out) / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
    done = [line for line in figure_lines(result.stdout) if line.startswith("done:")]
    return {
        "status": "ok",
        "rows": [
            row("quickstart, torchrun nproc 1, NCCL: val acc", round(summary["val_acc"], 4), target="≥ 0.5"),
            row("quickstart: steps / train seconds", f"{summary['steps']} / {summary['train_seconds']:.1f} s"),
            row("quickstart: images/s, last epoch", round(rates[-1]) if rates else "-", "img/s"),
        ],
        "output": done,
    }


SECTION_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "sync_check": section_sync_check,
    "trainer_eager": section_trainer_eager,
    "gbn": section_gbn,
    "ghost_bn_bench": section_ghost_bn_bench,
    "loaders": section_loaders,
    "quickstart_nccl": section_quickstart_nccl,
    "trainer_compiled": section_trainer_compiled,
}


class SectionTimeout(Exception):
    pass


@contextmanager
def alarm(seconds: float):
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds``."""

    def ring(signum, frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section_here(name: str, mode: str, device: str, timeout: float, result_path: Path | None = None) -> dict:
    """Run one section here, time-boxed; its result, or why it failed (also written to ``result_path``)."""
    size = SIZES[mode]
    start = time.perf_counter()
    try:
        with alarm(timeout):
            if name == "environment":
                result = section_environment(size, device, mode == "smallest")
            else:
                result = SECTION_FUNCTIONS[name](size, device, mode == "smallest", timeout - 5)
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        message = " ".join(str(e).split())[:400]
        result = {"status": f"failed: {type(e).__name__}: {message} ({Path(where.filename).name}:{where.lineno})"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if result_path is not None:
        result_path.write_text(json.dumps(result, indent=1))
    return result


# -- the parent: run every section in its own process, write the results after each --------------------


def device_name(device: str) -> str:
    if not is_cuda(device):
        return "cpu"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def write_results(out: Path, stem: str, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=1)), (".md", markdown(report))):
        path = out / f"{stem}{suffix}"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    lines = [
        f"# Speed suite: {report['device_name']} ({report['mode']} sizes)",
        "",
        f"{report['started']}, torch {report['torch']}, {report['seconds']:.0f} s in all. "
        f"Command: `{report['command']}`",
        "",
        "| section | figure | measured | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    outputs = []
    for name, section in report["sections"].items():
        status = section.get("status", "?")
        if status != "ok" or not section.get("rows"):
            below = " (output below)" if section.get("output") else ""
            lines.append(f"| {name} | {cell(status)}{below} | | | |")
        for r in section.get("rows", []):
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            value = f"{r['value']} {r['unit']}".strip()
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"| {name} | {cell(r['name'] + note)} | {cell(value)} | {r['target']} | {met} |")
        if section.get("output"):
            outputs.append((name, section.get("command", ""), section["output"]))
    for name, command, output in outputs:
        lines += ["", f"## {name}" + (f": `{command}`" if command else ""), "", "```", *output, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--cpu", action="store_true", help="CPU sizes on the CPU, even with a GPU")
    modes.add_argument("--smallest", action="store_true", help="the smallest sizes on the CPU (the test's form)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder of <device>.json/.md")
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the sections in this process (time-boxed by an alarm; a crash ends the suite): "
        "the default with --smallest, which saves a Python start-up per section",
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        run_section_here(args.section, args.mode, args.device, args.timeout, args.result)
        return

    import torch

    gpu = torch.cuda.is_available() and not (args.cpu or args.smallest)
    mode = "gpu" if gpu else ("smallest" if args.smallest else "cpu")
    device = "cuda" if gpu else "cpu"
    size = SIZES[mode]
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; sections: {', '.join(SECTIONS)}")
    stem = device_name(device)
    report = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if gpu else "cpu",
        "mode": mode,
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(["python", "bench/gpu_suite.py", *sys.argv[1:]]),
        "targets": {
            "resnet50_images_per_s_one_h100_bf16": TARGET_IMAGES_PER_S,
            "trainer_over_minimal_images_per_s": TARGET_TRAINER_RATIO,
            "ghost_bn_over_bn_time": TARGET_GBN_SLOWDOWN,
        },
        "seconds": 0.0,
        "sections": {},
    }
    print(f"speed suite: {report['device_name']}, {mode} sizes, sections: {', '.join(chosen)}", flush=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_suite_results_") as scratch:
        for name in chosen:
            left = size.budget - (time.perf_counter() - began)
            timeout = min(size.timeouts[name], left)
            if timeout < 5:
                result = {"status": f"not run: the suite's {size.budget} s budget is spent"}
            elif args.in_process or mode == "smallest":
                result = run_section_here(name, mode, device, timeout)
            else:
                result = run_section_child(name, mode, device, timeout, Path(scratch) / f"{name}.json")
            report["sections"][name] = result
            report["seconds"] = round(time.perf_counter() - began, 1)
            write_results(args.out, stem, report)
            print_section(name, result)
    print(f"wrote {args.out / stem}.json and .md ({report['seconds']:.0f} s)")


def run_section_child(name: str, mode: str, device: str, timeout: float, result_path: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--mode", mode]
    command += ["--device", device, "--timeout", str(timeout - 3), "--result", str(result_path)]
    start = time.perf_counter()
    try:
        process = run_command(command, timeout)
    except TimeoutError:
        return {
            "status": f"failed: ran past its {timeout:.0f} s limit",
            "seconds": round(time.perf_counter() - start, 1),
        }
    if not result_path.exists():
        return {"status": f"failed: the section's process ended without a result ({last_error(process)})"}
    return json.loads(result_path.read_text())


def print_section(name: str, result: dict) -> None:
    print(f"[{name}] {result.get('status')} ({result.get('seconds', '?')} s)", flush=True)
    for r in result.get("rows", []):
        target = f"  (target {r['target']}{'' if r['met'] is None else ': met' if r['met'] else ': NOT met'})"
        print(f"  {r['name']}: {r['value']} {r['unit']}{target if r['target'] else ''}", flush=True)
    for line in result.get("output", []):
        print(f"  | {line}", flush=True)


if __name__ == "__main__":
    main()
