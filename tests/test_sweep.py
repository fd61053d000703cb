"""``spikesmith sweep`` on a real (local) Ray instance: points, Pareto front, builds cached by their hash."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, descendants, run_cli
from spikesmith.processes import stop_group
from spikesmith.sweep import COLUMNS, SweepRun, TaskPool, estimator_error, mark_pareto, ray_session


def _point(golden, logic, rate, status="estimated", timing_met=None, board="icebreaker", logic_used=None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(golden_accuracy=golden, logic_estimate=logic, images_per_second=rate, status=status,
               timing_met=timing_met, board=board, logic_used=logic_used)
    return row


def _dominated(row, others) -> bool:
    mine = (row["golden_accuracy"], -(row["logic_used"] or row["logic_estimate"]), row["images_per_second"])
    for other in others:
        theirs = (other["golden_accuracy"], -(other["logic_used"] or other["logic_estimate"]),
                  other["images_per_second"])
        if other is not row and all(a >= b for a, b in zip(theirs, mine)) and theirs != mine:
            return True
    return False


def test_the_pareto_front_is_the_points_no_other_beats():
    rows = [_point(0.95, 3000, 1000), _point(0.97, 4000, 1000), _point(0.95, 3500, 900),   # 2: beaten by 0
            _point(0.90, 2000, 5000), _point(0.97, 4000, 1000),                            # 4: ties 1, both stay
            _point(0.99, 1000, 9000, status="does not fit"),                               # no figures: out
            _point(0.99, 1000, 9000, status="built", timing_met=False, logic_used=1000),   # missed its clock: out
            _point(None, None, None, status="failed")]                                     # no conversion: out
    assert [row["pareto"] for row in mark_pareto(rows)] == [True, True, False, True, True, False, False, False]


def test_the_estimator_error_is_against_nextpnrs_count_per_board():
    rows = [_point(0.9, 1100, 1, status="built", logic_used=1000, timing_met=True),
            _point(0.9, 900, 1, status="cached", logic_used=1000, timing_met=True),
            _point(0.9, 5000, 1, status="estimated")]
    for row, ram in zip(rows, (3, 4, 5)):
        row.update(ram_estimate=4, ram_used=ram if row["status"] != "estimated" else None)
    error = estimator_error(rows)["icebreaker"]
    assert error["points"] == 2 and error["logic_mean_pct"] == 0.0 and error["logic_mean_abs_pct"] == 10.0
    assert error["logic_max_abs_pct"] == 10.0 and error["ram_max_abs_blocks"] == 1


def test_an_estimate_only_sweep_on_ray_converts_and_sizes_every_point(digits_demo, tmp_path):
    """2 T x 2 weight widths x 2 boards of the demo's model, estimated on a local Ray instance: every point
    in sweep.csv and sweep.json, the Pareto front exactly the points no other beats, a point's accuracy that
    of the same conversion by ``convert`` and ``eval``, and a PNG plot."""
    out = tmp_path / "sweep"
    proc = run_cli("sweep", str(digits_demo["model_path"]), "--calib", "digits", "--calib-range", "0:300", "-n", "200",
                   "-T", "4", "8", "--weight-bits", "4", "8", "--board", "icebreaker", "ulx3s-85f", "--estimate-only",
                   "--jobs", "1", "-o", str(out), "--json", "-q")
    summary = json.loads(proc.stdout)
    assert proc.stderr == ""                          # -q: no progress, no bar, none of Ray's own logging
    points = summary["points"]
    assert sorted((p["T"], p["weight_bits"], p["board"]) for p in points) == sorted(
        (t, b, board) for t in (4, 8) for b in (4, 8) for board in ("icebreaker", "ulx3s-85f"))
    assert {p["status"] for p in points} <= {"estimated", "does not fit"} and summary["builds_run"] == 0
    usable = [p for p in points if p["status"] == "estimated"]
    assert usable and all(p["pareto"] == (not _dominated(p, usable)) for p in usable)
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(points) and tuple(table[0]) == COLUMNS
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    net = tmp_path / "t4.net.npz"
    run_cli("convert", str(digits_demo["model_path"]), "--calib", "digits", "--calib-range", "0:300", "-T", "4",
            "--weight-bits", "4", "-o", str(net), "-q")
    evaluated = json.loads(run_cli("eval", str(net), "-n", "200", "--json", "-q").stdout)
    [point] = {p["golden_accuracy"] for p in points if (p["T"], p["weight_bits"]) == (4, 4)}
    assert point == evaluated["golden_accuracy"]


@pytest.mark.long
def test_a_sweep_builds_each_point_once_and_a_rerun_builds_nothing(small_digits_net, tmp_path):
    """Two builds as Ray tasks: at the oscillator's clock (met), and at 200 MHz, which no placement meets (the
    point is marked failed and the sweep goes on). Each is cached by its hash; the rerun reads both back."""
    out = tmp_path / "sweep"
    args = ["sweep", str(small_digits_net), "--board", "icebreaker", "--clock", "osc", "200", "--jobs", "1",
            "-o", str(out), "--json", "-q"]
    first = json.loads(run_cli(*args).stdout)
    built, failed = first["points"]
    assert first["builds_run"] == 2 and built["status"] == "built" and built["timing_met"]
    assert built["logic_used"] > 1000 and built["fmax_mhz"] > 12
    assert (out / "builds" / built["build"] / "top.bin").stat().st_size > 10_000
    assert failed["status"] == "failed" and "no placement met" in failed["error"]
    assert first["estimator_error"]["icebreaker"]["points"] == 1

    again = json.loads(run_cli(*args).stdout)
    assert again["builds_run"] == 0 and again["builds_cached"] == 2
    assert [p["status"] for p in again["points"]] == ["cached", "failed"]
    assert again["points"][0]["fmax_mhz"] == built["fmax_mhz"] and again["points"][1]["error"] == failed["error"]


def _double_or_crash(value: int) -> int:
    if value < 0:
        os._exit(3)                              # the worker dies, as on a lost node
    return 2 * value


def test_a_task_ray_cannot_run_is_marked_and_the_others_finish():
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])    # (this module is not importable by the workers)
    finished = {}
    with ray_session(SweepRun(jobs=1)):
        TaskPool(ray, 1).run(_double_or_crash, [("lost", (-1,)), ("fine", (21,))],
                             lambda key, result, failure: finished.update({key: (result, failure)}))
    assert finished["fine"] == (42, None)
    assert finished["lost"][0] is None and finished["lost"][1].startswith("Ray: ")


# ---------------------------------------------------------------------------- processes, from /proc

def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a container's init may never reap what it inherits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(pids) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket held by the processes ``pids``."""
    owners = {}
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[len("socket:["):-1]] = pid
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owners:           # 0A: LISTEN; [9]: the socket's inode
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)                               # (32-bit words in host order)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((_name(owners[fields[9]]), socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3]) == pgid:
                found.append(int(entry))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------------- the local Ray instance

def test_a_local_ray_instance_listens_on_loopback_only():
    """Every TCP listener of the sweep's local Ray instance (the GCS, the raylet and its object manager, the
    workers, the agents, this process as its driver) is on 127.0.0.1 or ::1. Ray 2.60 left to itself listens
    on every interface (GCS, raylet, workers, driver) and the runtime-env agent on the machine's address."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_session(SweepRun(jobs=2)):
        assert ray.get([ray.remote(_double_or_crash).remote(n) for n in range(4)]) == [0, 2, 4, 6]   # workers up
        listeners = _listening([os.getpid(), *descendants(os.getpid())])
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in listeners}, listeners     # (found them at all)
    assert [entry for entry in listeners if not _loopback(entry[1])] == []


def test_a_local_ray_instance_keeps_its_files_and_token_to_this_user(tmp_path, monkeypatch):
    """Token authentication (Ray's default for a local instance) reads a token of the sweep's own: 0600, in a
    folder of its own (0700) that also holds Ray's session (logs, sockets), removed afterwards. Ray alone
    writes ~/.ray/auth_token 0644 in a 0755 folder, and its session to /tmp/ray (0777), never removed; it
    makes its temporary folder 0777 (measured with Ray 2.60)."""
    import ray
    from ray._raylet import AuthenticationTokenLoader

    monkeypatch.setenv("HOME", str(tmp_path / "home"))        # (where Ray would write its own token)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with ray_session(SweepRun(jobs=1)):
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        folder = token.parent
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert AuthenticationTokenLoader.instance().get_raw_token() == token.read_text()   # the one Ray uses
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.stat().st_uid == os.getuid()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
        assert folder in Path(ray._private.worker._global_node.get_session_dir_path()).parents
    assert not folder.exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ
    assert not (tmp_path / "home" / ".ray").exists()


def test_sigterm_ends_a_sweep_like_ctrl_c_and_stops_its_ray_instance(small_digits_net, tmp_path):
    """SIGTERM while a build runs as a Ray task: exit status 143 and the one line of any command, none of
    Ray's (it replaces the handler: a C++ stack and exit status 1), and no process of the instance left."""
    proc = subprocess.Popen([sys.executable, "-m", "spikesmith.cli", "sweep", str(small_digits_net), "--board",
                             "icebreaker", "--jobs", "1", "-o", str(tmp_path / "out"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(_cmdline(pid).startswith(b"ray::build_task") for pid in descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep never started its build"
            time.sleep(0.5)
        instance = descendants(proc.pid)
        assert {"gcs_server", "raylet"} <= {_name(pid) for pid in instance}
        while not any(list(folder.glob("spikesmith-build-*")) for folder in _scratch_folders(proc.pid)):
            assert time.monotonic() < deadline, "the build never made its folder in the sweep's scratch folder"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        stop_group(proc, signals=(signal.SIGTERM,), grace=35.0)
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "spikesmith: terminated"
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [(pid, _name(pid)) for pid in instance if _running(pid)] == []
    # The build the signal stopped leaves no temporary folder (the sweep's scratch folder went with it).
    assert _scratch_folders(proc.pid) == []


def _scratch_folders(pid: int) -> list[Path]:
    """Sweep ``pid``'s scratch folders (the parent of its builds' temporary folders)."""
    import tempfile

    from spikesmith.sweep import scratch_prefix
    return list(Path(tempfile.gettempdir()).glob(scratch_prefix(pid) + "*"))


def test_without_ray_the_sweep_says_how_to_install_it(small_digits_net, tmp_path):
    hidden = tmp_path / "no-ray"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    proc = run_cli("sweep", str(small_digits_net), "--board", "icebreaker", "-o", str(tmp_path / "out"), check=False,
                   env={**os.environ, "PYTHONPATH": f"{hidden}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert_one_line_error(proc, 'pip install "spikesmith[sweep]"')
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["-T", "4", "8"], "sweep T and weight bits from the model (.pt2)"),
    (["--weight-bits", "6"], "sweep T and weight bits from the model (.pt2)"),
])
def test_a_network_file_keeps_its_own_T_and_weight_width(small_digits_net, tmp_path, extra, message):
    proc = run_cli("sweep", str(small_digits_net), "--board", "icebreaker", "-o", str(tmp_path / "out"), *extra,
                   check=False)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_a_model_without_calibration_data_is_refused(digits_demo, tmp_path):
    proc = run_cli("sweep", str(digits_demo["model_path"]), "--board", "icebreaker", "-o", str(tmp_path / "out"),
                   check=False)
    assert_one_line_error(proc, "--calib")


def test_a_sweep_will_not_write_into_a_folder_of_someone_elses_files(small_digits_net, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    proc = run_cli("sweep", str(small_digits_net), "--board", "icebreaker", "-o", str(tmp_path / "out"),
                   "--estimate-only", check=False)
    assert_one_line_error(proc, "will not write into")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thesis.tex"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.long        # (a Ray head of its own: 10-15 s alone, 55 s beside the default suite's other worker)
def test_a_sweep_runs_on_a_cluster_given_its_address(small_digits_net, tmp_path):
    """A one-node cluster of 3 CPUs started as a user would (``ray start --head``, token authentication on, its
    servers on loopback), and the sweep connected to it through Ray Client (``ray://``) from another process.

    The head is stopped for certain (:func:`spikesmith.processes.stop_group`): SIGINT (as Ctrl-C: `ray start --block` stops what it
    started), SIGTERM, then SIGKILL of its process group. It used to get SIGINT and ``head.wait(timeout=60)``
    alone, whose TimeoutExpired left the head running (once for over an hour). Why it can ignore SIGINT: a
    process started by a shell in the background without job control (``pytest ... &`` in a script, a CI
    step) inherits SIGINT ignored, Python then installs no Ctrl-C handler, and `ray start --block` ignores
    SIGINT for good (measured with Ray 2.60: still up 25 s after it; SIGTERM then drains the node for up to
    30 s before it stops). A SIGINT that comes before the handler is not the cause: until Python installs
    it, the default action ends the process (sent 0.5, 2, 3.5 and 8 s after the start, SIGINT stopped the
    head within 1.3 s each time). Hence SIGINT set back to its default in the head, as from a terminal."""
    import tempfile

    from spikesmith.sweep import check_address

    gcs, client = _free_port(), _free_port()
    ray_cli = str(Path(sys.executable).parent / "ray")
    token = tmp_path / "auth_token"                   # (not ~/.ray/auth_token: the head needs a token before it starts)
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: every server on 127.0.0.1 (Ray binds loopback only with clusters off;
    # --node-ip-address 127.0.0.1 alone is turned into the machine's address). Its session in a short temporary
    # folder (Unix socket paths under tmp_path would pass their 107 characters).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    session = tempfile.mkdtemp(prefix="ray-head-")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--port", str(gcs), "--ray-client-server-port",
                             str(client), "--num-cpus", "3", "--include-dashboard", "false", "--node-ip-address",
                             "127.0.0.1", "--temp-dir", session], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(120):
            try:
                check_address(f"ray://127.0.0.1:{client}")
                break
            except Exception:
                time.sleep(0.5)
        proc = run_cli("sweep", str(small_digits_net), "--board", "icebreaker", "ulx3s-85f", "--estimate-only",
                       "--address", f"ray://127.0.0.1:{client}", "-o", str(tmp_path / "out"), "--json", "-q", env=env)
    finally:
        stop_group(head, signals=(signal.SIGINT, signal.SIGTERM), grace=35.0)
        shutil.rmtree(session, ignore_errors=True)
    summary = json.loads(proc.stdout)
    assert summary["run"]["address"] == f"ray://127.0.0.1:{client}"
    assert summary["run"]["jobs"] == 3                # the cluster's CPUs (a local instance has this machine's)
    assert [p["status"] for p in summary["points"]] == ["estimated", "estimated"]


@pytest.mark.parametrize("address", ["head", "ray://", "ray://head", ":6379", "head:0", "head:65536",
                                     "http://head:6379", "head:6379/x", "head name:6379", ""])
def test_an_address_that_is_not_a_ray_address_is_refused_when_the_command_line_is_read(small_digits_net, tmp_path,
                                                                                        address):
    """Ray spends half a minute on ``head`` or a bare ``ray://`` and prints its own lines, after the output
    folder was made; now one line, and nothing written."""
    proc = run_cli("sweep", str(small_digits_net), "--board", "icebreaker", "--estimate-only", "--address", address,
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "--address", "is not a Ray address")
    assert not (tmp_path / "out").exists()


def test_the_ray_addresses_a_sweep_takes():
    from spikesmith.sweep import parse_address

    for address in ("ray://head:10001", "head:6379", "ray://10.0.0.2:10001", "[::1]:6379", "ray://head.lan:10001",
                    "auto"):
        assert parse_address(address) == address
    assert parse_address("local") is None             # (the default: a local instance of the sweep's own)


def test_a_ray_client_connection_the_server_fails_to_start_is_tried_again(monkeypatch):
    """Ray Client's server starts a process per client, which can fail on a busy head and work a moment later."""
    from spikesmith import sweep

    class FlakyRay:
        def __init__(self, failures: int):
            self.failures, self.calls, self.shutdowns = failures, 0, 0

        def init(self, **kwargs):
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client "
                                             "server failed.")

        def shutdown(self):
            self.shutdowns += 1

    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    ray = FlakyRay(failures=sweep.CLIENT_ATTEMPTS - 1)
    sweep._connect(ray, "ray://head:10001")
    assert ray.calls == sweep.CLIENT_ATTEMPTS and ray.shutdowns == sweep.CLIENT_ATTEMPTS - 1
    with pytest.raises(ConnectionAbortedError):
        sweep._connect(FlakyRay(failures=sweep.CLIENT_ATTEMPTS), "ray://head:10001")
