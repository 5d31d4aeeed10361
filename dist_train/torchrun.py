"""torchrun, ending in one line instead of its own traceback.

``python -m dist_train.torchrun`` takes torchrun's arguments and runs torchrun's agent unchanged. Only its end
differs: when workers fail, or the agent is signalled (``timeout``, a scheduler's SIGTERM), the workers have
already said why in their own one line, and torchrun would add a Python traceback and a report of every failed
process. Here it adds one line instead, naming the worker that failed first, and exits with that worker's exit
status (128 + the signal's number when a signal ended it, as a shell reports it).
``launch/train.sh``, local sweeps and the tests start torchrun this way.
"""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from dist_train.failures import agent_stopped_line, workers_failed_line


def exit_status(code: int) -> int:
    """A process's exit code as a shell reports it: a death by signal N (code -N) is 128 + N."""
    return 128 - code if code < 0 else code


def _not_a_failure_report(record: logging.LogRecord) -> bool:
    """False for the agent's log line on each failed worker ("failed (exitcode: 1) local_rank: 0 ..."): the
    workers' own lines and :func:`workers_failed_line` say it."""
    return "failed (exitcode" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_not_a_failure_report)
    try:
        torchrun_main(argv)
    except ChildFailedError as error:
        print(workers_failed_line(error), file=sys.stderr)
        return exit_status(error.get_first_failure()[1].exitcode)
    except SignalException as stopped:  # the workers got the signal too, and reported how they stopped
        print(agent_stopped_line(stopped.sigval), file=sys.stderr)
        return exit_status(-int(stopped.sigval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
