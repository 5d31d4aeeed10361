"""The last lines of a failed torchrun job: dist_train.torchrun's line and exit status, and the line a worker
prints when a peer stops answering (the runs under torchrun are in test_training.py and test_bad_input.py: a
signalled agent, a refused config and a hung peer end in one line each, no traceback)."""

from __future__ import annotations

import signal

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from dist_train import cli
from dist_train.failures import workers_failed_line as failure_line
from dist_train.torchrun import exit_status


def failed(*codes: int) -> ChildFailedError:
    """torchrun's error for workers 0, 1, ... ending with ``codes``, failing in that order."""
    failures = {}
    for rank, code in enumerate(codes):
        failures[rank] = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="<N/A>")
        failures[rank].timestamp = rank  # the order they failed in
    return ChildFailedError("dist_train", failures)


def test_the_line_names_the_first_failure_and_counts_the_rest() -> None:
    assert failure_line(failed(1, -signal.SIGTERM, -signal.SIGTERM)) == (
        "torchrun: worker rank 0 failed first (exit status 1, pid 1000); 2 other worker(s) stopped with it; "
        "its error is above"
    )
    assert failure_line(failed(-signal.SIGKILL)) == (
        "torchrun: worker rank 0 failed first (killed by SIGKILL, pid 1000)"
    )


def test_exit_status_is_the_shells() -> None:
    assert exit_status(1) == 1 and exit_status(-signal.SIGKILL) == 137 and exit_status(-signal.SIGTERM) == 143


def test_a_connection_closed_by_a_timeout_is_a_silent_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo's error for an operation on a connection that another operation's timeout closed (the hung-peer
    test meets it when the timeout hits an all-reduce in flight) is the same line as the timeout itself."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    error = RuntimeError("Application timeout caused pair closure")
    assert cli.failure_line(error, timeout_s=10) == (
        "rank 1 stopped answering: no reply within 10 s (dist.timeout_s) to a collective; "
        "that process hangs, was stopped or lost its node"
    )
    timed_out = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv")
    assert cli.failure_line(timed_out).startswith("rank 1 stopped answering: no reply within 30 s (dist.timeout_s)")
