"""Submit runs and sweeps to SLURM with submitit; requeue on preemption and time limits.

Each SLURM task is one rank: submitit starts ``TrainJob`` in every task, which
exports the torch.distributed variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE,
LOCAL_RANK) from the SLURM job and calls the same ``train`` as torchrun does.
Before the time limit (or on preemption) SLURM sends USR2; submitit then calls
``TrainJob.checkpoint`` on rank 0 and requeues the job, which resumes from the
run's last checkpoint. The run directory and the logs must be on a file system
every node sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dist_train.config import Config
from dist_train.data.batching import micro_batch_size
from dist_train.errors import ClusterError, ConfigError, DataError
from dist_train.failures import failure_line, print_error, rank_prefix
from dist_train.optimizers import check_installed
from dist_train.plugins import check_imports, is_import_path
from dist_train.resume import find_resume
from dist_train.stop import EXIT_STATUS, Terminated


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What to ask SLURM for; 0 or empty leaves a value to the cluster's defaults."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    """Training processes per node; 0: one per GPU (one without GPUs)."""
    cpus_per_task: int = 0
    mem_gb: float = 0.0
    """Memory per node, in GB."""
    time_min: int = 60
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    sbatch: tuple[str, ...] = ()
    """Further sbatch options as ``key=value`` (e.g. ``exclusive=true``, ``mail-type=END``)."""
    setup: tuple[str, ...] = ()
    """Shell lines run before the job's tasks start (e.g. ``module load cuda``)."""
    job_name: str = ""
    """The job's name in ``squeue``; empty: the run's name (a sweep's job array: the sweep's)."""
    array_parallelism: int = 8
    """At most this many runs of a sweep at once."""
    max_timeouts: int = 3
    """Requeue after at most this many time-limit hits (preemptions are always requeued)."""
    signal_delay_s: int = 90
    """SLURM signals the job this long before its time limit, for the requeue."""

    def __post_init__(self) -> None:
        at_least = {"nodes": 1, "array_parallelism": 1, "time_min": 1}
        at_least |= {name: 0 for name in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb")}
        at_least |= {"max_timeouts": 0, "signal_delay_s": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


def parse_time(text: str) -> int:
    """SLURM's time formats (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"bad --time '{text}': expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(1) is None and match.group(3) is None:
        minutes = first  # plain minutes
    elif match.group(4) is not None or match.group(1) is not None:
        minutes = days * 1440 + first * 60 + second + (1 if third else 0)
    else:
        minutes = first + (1 if second else 0)  # MM:SS
    if minutes < 1:
        raise ConfigError(f"bad --time '{text}': must be at least one minute")
    return minutes


def parse_sbatch_options(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` items (or bare ``key`` for a flag) as submitit's additional sbatch parameters."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise ConfigError(f"bad --sbatch '{item}': expected an sbatch option as key=value, e.g. mail-type=END")
        options[key] = value if sep else True
    return options


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ClusterError("SLURM submission needs submitit: pip install 'dist-train[slurm]'") from None
    return submitit


def partitions() -> list[str]:
    """The cluster's partition names (the default one first is not guaranteed)."""
    result = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"cannot reach SLURM (sinfo failed: {reason})")
    return sorted(set(result.stdout.split()))


def check_cluster(options: SlurmOptions) -> None:
    """SLURM is installed and reachable, and the requested partition exists (before submitting)."""
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "sbatch not found: SLURM is not installed on this machine (slurm/local_cluster.sh starts a local one)"
        )
    known = partitions()
    if options.partition and options.partition not in known:
        raise ClusterError(
            f"SLURM partition '{options.partition}' does not exist (partitions: {', '.join(known) or 'none'})"
        )


def prepare(cfg: Config, options: SlurmOptions, check_data: bool = True) -> Config:
    """Check a run can start on the allocation, before submitting it; paths made absolute so the
    job finds them whatever its working directory. ``check_data=False`` (a dry run, perhaps on a
    laptop that does not mount the cluster's storage) leaves ``data.root`` unchecked."""
    micro_batch_size(cfg.data.batch_size, options.world_size, cfg.train.grad_accum_steps)
    if check_data and cfg.data.root and not cfg.data.download and not Path(cfg.data.root).exists():
        raise DataError(f"data.root not found: {cfg.data.root}")
    if cfg.resume == "never":
        find_resume("never", cfg.run_dir / "checkpoints")
    elif cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise ConfigError(f"resume checkpoint not found: {cfg.resume}")
    check_imports({"model.name": cfg.model.name, "data.dataset": cfg.data.dataset})
    check_installed(cfg.optim.name)
    if cfg.model.name.startswith("timm/"):  # an unknown timm name, or timm missing, would fail on the nodes
        from dist_train.models.timm_models import check_timm_name

        check_timm_name(cfg.model.name, cfg.model.width)
    if is_import_path(cfg.model.name):  # what the nodes would refuse of the factory's arguments
        from dist_train.models.plugin import factory_arguments

        factory_arguments(cfg.model.name, cfg.model.kwargs, cfg.model.width)
    root = str(Path(cfg.data.root).resolve()) if cfg.data.root else ""
    data = dataclasses.replace(cfg.data, root=root)
    return dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).resolve()), data=data)


def describe_plugins(cfg: Config) -> str:
    """Where the job will import the run's plug-ins from (imported here to check), and its working directory."""
    lines = check_imports({"model.name": cfg.model.name, "data.dataset": cfg.data.dataset}) or ["none"]
    return "\n".join([*lines, f"working directory of the job (plug-in paths are relative to it): {os.getcwd()}"])


class TrainJob:
    """What every SLURM task of a run executes: one rank of ``train(cfg)``.

    submitit pickles it at submission; on preemption or time-out it calls
    ``checkpoint`` (rank 0 only) and requeues the job with what that returns.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.workdir = os.getcwd()
        """Where the job runs: plug-ins (model.name, data.dataset) are imported relative to it."""

    def __call__(self) -> dict[str, Any]:
        submitit = import_submitit()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        import torch

        from dist_train.distributed import restart_count

        # One rank per task: as many threads as the task has CPUs (torch is imported already, so
        # OMP_NUM_THREADS would come too late).
        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        os.chdir(self.workdir)
        cfg = self.cfg
        if restart_count() > 0:  # a requeued job (`scontrol requeue` too) continues its own run
            cfg = dataclasses.replace(cfg, resume="auto")
        from dist_train.run import train

        try:
            return train(cfg)
        except Exception as error:  # a bug is raised again, with its traceback
            _end_task(error, cfg.dist.timeout_s)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same run; it resumes from the run directory's last checkpoint.

        Checkpoints are written at epoch ends (``checkpoint.every_epochs``) and, if set, every
        ``checkpoint.every_steps`` steps, so the work since the last one is redone.
        """
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(TrainJob(dataclasses.replace(self.cfg, resume="auto")))


def _end_task(error: Exception, timeout_s: float) -> NoReturn:
    """End this task on ``error`` with the one line ``dist-train train`` would print (also the task's result,
    which ``submit --wait`` reports), instead of submitit's traceback in the job's log; a bug is raised as it is."""
    from submitit.core import utils

    line = failure_line(error, timeout_s)
    if line is None:
        raise error
    if isinstance(error, Terminated):  # a clean stop, said as one (each task has its own log)
        os.write(2, f"{rank_prefix()}dist-train: {line}\n".encode())
    else:
        print_error(line)
    with utils.temporary_save_path(import_submitit().JobEnvironment().paths.result_pickle) as tmp:
        utils.cloudpickle_dump(("error", line), tmp)
    raise SystemExit(EXIT_STATUS if isinstance(error, Terminated) else 1)


@contextlib.contextmanager
def _without_srun_check() -> Iterator[None]:
    """submitit refuses to build its SLURM executor where ``srun`` is not on PATH; a dry run only formats
    the sbatch script with it, which needs no cluster (a laptop)."""
    from submitit.slurm.slurm import SlurmExecutor

    saved = SlurmExecutor.__dict__["affinity"]
    SlurmExecutor.affinity = classmethod(lambda cls: 2)  # type: ignore[method-assign]
    try:
        yield
    finally:
        SlurmExecutor.affinity = saved  # type: ignore[method-assign]


def job_name(options: SlurmOptions, cfgs: Sequence[Config]) -> str:
    """``--job-name``, else the run's name; several runs (a sweep's job array) are named after the folder that
    holds them, which a sweep names after itself."""
    if options.job_name:
        return options.job_name
    return cfgs[0].name if len(cfgs) == 1 else Path(cfgs[0].out_dir).name


def make_executor(options: SlurmOptions, folder: Path, dry_run: bool = False, name: str = "dist-train") -> Any:
    """A submitit SLURM executor for ``options`` whose jobs are called ``name`` (unless ``options.job_name``
    says otherwise) and whose logs go to ``folder`` (``%j`` = job id); with ``dry_run`` one that can only
    format the sbatch script, built without SLURM installed."""
    submitit = import_submitit()
    with _without_srun_check() if dry_run else contextlib.nullcontext():
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=options.max_timeouts)
    parameters: dict[str, Any] = {
        "name": options.job_name or name,
        "nodes": options.nodes,
        "tasks_per_node": options.ntasks_per_node,
        "timeout_min": options.time_min,
        "slurm_array_parallelism": options.array_parallelism,
        "slurm_signal_delay_s": options.signal_delay_s,
    }
    optional = {
        "gpus_per_node": options.gpus_per_node,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_qos": options.qos,
        "slurm_constraint": options.constraint,
        "slurm_setup": list(options.setup),
        "slurm_additional_parameters": parse_sbatch_options(options.sbatch),
    }
    parameters |= {key: value for key, value in optional.items() if value}
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad SLURM options: {str(e).splitlines()[0]}") from None
    return executor


def sbatch_script(executor: Any, count: int) -> str:
    """The ``#SBATCH`` header submitit would submit for ``count`` runs (an array when > 1)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor
    parameters = dict(inner.parameters) | ({"map_count": count} if count > 1 else {})
    text = _make_sbatch_string(command="<submitit worker>", folder=inner.folder, **parameters)
    return "\n".join(line for line in text.splitlines() if line.startswith(("#SBATCH", "srun")))


def submit(cfgs: Sequence[Config], options: SlurmOptions, folder: Path, dry_run: bool = False) -> list[Any]:
    """Submit one job per config, each from ``prepare`` (several go out as one job array); nothing is
    submitted if the cluster check fails. With ``dry_run``, print what would be submitted and return no jobs."""
    if not dry_run:
        check_cluster(options)
    executor = make_executor(options, folder, dry_run, job_name(options, cfgs))
    if dry_run:
        print(sbatch_script(executor, len(cfgs)))
        return []
    submitit = import_submitit()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's error; we report it once
            if len(cfgs) == 1:
                return [executor.submit(TrainJob(cfgs[0]))]
            with executor.batch():
                jobs = [executor.submit(TrainJob(cfg)) for cfg in cfgs]
            return jobs
    except (submitit.core.utils.FailedSubmissionError, submitit.core.utils.FailedJobError) as e:
        reason = _last_line(e).removeprefix("sbatch: error: ")
        raise ClusterError(f"sbatch refused the job: {reason}") from None


def _last_line(error: BaseException) -> str:
    output = getattr(error, "stderr", None) or getattr(error, "output", None) or str(error)
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = [line.strip() for line in str(output).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def still_queued(job_ids: Sequence[str]) -> bool:
    """Whether SLURM still lists any of ``job_ids`` (pending, running or requeued)."""
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%i", f"--jobs={','.join(job_ids)}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return bool(result.stdout.split())


def wait(jobs: Sequence[Any], poll_s: float = 2.0, timeout_s: float | None = None) -> list[Any]:
    """Wait until SLURM no longer lists the jobs (requeues included), then return their results.

    Uses ``squeue`` rather than ``sacct``, so it works on clusters without accounting.
    A job that failed raises a ClusterError naming it and its log file.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    ids = [job.job_id for job in jobs]
    while still_queued(ids):
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"jobs {', '.join(ids)} still queued after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return [_task0_result(job) for job in jobs]


def _task0_result(job: Any) -> Any:
    """Rank 0's return value (its summary), or a ClusterError naming the job and its log."""
    from submitit.core.utils import pickle_load

    task = job.task(0)
    if not task.paths.result_pickle.exists():
        raise ClusterError(f"job {job.job_id} ended without a result; see {task.paths.stderr}")
    outcome, value = pickle_load(task.paths.result_pickle)
    if outcome != "success":
        raise ClusterError(f"job {job.job_id} failed: {_last_line(RuntimeError(value))}; see {task.paths.stderr}")
    return value


def add_arguments(parser: Any) -> None:
    """The SLURM options of ``dist-train submit``."""
    group = parser.add_argument_group("SLURM allocation")
    group.add_argument("--nodes", type=int, default=1, help="nodes per run (default 1)")
    group.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one task (rank) per GPU")
    group.add_argument("--tasks-per-node", type=int, default=0, help="ranks per node without GPUs (default 1)")
    group.add_argument("--cpus-per-task", type=int, default=0, help="CPUs per rank (data loading workers + 1)")
    group.add_argument("--mem-gb", type=float, default=0.0, help="memory per node in GB")
    group.add_argument("--time", default="60", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default 60)")
    group.add_argument("--partition", default="", help="SLURM partition (default: the cluster's)")
    group.add_argument("--account", default="")
    group.add_argument("--qos", default="")
    group.add_argument("--constraint", default="", help="node features, e.g. a100")
    group.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option")
    group.add_argument("--setup", action="append", default=[], metavar="LINE", help="shell line run before training")
    group.add_argument("--job-name", default="", help="the job's name in squeue (default: the run's or sweep's name)")
    group.add_argument("--array-parallelism", type=int, default=8, help="most runs of a sweep at once (default 8)")
    group.add_argument("--max-timeouts", type=int, default=3, help="requeues after hitting the time limit")
    group.add_argument("--signal-delay-s", type=int, default=90, help="seconds of warning before the time limit")


def options_from_args(args: Any) -> SlurmOptions:
    """The options of ``add_arguments`` (same names) as SlurmOptions."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SlurmOptions) if hasattr(args, f.name)}
    return SlurmOptions(
        **given | {"time_min": parse_time(args.time), "sbatch": tuple(args.sbatch), "setup": tuple(args.setup)}
    )
