"""Time forward+backward of BatchNorm2d, the vectorised GhostBatchNorm2d and a chunk-loop ghost BN, side by side.

    python bench/ghost_bn.py                          # CPU, plus CUDA when available
    python bench/ghost_bn.py --device cpu --repeats 5 --iters 3
    python bench/ghost_bn.py --device cpu --threads 1  # on a shared machine: fewer threads, less waiting on others
    OMP_WAIT_POLICY=PASSIVE python bench/ghost_bn.py --device cpu  # shared machine, 2 threads that do not spin
    python bench/ghost_bn.py --device cuda --repeats 7 --iters 20
    python bench/ghost_bn.py --device cuda --shapes resnet50   # the BN shapes of ResNet-50 at batch 256

Three modules run on the same input tensor (which requires grad) with the same fixed random
grad_output (``y.backward(grad)``):

1. ``torch.nn.BatchNorm2d`` — the baseline;
2. ``dist_train.nn.ghost_bn.GhostBatchNorm2d(C, ghost)`` — statistics over ghost batches (on CPU ATen's
   batch-norm kernels per ghost into one buffer, on CUDA one vectorised op; CUDA lines also time the
   per-ghost kernels there, as "per-ghost kernels", for comparison);
3. a chunk-loop ghost BN defined here, the way earlier libraries do it: ``x.split(ghost)``,
   ``F.batch_norm`` (training mode, running stats) on each chunk in a Python loop, ``torch.cat``.

Shapes (``--shapes``): ``default``: CPU (256, 64, 32, 32), CUDA (1024, 64, 32, 32) and (256, 256, 56, 56);
``resnet50``: the five BN input shapes of ResNet-50 at batch 256 ((256, 64, 56, 56), (256, 256, 56, 56),
(256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)); ``--batch`` replaces the batch size (e.g. 64 for
ResNet-50 shapes on a small CPU). Every shape in contiguous and channels_last layouts, ghost 32 and 16;
fp32, and on CUDA also bf16 (bf16 input under ``torch.autocast("cuda", dtype=torch.bfloat16)``).
After warm-up, each module runs ``--repeats`` rounds of ``--iters`` iterations, interleaved (A B C, then
C B A, ...) so that no module always runs on caches warmed by another; the best round's per-iteration
time is reported (other processes only ever add time; CUDA: timed with CUDA events, synchronised).

Under CPU load, OpenMP worker threads that spin at each parallel region's barrier while the OS runs
other processes can make code with many short regions (Ghost BN's per-ghost kernels, the chunk loop)
look several times slower than it is; ``OMP_WAIT_POLICY=PASSIVE`` or ``--threads 1`` avoids that.

Peak memory of one forward+backward, excluding the input, grad_output and parameters (all allocated
beforehand) and with all .grad fields cleared first:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  ``memory_allocated()`` held before the step;
* CPU: the PyTorch profiler with ``profile_memory=True`` records every allocation and free of the
  c10 CPU allocator as an event with a signed size; sorted chronologically, the running sum of those
  sizes is the memory allocated since profiling began and its maximum is the peak. The method is
  checked against known allocations at start-up (``check_cpu_peak_measurement``) and the bench stops
  if it is off. The profiler's own log lines (kineto writes ``profiler_start``/``profiler_stop`` and, on
  a machine without a GPU, ``gpuGetDeviceCount failed`` straight to file descriptor 2) are silenced.

Targets: ghost ≤ 1.3× BN on CPU and ≤ 1.15× on GPU; faster than the chunk loop on CPU in every
layout (≥ 3× on GPU, at ghost 16); peak memory ≤ 1.2× BN.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from dist_train.nn.ghost_bn import GhostBatchNorm2d

SHAPES = {
    "default": {"cpu": [(256, 64, 32, 32)], "cuda": [(1024, 64, 32, 32), (256, 256, 56, 56)]},
    "resnet50": {
        device: [(256, 64, 56, 56), (256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)]
        for device in ("cpu", "cuda")
    },
}
GHOSTS = (32, 16)

CPU_SLOWDOWN_TARGET = 1.3
GPU_SLOWDOWN_TARGET = 1.15
CPU_LOOP_SPEEDUP_TARGET = 1.0  # faster, every layout and ghost size
GPU_LOOP_SPEEDUP_TARGET = 3.0  # at ghost 16
PEAK_MEMORY_TARGET = 1.2

MiB = 1 << 20


class ChunkLoopGhostBatchNorm2d(nn.Module):
    """Ghost BN as earlier libraries write it: one F.batch_norm call per ghost chunk, then torch.cat."""

    def __init__(self, num_features: int, ghost_batch_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.ghost_batch_size = ghost_batch_size
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [
            F.batch_norm(
                chunk, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps
            )
            for chunk in x.split(self.ghost_batch_size)
        ]
        return torch.cat(outputs)


@dataclass(frozen=True)
class Case:
    device: str
    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    ghost: int
    channels_last: bool = False

    def label(self) -> str:
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[self.dtype]
        layout = " channels_last" if self.channels_last else ""
        return f"{self.device} {dtype}{layout} {self.shape} ghost {self.ghost}"


class Workload:
    """One module's forward+backward on the shared input, with its own copy of grad_output in the output dtype."""

    def __init__(self, module: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: Callable[[], object]):
        self.module = module
        self.x = x
        self.autocast = autocast
        self.params = list(module.parameters())
        with torch.no_grad(), autocast():
            out_dtype = module(x).dtype
        self.grad = grad if grad.dtype == out_dtype else grad.to(out_dtype)

    def clear_grads(self) -> None:
        self.x.grad = None
        for p in self.params:
            p.grad = None

    def __call__(self) -> None:
        self.clear_grads()
        with self.autocast():
            y = self.module(self.x)
        y.backward(self.grad)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_iterations(step: Workload, iters: int, device: str) -> float:
    """Milliseconds per iteration over `iters` back-to-back iterations."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters
    start_s = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start_s) * 1e3 / iters


def time_interleaved(
    steps: dict[str, Workload], device: str, warmup: int, repeats: int, iters: int
) -> dict[str, float]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(time_iterations(steps[name], iters, device))
    return {name: min(times) for name, times in samples.items()}


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: the profiler's C++ logger (kineto) writes
    ``USDT ... profiler_start``/``profiler_stop`` lines and, without a GPU, ``gpuGetDeviceCount failed``
    there, at every start, stop and event-tree build; no environment variable turns those off."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profiled_cpu_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by the CPU allocator while fn runs, above what was allocated before it started.

    With profile_memory=True every c10 CPU allocation and free becomes an Allocation event carrying
    a signed alloc_size (negative for a free). Ordered by timestamp, their running sum is the memory
    allocated since profiling began (tensors that already existed are not in it), and its maximum is
    the peak. Tensors freed during fn that were allocated before it would push the sum below zero,
    hence callers clear .grad fields first.
    """
    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    with quiet_fd2():
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    events.sort(key=lambda event: event[0])  # sort is stable: same-timestamp events keep record order
    running = peak = 0
    for _, size in events:
        running += size
        peak = max(peak, running)
    return peak


def check_cpu_peak_measurement() -> None:
    """Check profiled_cpu_peak on allocations of known size; stop the bench if it is off by more than 64 KiB."""
    held = torch.empty(MiB // 4)  # 1 MiB that exists before profiling starts: must not be counted

    def known_sequence() -> None:
        a = torch.empty(MiB // 2)  # 2 MiB
        b = held * 2  # 1 MiB (plus a few bytes for the wrapped scalar)
        del a
        c = torch.empty(MiB)  # 4 MiB -> 5 MiB live with b: the peak
        del b, c

    x = torch.randn(MiB // 4, requires_grad=True)  # 1 MiB
    grad = torch.randn(MiB // 4)

    def relu_forward_backward() -> None:
        torch.relu(x).backward(grad)  # output 1 MiB (saved for backward) + grad_input 1 MiB (kept as x.grad)

    for name, fn, expected in (
        ("known allocations", known_sequence, 5 * MiB),
        ("relu", relu_forward_backward, 2 * MiB),
    ):
        measured = profiled_cpu_peak(fn)
        if abs(measured - expected) > 64 * 1024:
            raise RuntimeError(f"CPU peak-memory check failed on {name}: measured {measured} B, expected {expected} B")
    print("CPU peak-memory measurement checked on known allocations (5 MiB, relu fwd+bwd 2 MiB): ok")


def peak_memory(step: Workload, device: str) -> int:
    step.clear_grads()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return profiled_cpu_peak(step)


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


@dataclass(frozen=True)
class Result:
    slowdown: float  # ghost time / BN time
    speedup: float  # chunk-loop time / ghost time
    mem_ratio: float  # ghost peak / BN peak
    misses: list[str]


def run_case(case: Case, warmup: int, repeats: int, iters: int) -> Result:
    """Bench one case, print its line and return its ratios and the targets it misses."""
    torch.manual_seed(0)
    channels = case.shape[1]
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    x = torch.randn(case.shape, device=case.device, dtype=case.dtype).to(memory_format=memory_format)
    x.requires_grad_(True)
    grad = torch.randn(case.shape, device=case.device, dtype=case.dtype).to(memory_format=memory_format)
    if case.dtype == torch.bfloat16:

        def autocast():
            return torch.autocast(case.device, dtype=torch.bfloat16)

    else:
        autocast = contextlib.nullcontext

    modules = {
        "BN": nn.BatchNorm2d(channels),
        "ghost": GhostBatchNorm2d(channels, case.ghost),
        "loop": ChunkLoopGhostBatchNorm2d(channels, case.ghost),
    }
    if case.device == "cuda":  # also the CPU implementation (ATen's kernels per ghost), for comparison
        modules["per-ghost"] = GhostBatchNorm2d(channels, case.ghost)
        modules["per-ghost"]._implementation = "chunks"
    steps = {}
    per_ghost_error = None
    for name, module in modules.items():
        try:
            steps[name] = Workload(module.to(case.device).train(), x, grad, autocast)
            if name == "per-ghost":
                steps[name]()  # the optional comparison must not stop the bench: check it runs (fwd+bwd) first
        except RuntimeError as error:
            if name != "per-ghost":
                raise
            steps.pop(name, None)
            per_ghost_error = str(error).splitlines()[0][:120]
    times = time_interleaved(steps, case.device, warmup, repeats, iters)
    peaks = {name: peak_memory(steps[name], case.device) for name in ("BN", "ghost")}

    slowdown = times["ghost"] / times["BN"]
    speedup = times["loop"] / times["ghost"]
    mem_ratio = peaks["ghost"] / peaks["BN"]
    line = (
        f"{case.label()}: BN {fmt_ms(times['BN'])} | ghost {fmt_ms(times['ghost'])} ({slowdown:.2f}× BN)"
        f" | chunk loop {fmt_ms(times['loop'])} (ghost is {speedup:.2f}× faster) | peak mem ghost/BN {mem_ratio:.2f}×"
    )
    if "per-ghost" in times:
        line += f" | per-ghost kernels {fmt_ms(times['per-ghost'])} ({times['per-ghost'] / times['BN']:.2f}× BN)"
    elif per_ghost_error:
        line += f" | per-ghost kernels failed: {per_ghost_error}"
    misses = []
    on_cuda = case.device == "cuda"
    if slowdown > (GPU_SLOWDOWN_TARGET if on_cuda else CPU_SLOWDOWN_TARGET):
        misses.append("time vs BN")
    if (speedup < GPU_LOOP_SPEEDUP_TARGET and case.ghost == 16) if on_cuda else speedup <= CPU_LOOP_SPEEDUP_TARGET:
        misses.append("speed-up vs chunk loop")
    if mem_ratio > PEAK_MEMORY_TARGET:
        misses.append("peak memory")
    print(line + (f"  <- misses: {', '.join(misses)}" if misses else ""), flush=True)
    result = Result(slowdown, speedup, mem_ratio, misses)

    del steps, modules, x, grad
    gc.collect()
    if case.device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="all: CPU, plus CUDA if available"
    )
    parser.add_argument("--shapes", choices=tuple(SHAPES), default="default", help="resnet50: ResNet-50's BN shapes")
    parser.add_argument("--batch", type=int, default=None, help="replace the batch size of every shape")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per module; the best is reported")
    parser.add_argument("--iters", type=int, default=None, help="iterations per round (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: 2 on CPU, 5 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: CUDA is not available")
        devices.remove("cuda")

    def shapes(device: str) -> list[tuple[int, int, int, int]]:
        return [(args.batch or n, c, h, w) for n, c, h, w in SHAPES[args.shapes][device]]

    cases: list[Case] = []
    if "cpu" in devices:
        check_cpu_peak_measurement()
        for shape in shapes("cpu"):
            for channels_last in (False, True):
                cases += [Case("cpu", shape, torch.float32, ghost, channels_last) for ghost in GHOSTS]
    if "cuda" in devices:
        print(f"CUDA device: {torch.cuda.get_device_name()}")
        for shape in shapes("cuda"):
            for dtype in (torch.float32, torch.bfloat16):
                for channels_last in (False, True):
                    cases += [Case("cuda", shape, dtype, ghost, channels_last) for ghost in GHOSTS]

    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, repeats {args.repeats}")
    if "cpu" in devices and load > 0.5 * cores:
        print(
            f"warning: load average {load:.1f} on {cores} cores: other processes compete, CPU timings are noisy "
            "(--threads 1 or OMP_WAIT_POLICY=PASSIVE steady them)"
        )
    results: dict[Case, Result] = {}
    for case in cases:
        on_cuda = case.device == "cuda"
        iters = args.iters or (20 if on_cuda else 3)
        warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 2)
        results[case] = run_case(case, warmup, args.repeats, iters)

    # One line per device, dtype, layout and ghost size: the worst ratio over the shapes.
    print(
        "summary (worst over shapes): ghost/BN time | chunk-loop/ghost time (ghost's speed-up) | ghost/BN peak memory"
    )
    groups: dict[str, list[Result]] = {}
    for case, result in results.items():
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[case.dtype]
        layout = "channels_last" if case.channels_last else "contiguous"
        groups.setdefault(f"  {case.device} {dtype} {layout} ghost {case.ghost}", []).append(result)
    for name, group in groups.items():
        print(
            f"{name}: {max(r.slowdown for r in group):.2f}× BN | {min(r.speedup for r in group):.2f}× faster than "
            f"the loop | peak mem {max(r.mem_ratio for r in group):.2f}× BN"
        )
    missed = sum(bool(r.misses) for r in results.values())
    verdict = "all met" if not missed else f"missed on {missed} of {len(cases)} lines (marked above)"
    print(
        f"targets: ghost ≤ {CPU_SLOWDOWN_TARGET}× BN on CPU, ≤ {GPU_SLOWDOWN_TARGET}× on GPU; faster than the chunk "
        f"loop on CPU, ≥ {GPU_LOOP_SPEEDUP_TARGET:g}× on GPU at ghost 16; peak memory ≤ {PEAK_MEMORY_TARGET}× BN"
        f" — {verdict}"
    )


if __name__ == "__main__":
    main()
