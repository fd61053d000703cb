"""Processes spikesmith starts are stopped for certain (spikesmith/processes.py): polite signal, bounded wait,
SIGKILL of the whole group, on every way out."""

import os
import signal
import subprocess
import time

import pytest

from spikesmith.processes import run_group, started_group, stop_group

#: A shell that starts a grandchild ignoring SIGTERM and SIGINT, prints its pid, and waits.
STUBBORN = "trap '' TERM INT; sh -c \"trap '' TERM INT; sleep 300\" & echo $!; wait"


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ended_within(pid: int, seconds: float = 5.0) -> bool:
    """Whether ``pid`` ends within ``seconds``: SIGKILL of a group is delivered asynchronously, so a grandchild
    that is no one's to reap may still be running for a moment after its group's leader was reaped."""
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_group_that_ignores_the_polite_signal_is_killed_after_the_grace():
    proc = subprocess.Popen(["sh", "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    started = time.monotonic()
    status = stop_group(proc, grace=1.0)
    assert status == -signal.SIGKILL and 1.0 <= time.monotonic() - started < 10
    assert _ended_within(grandchild)


def test_a_timeout_stops_the_whole_group_not_only_the_shell(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], timeout=1.0, grace=1.0)
    assert _ended_within(int(pid_file.read_text()))


def test_an_exception_in_the_block_stops_the_group():
    with pytest.raises(RuntimeError):
        with started_group(["sleep", "300"], grace=1.0) as proc:
            raise RuntimeError("the caller failed")
    assert proc.returncode is not None and not _alive(proc.pid)


def test_a_finished_command_returns_its_output_and_status():
    done = run_group(["sh", "-c", "echo out; echo err >&2; exit 3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
