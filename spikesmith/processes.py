"""Processes spikesmith starts are stopped for certain: the polite signal, a bounded wait, then SIGKILL.

Each tool runs in a process group of its own (``start_new_session``), so stopping it reaches
everything it started (``sh`` -> nextpnr, ``make`` -> the C++ compiler, a simulator's children).
:func:`run_group` is ``subprocess.run`` with that guarantee on every way out (an error, Ctrl-C,
SIGTERM); :func:`stop_group` is the escalation on its own, for a process kept running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

__all__ = ["stop_group", "run_group", "started_group", "GRACE_SECONDS"]

#: How long a process group has to end after each polite signal before the next step.
GRACE_SECONDS = 10.0


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_group(proc: subprocess.Popen, signals: tuple[int, ...] = (signal.SIGTERM,),
               grace: float = GRACE_SECONDS) -> int:
    """End ``proc``'s process group: each of ``signals`` in turn with ``grace`` seconds to end, then SIGKILL of
    the whole group; ``proc`` is reaped. Returns its exit status. ``proc`` must lead its own group."""
    pgid = proc.pid
    for signum in signals:
        if proc.poll() is not None:
            break
        _signal_group(pgid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    _signal_group(pgid, signal.SIGKILL)         # the leader may be gone while its children live on
    return proc.wait()


@contextlib.contextmanager
def started_group(command, *, grace: float = GRACE_SECONDS, **popen_options):
    """``subprocess.Popen`` in a new process group; on leaving the block the group is stopped (:func:`stop_group`)
    whatever happened, after the leader ended by itself or not."""
    proc = subprocess.Popen(command, start_new_session=True, **popen_options)
    try:
        yield proc
    finally:
        stop_group(proc, grace=grace)


def run_group(command, *, timeout: float | None = None, grace: float = GRACE_SECONDS, input=None,
              **popen_options) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose whole process group is stopped on every way out; raises ``TimeoutExpired`` after
    ``timeout`` seconds (the group stopped first)."""
    with started_group(command, grace=grace, **popen_options) as proc:
        stdout, stderr = proc.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.wait(), stdout, stderr)
