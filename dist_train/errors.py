"""User-facing errors: each is reported as one line and a non-zero exit."""


class DistTrainError(Exception):
    """An error caused by the user's input (config, data, checkpoint, cluster state)."""


class ConfigError(DistTrainError):
    """A bad config file, key, value or override."""


class DataError(DistTrainError):
    """A missing, unreadable or inconsistent dataset."""


class CheckpointError(DistTrainError):
    """A checkpoint that cannot be read or does not fit the run."""


class ClusterError(DistTrainError):
    """A SLURM cluster that is missing or cannot take the job (partition, submission)."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line.

    Exceptions re-raised from DataLoader workers carry the worker's traceback in
    their message; the last line of it is the original message.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


class ResourceError(DistTrainError):
    """The machine ran out of something or refused access: disk space, memory, permissions."""


def describe_os_error(error: OSError) -> str:
    """An OSError as 'what: path' (e.g. 'No space left on device: runs/x/metrics.jsonl')."""
    what = error.strerror or one_line(error)
    return f"{what}: {error.filename}" if error.filename else what
