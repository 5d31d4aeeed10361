"""torchrun, ending in one line instead of its own traceback.

``python -m dist_train.torchrun`` takes torchrun's arguments and runs torchrun's agent unchanged. Only its end
differs: when workers fail, or the agent is signalled (``timeout``, a scheduler's SIGTERM), the workers have
already said why in their own one line, and torchrun would add a Python traceback and a report of every failed
process. Here it adds one line instead, naming the worker that failed first, and exits with that worker's exit
status (128 + the signal's number when a signal ended it, as a shell reports it).
``launch/train.sh``, local sweeps and the tests start torchrun this way.
"""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main


def exit_status(code: int) -> int:
    """A process's exit code as a shell reports it: a death by signal N (code -N) is 128 + N."""
    return 128 - code if code < 0 else code


def failure_line(error: ChildFailedError) -> str:
    """One line on the workers that failed: the first one, how, and how many in all."""
    rank, first = error.get_first_failure()
    killed = first.exitcode < 0
    how = f"killed by {first.signal_name()}" if killed else f"exit status {first.exitcode}"
    others = len(error.failures) - 1
    rest = f"; {others} other worker(s) stopped with it" if others else ""
    said = "" if killed else "; its error is above"
    return f"torchrun: worker rank {rank} failed first ({how}, pid {first.pid}){rest}{said}"


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as error:
        print(failure_line(error), file=sys.stderr)
        return exit_status(error.get_first_failure()[1].exitcode)
    except SignalException as stopped:  # the workers got the signal too, and reported how they stopped
        print(f"torchrun: stopped by {signal.Signals(stopped.sigval).name}", file=sys.stderr)
        return exit_status(-int(stopped.sigval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
