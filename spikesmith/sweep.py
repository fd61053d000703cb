"""``spikesmith sweep``: a model's design space, every point measured.

A point is (T, weight bits, lane budget, clock, board). Each (T, weight bits) is converted once and
evaluated with the golden model; each point is then sized for its board and estimated (logic, block
RAM, worst-case images/s) and, unless ``estimate_only``, built for real with yosys and nextpnr. The
conversions and the builds are Ray tasks: on a local Ray instance, or on an existing cluster given its
address. A build is cached under ``DIR/builds/<hash>/`` by the hash of everything the tools read
(amaranth's RTLIL of the board top, the constraints, the scripts) and the seeds, so a rerun builds only
what is new; a point that fails is marked and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SpikesmithError
from .fileio import check_output_folder, claim_outputs, write_atomic, write_output

#: The files a sweep writes into its folder, beside ``builds/``.
OUTPUTS = ("sweep.csv", "sweep.json", "sweep.png")
RAY_MISSING = "sweeps run on Ray, an optional extra: pip install \"spikesmith[sweep]\" (with torch pinned as in the README)"

#: Columns of sweep.csv, in order (sweep.json has the same fields per point).
COLUMNS = ("T", "weight_bits", "board", "lane_budget", "clock_mhz", "lanes", "interval_cycles", "golden_accuracy",
           "ann_accuracy", "logic_estimate", "ram_estimate", "images_per_second", "status", "logic_used",
           "ram_used", "fmax_mhz", "timing_met", "build_seconds", "build", "pareto", "error")


@dataclass(frozen=True)
class SweepAxes:
    """The values swept; a point for every combination.

    ``timesteps``/``weight_bits``: empty keeps a network file's own. ``lane_budgets``: None sizes the
    lanes for speed (``build``'s rule). ``clocks_mhz``: None runs the core from the board's oscillator.
    """
    timesteps: tuple[int, ...] = ()
    weight_bits: tuple[int, ...] = ()
    lane_budgets: tuple[int | None, ...] = (None,)
    clocks_mhz: tuple[float | None, ...] = (None,)
    boards: tuple[str, ...] = ("icebreaker",)


@dataclass(frozen=True)
class SweepRun:
    """How the points are built: ``estimate_only`` skips the tools; ``address`` names a Ray cluster (None
    starts a local instance of ``jobs`` CPUs, all of this machine's when None); at most ``jobs`` tasks run at
    once (None: the cluster's CPUs); nextpnr tries ``seeds``
    placements (``build --seeds``); the UART runs at ``baud``."""
    estimate_only: bool = False
    address: str | None = None
    jobs: int | None = None
    seeds: int = 1
    baud: int = 115200


def import_ray():
    """The ``ray`` module, or the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SpikesmithError(RAY_MISSING) from None
    return ray


#: ``--address`` forms: a Ray Client address or a cluster node's GCS address, as ``HOST:PORT`` (a name, an IPv4
#: address or a bracketed IPv6 one); ``auto``: the cluster `ray start` runs on this machine; ``local``: the default.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"(?:ray://)?(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{{1,5}})")


def parse_address(text: str) -> str | None:
    """``--address``, checked when the command line is read: None for ``local`` (a local instance of our own),
    ``auto``, or ``[ray://]HOST:PORT`` with a port of 1-65535; anything else is refused (Ray would spend half a
    minute on it and print its own lines)."""
    if text in ("local", "auto"):
        return None if text == "local" else text
    match = ADDRESS.fullmatch(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise SpikesmithError(f"{text!r} is not a Ray address: give ray://HOST:PORT (Ray Client, port 10001 by "
                              "default), HOST:PORT of a cluster node (6379 by default), auto or local")
    return text


def check_address(address: str | None) -> None:
    """Refuse in seconds a cluster address nothing listens at (Ray itself keeps trying for minutes)."""
    address = parse_address(address) if address else None
    if address is None or address == "auto":           # a local instance, or the cluster `ray start` runs here
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise SpikesmithError(f"nothing answers at {address} ({exc}): is the cluster up (ray start --head) and the "
                              "port reachable?") from None


@contextlib.contextmanager
def ray_session(run: SweepRun):
    """Ray for the length of a sweep: connected to ``run.address`` (:func:`preflight` checked that something
    answers there), or a local instance of ``run.jobs`` CPUs of our own (:func:`_local_instance`), shut down
    afterwards. SIGTERM keeps this process's handler (``ray.init`` replaces it)."""
    ray = import_ray()
    address = parse_address(run.address) if run.address else None
    with contextlib.ExitStack() as stack:
        stack.callback(ray.shutdown)
        try:
            if address:
                _connect(ray, address)
            else:
                stack.enter_context(_local_instance(ray, run.jobs or os.cpu_count()))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {run.address}" if run.address else "a local Ray instance"
            hint = ("" if not run.address or os.environ.get("RAY_AUTH_MODE") == "token" else
                    " (a cluster with token authentication needs RAY_AUTH_MODE=token here, and its token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN)")
            raise SpikesmithError(f"could not start or reach {where}: {str(exc).splitlines()[0]}{hint}") from None
        yield ray


#: Ray (2.60) binds its servers (GCS, raylet, object manager, workers) to every interface unless the node's
#: address is 127.0.0.1, and it only takes that address when clusters are off: ``_node_ip_address="127.0.0.1"``
#: is turned into the machine's address (ray/_private/services.py, ``resolve_ip_for_localhost``). This
#: variable, "0", turns clusters off for the processes Ray starts; this process read it when it imported ray
#: (``ray_constants.ENABLE_RAY_CLUSTER``). tests/test_sweep.py checks every listener is on loopback.
RAY_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _local_instance(ray, cpus: int):
    """A local Ray instance of ``cpus`` CPUs that only this user on this machine can reach: every server on
    loopback (:data:`RAY_CLUSTERS`), no dashboard, and Ray's files (its session folder: logs, sockets, spilled
    objects) and its authentication token (0600) in a folder of our own (0700), removed afterwards. Ray
    itself would write the token to ``~/.ray/auth_token`` (0644, in a 0755 folder) and its session to
    ``/tmp/ray``; it makes its temporary folder 0777, hence the folder of ours around it."""
    from ray._private import ray_constants

    folder = tempfile.mkdtemp(prefix="spikesmith-ray-")
    token = os.path.join(folder, "auth_token")
    saved = {name: os.environ.get(name) for name in (RAY_CLUSTERS, "RAY_AUTH_TOKEN_PATH")}
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    try:
        descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_hex(32))
        # (used only if token authentication is on: Ray's default for a local instance, unless RAY_AUTH_MODE says
        # otherwise; RAY_AUTH_TOKEN, when set, comes first)
        os.environ.update({RAY_CLUSTERS: "0", "RAY_AUTH_TOKEN_PATH": token})
        ray_constants.ENABLE_RAY_CLUSTER = False
        _forget_token()
        # ("local": a new instance of our own, even beside another sweep's or a `ray start` one)
        _init(ray, address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
              logging_level=logging.ERROR, object_store_memory=256 * 1024 * 1024,
              _temp_dir=os.path.join(folder, "ray"))
        yield
    finally:
        ray.shutdown()                          # (also when ray.init failed half-way)
        ray_constants.ENABLE_RAY_CLUSTER = clusters
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _forget_token()
        shutil.rmtree(folder, ignore_errors=True)


def _forget_token() -> None:
    """Ray keeps the first token it read for the life of the process; the next instance has a new one."""
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


def _init(ray, **kwargs) -> None:
    """``ray.init``, keeping this process's SIGTERM handler. ray.init installs its own (``sys.exit(15)``), and
    its core worker a C++ one that prints stack lines; a SIGTERM that arrives during ray.init is handed
    to this process's handler once Ray is shut down."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        ray.shutdown()
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)


#: Ray Client connections tried before giving up: its server starts a process per client, which can fail
#: on a busy head ("Initialization failure from server") and succeed a moment later.
CLIENT_ATTEMPTS = 3


def _connect(ray, address: str) -> None:
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            _init(ray, address=address, log_to_driver=False, logging_level=logging.ERROR)
            return
        except ConnectionError as exc:
            if not str(exc).startswith("Initialization failure from server") or attempt == CLIENT_ATTEMPTS:
                raise
            ray.shutdown()                      # (the half-made connection)
            time.sleep(2.0 * attempt)


def preflight(source: Path, axes: "SweepAxes", run: SweepRun, calib):
    """What a sweep refuses before it writes anything or starts Ray: Ray missing, a cluster address nothing
    listens at, a source it cannot sweep (:func:`check_source`, whose network or model IR it returns)."""
    import_ray()
    check_address(run.address)
    return check_source(source, axes, calib)


# ---------------------------------------------------------------------------- the tasks

def scratch_prefix(pid: int) -> str:
    """The name of the folder a sweep (process ``pid``) makes for its builds' temporary folders."""
    return f"spikesmith-sweep-{pid}-"


def build_task(prepared, seeds: int, scratch: str | None = None) -> dict:
    """A Ray task: yosys and nextpnr on one prepared board top, in a temporary folder of the worker: inside
    the sweep's ``scratch`` folder where the worker sees it (the driver's machine: removed with it, also when a
    task is killed), else in the worker's temporary folder.
    Returns nextpnr's figures with the bitstream and timing report, or the tools' one-line error (a
    verdict on the design, cached like a result)."""
    from .gen.build import BuildError, run_tools

    parent = scratch if scratch is not None and os.path.isdir(scratch) else None
    with tempfile.TemporaryDirectory(prefix="spikesmith-build-", dir=parent) as tmp:
        work = Path(tmp)
        try:
            figures = run_tools(prepared, work, seeds)
        except BuildError as exc:
            return {"error": str(exc)}
        return {"figures": figures, "bitstream": (work / prepared.board.bitstream).read_bytes(),
                "timing": (work / "top.tim").read_text()}


def _ray_failure(exc: BaseException) -> str:
    """One line for a task Ray could not run (a lost worker or node, a failed connection)."""
    cause = getattr(exc, "cause", None) or exc
    return f"Ray: {type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1]}"


class TaskPool:
    """At most ``jobs`` Ray tasks in flight; results as they finish."""

    def __init__(self, ray, jobs: int):
        self.ray, self.jobs, self.pending = ray, jobs, {}

    def run(self, function: Callable, calls: list[tuple], on_done: Callable) -> None:
        """``function(*args)`` for each ``(key, args)`` of ``calls`` as a Ray task; ``on_done(key, result,
        failure)`` as each finishes (``failure``: Ray's one line when it could not run the task)."""
        remote = self.ray.remote(num_cpus=1, max_retries=1)(function)     # (a lost worker: once more)
        queue = list(calls)
        while queue or self.pending:
            while queue and len(self.pending) < self.jobs:
                key, args = queue.pop(0)
                self.pending[remote.remote(*args)] = key
            [done], _ = self.ray.wait(list(self.pending), num_returns=1)
            key = self.pending.pop(done)
            try:
                result, failure = self.ray.get(done), None
            except self.ray.exceptions.RayError as exc:
                result, failure = None, _ray_failure(exc)
            on_done(key, result, failure)


# ---------------------------------------------------------------------------- the points

@dataclass
class Conversion:
    """One (T, weight bits): its network (None if it failed), accuracy and error."""
    timesteps: int
    weight_bits: int
    net: object = None
    accuracy: dict = dataclasses.field(default_factory=dict)
    error: str | None = None


def _row(conversion: Conversion, board: str, budget, clock_mhz) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(T=conversion.timesteps, weight_bits=conversion.weight_bits, board=board,
               lane_budget="speed" if budget is None else budget, clock_mhz=clock_mhz, pareto=False,
               **conversion.accuracy)
    return row


def size_point(conversion: Conversion, board_name: str, budget, clock_mhz, run: SweepRun) -> tuple[dict, object]:
    """A point's row with its plan and estimates, and its prepared build (None when it is not built: a
    failed conversion, a plan that does not fit, ``estimate_only``)."""
    from .gen.build import BOARDS, check_fit, fastest, logic_estimate, plan_for_board, prepare_build, ram_estimate, \
        speed_candidates

    row = _row(conversion, board_name, budget, clock_mhz)
    if conversion.net is None:
        return {**row, "status": "failed", "error": conversion.error}, None
    board = BOARDS[board_name]
    try:
        if budget is None:
            plan = fastest(speed_candidates(conversion.net, board))["plan"]
        else:
            plan = plan_for_board(conversion.net, board, budget=budget)
        clock = board.clock_hz if clock_mhz is None else board.pll(clock_mhz * 1e6).output_hz
        row.update(lanes="/".join(str(layer.lanes) for layer in plan.layers),
                   interval_cycles=plan.initiation_interval, logic_estimate=logic_estimate(plan, board),
                   ram_estimate=ram_estimate(plan, board), images_per_second=round(clock / plan.initiation_interval, 1),
                   clock_mhz=round(clock / 1e6, 3))
        check_fit(plan, board)
    except SpikesmithError as exc:
        return {**row, "status": "does not fit" if row["lanes"] else "failed", "error": str(exc)}, None
    if run.estimate_only:
        return {**row, "status": "estimated"}, None
    prepared = prepare_build(plan, board, baud=run.baud, clock_hz=None if clock_mhz is None else clock_mhz * 1e6)
    return {**row, "status": "to build", "build": prepared.digest(run.seeds)}, prepared


def _built(row: dict, report: dict) -> dict:
    """A point's row with its build's figures (``report``: report.json of the build, or its error)."""
    if "error" in report:
        return {**row, "status": "failed", "error": report["error"]}
    logic = report["utilisation"].get("ICESTORM_LC") or report["utilisation"].get("TRELLIS_COMB")
    ram = report["utilisation"].get("ICESTORM_RAM") or report["utilisation"].get("DP16KD")
    return {**row, "status": "built", "logic_used": logic["used"] if logic else None,
            "ram_used": ram["used"] if ram else None, "fmax_mhz": report["fmax_mhz"],
            "timing_met": report["timing_met"], "build_seconds": report.get("tool_seconds")}


# ---------------------------------------------------------------------------- the cache

class BuildCache:
    """``DIR/builds/<hash>/``: each build's report.json, bitstream and nextpnr timing report, written whole
    (into a temporary folder, then renamed) as the build finishes, so an interrupted sweep keeps them."""

    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, digest: str) -> dict | None:
        try:
            return json.loads((self.folder / digest / "report.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, digest: str, report: dict, files: dict[str, bytes | str]) -> None:
        self.folder.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=self.folder))
        try:
            for name, content in files.items():
                (staging / name).write_bytes(content.encode() if isinstance(content, str) else content)
            write_atomic(staging / "report.json", json.dumps(report, indent=2) + "\n")
            shutil.rmtree(self.folder / digest, ignore_errors=True)
            os.replace(staging, self.folder / digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------- the sweep

def conversion_task(graph, calib_images, options, source: str, images, labels) -> tuple:
    """A Ray task: one (T, weight bits) of the model converted and evaluated with the golden model:
    (network, accuracy) or (None, the conversion's one-line error)."""
    from .gen.convert import convert_graph

    try:
        net = convert_graph(graph, calib_images, options, source=source)
    except SpikesmithError as exc:
        return None, str(exc)
    return net, evaluate_task(net, images, labels)


def evaluate_task(net, images: np.ndarray, labels: np.ndarray) -> dict:
    """The golden model's (and the float ANN's) accuracy of one network."""
    from .sim.evaluate import evaluate

    result = evaluate(net, images, labels)
    return {"golden_accuracy": result.golden_accuracy, "ann_accuracy": result.ann_accuracy}


def _net_weight_bits(net) -> int:
    return max(layer.weight_bits for layer in net.layers)


def check_source(source: Path, axes: SweepAxes, calib):
    """Refuse now what the sweep cannot do with ``source``: a network file keeps its T and weight width, a
    model needs calibration data (a fine-tuned one has its thresholds) and a fine-tuned model keeps its T. Returns what it read: the network file's
    network, or the model's float IR (a ``.pt2`` program or a ``.nir`` graph)."""
    if source.suffix in (".pt2", ".nir"):
        from .gen.convert import load_model_graph, model_timesteps

        graph = load_model_graph(source)
        fixed = model_timesteps(graph)
        if calib is None and fixed is None:
            raise SpikesmithError(f"sweeping a model ({source.suffix}) converts it: give the calibration data (--calib)")
        if fixed is not None and set(axes.timesteps) - {fixed}:
            raise SpikesmithError(f"{source} is fine-tuned for T={fixed} (its spike codes fix T): sweep it at -T "
                                  f"{fixed} or leave -T out")
        return graph
    from .gen.netfile import load_network

    net = load_network(source)
    bits = _net_weight_bits(net)
    if set(axes.timesteps) - {net.timesteps} or set(axes.weight_bits) - {bits}:
        raise SpikesmithError(f"{source} is a network file, converted at T={net.timesteps} with {bits}-bit weights: "
                              "sweep T and weight bits from the model (.pt2) with --calib")
    return net


def conversions(ray, pool: TaskPool, source: Path, loaded, axes: SweepAxes, data, calib, options) -> list[Conversion]:
    """Each (T, weight bits) of a model (``loaded``: its float IR) converted with ``options`` on ``calib``,
    or ``loaded``, a network file's network, as it is; each evaluated on ``data``, as Ray tasks."""
    from .gen.convert import model_timesteps
    from .gen.ir import Graph

    images, labels = ray.put(data.images), ray.put(data.labels)
    if not isinstance(loaded, Graph):
        found = []
        pool.run(evaluate_task, [(0, (loaded, images, labels))], lambda key, result, failure: found.append(
            Conversion(loaded.timesteps, _net_weight_bits(loaded), loaded, result or {}, failure)))
        return found
    timesteps = axes.timesteps or (model_timesteps(loaded) or options.timesteps,)
    graph, calib_images = ray.put(loaded), ray.put(None if calib is None else calib.images)
    points = [(t, b) for t in timesteps for b in axes.weight_bits or (options.weight_bits,)]
    found: dict = {}

    def done(key, result, failure):
        net, outcome = result if result is not None else (None, failure)
        found[key] = Conversion(*key, net, outcome if net is not None else {}, None if net is not None else outcome)

    pool.run(conversion_task, [((t, b), (graph, calib_images, dataclasses.replace(options, timesteps=t, weight_bits=b),
                                         str(source), images, labels)) for t, b in points], done)
    return [found[point] for point in points]


def _build_points(pool: TaskPool, rows: list[dict], prepared: dict, cache: BuildCache, seeds: int, bar,
                  scratch: str) -> int:
    """Build every prepared point not in ``cache`` (each written there as it finishes); cached ones are
    read back. ``bar`` counts points (all of them): those without a build at once, the others as they
    finish. ``scratch``: the folder for the builds' temporary folders. Returns the number of builds run."""
    calls = []
    for index, build in prepared.items():
        report = cache.get(rows[index]["build"])
        if report is None:
            calls.append((index, (build, seeds, scratch)))
        else:
            built = _built(rows[index], report)
            rows[index] = {**built, "status": "cached" if built["status"] == "built" else built["status"],
                           "cached": True}
    bar.update(len(rows) - len(calls))               # every point but those still to build is done

    def done(index, result, failure):
        row, build = rows[index], prepared[index]
        if failure is not None:                      # Ray could not run it: not cached, tried again next time
            rows[index] = {**row, "status": "failed", "error": failure}
        else:
            from .gen.build import build_report

            report = ({"error": result["error"]} if "error" in result else
                      build_report(build, result["figures"], cache.folder / row["build"] / build.board.bitstream))
            cache.put(row["build"], report, {} if "error" in result else
                      {build.board.bitstream: result["bitstream"], "top.tim": result["timing"]})
            rows[index] = {**_built(row, report), "cached": False}
        bar.update(1)

    pool.run(build_task, calls, done)
    return len(calls)


def run_sweep(source: Path, axes: SweepAxes, run: SweepRun, out: Path, data, *, calib=None, options=None,
              progress: Callable[[str], None] = lambda message: None, quiet: bool = False) -> dict:
    """The sweep: every point's row (:data:`COLUMNS`), the Pareto front, the estimator's error against
    nextpnr; sweep.json, sweep.csv and sweep.png written into ``out`` (and the builds under ``out/builds``)."""
    import itertools

    from tqdm import tqdm

    from .gen.convert import ConversionOptions

    loaded = preflight(source, axes, run, calib)       # (refused: nothing is written)
    check_output_folder(out)
    options = options or ConversionOptions()
    progress(f"sweeping {source} on {data.describe()}")
    started = time.perf_counter()
    # The builds' temporary folders live in ``scratch``, removed after Ray has stopped (its tasks with it).
    with (tempfile.TemporaryDirectory(prefix=scratch_prefix(os.getpid()), ignore_cleanup_errors=True) as scratch,
          ray_session(run) as ray):
        out = claim_outputs(out, ["builds", *OUTPUTS])  # (once Ray is up: a cluster it cannot reach writes nothing)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        run = dataclasses.replace(run, jobs=run.jobs or cpus)
        pool = TaskPool(ray, run.jobs)
        progress(f"Ray: {len([n for n in ray.nodes() if n.get('Alive')])} node(s), {cpus} CPUs, {run.jobs} tasks at "
                 "once; converting and evaluating")
        converted = conversions(ray, pool, source, loaded, axes, data, calib, options)
        rows, prepared = [], {}
        for conversion, board, budget, clock in itertools.product(converted, axes.boards, axes.lane_budgets,
                                                                  axes.clocks_mhz):
            row, build = size_point(conversion, board, budget, clock, run)
            if build is not None:
                prepared[len(rows)] = build
            rows.append(row)
        progress(f"{len(rows)} points sized and estimated" + ("" if run.estimate_only else
                 f"; {len(prepared)} to build or read from {out / 'builds'} (yosys + nextpnr, minutes each)"))
        with tqdm(total=len(rows), desc="points", unit="point", disable=quiet) as bar:
            ran = _build_points(pool, rows, prepared, BuildCache(out / "builds"), run.seeds, bar, scratch)
    summary = {"source": str(source), "data": data.describe(), "axes": dataclasses.asdict(axes),
               "run": dataclasses.asdict(run), "points": mark_pareto(rows), "estimator_error": estimator_error(rows),
               "builds_run": ran, "builds_cached": sum(bool(row.get("cached")) for row in rows),
               "seconds": round(time.perf_counter() - started, 1)}
    write_outputs(out, summary)
    return summary


# ---------------------------------------------------------------------------- the results

def _logic(row: dict):
    return row["logic_used"] if row["logic_used"] is not None else row["logic_estimate"]


def mark_pareto(rows: list[dict]) -> list[dict]:
    """``pareto`` set on the points no other point beats in every one of golden accuracy (higher), logic
    (lower: nextpnr's count when built, else the estimate) and images/s (higher), and not worse in one.
    Only points with figures take part: estimated, or built and meeting their clock."""
    def usable(row):
        return row["status"] in ("estimated", "built", "cached") and row["timing_met"] is not False

    def key(row):
        return (row["golden_accuracy"], -_logic(row), row["images_per_second"])

    ranked = [key(row) for row in rows if usable(row)]
    for row in rows:
        mine = key(row) if usable(row) else None
        row["pareto"] = mine is not None and not any(
            all(a >= b for a, b in zip(theirs, mine)) and theirs != mine for theirs in ranked)
    return rows


def estimator_error(rows: list[dict]) -> dict:
    """Per board, over the built points: the logic estimate's error against nextpnr's count (percent of the
    count) and the block-RAM estimate's (blocks)."""
    errors: dict = {}
    for row in rows:
        if row["status"] in ("built", "cached") and row["logic_used"]:
            board = errors.setdefault(row["board"], {"logic_pct": [], "ram_blocks": []})
            board["logic_pct"].append(100 * (row["logic_estimate"] - row["logic_used"]) / row["logic_used"])
            board["ram_blocks"].append(row["ram_estimate"] - (row["ram_used"] or 0))
    return {name: {"points": len(e["logic_pct"]),
                   "logic_mean_pct": round(float(np.mean(e["logic_pct"])), 2),
                   "logic_mean_abs_pct": round(float(np.mean(np.abs(e["logic_pct"]))), 2),
                   "logic_max_abs_pct": round(float(np.max(np.abs(e["logic_pct"]))), 2),
                   "ram_mean_abs_blocks": round(float(np.mean(np.abs(e["ram_blocks"]))), 2),
                   "ram_max_abs_blocks": int(np.max(np.abs(e["ram_blocks"])))}
            for name, e in errors.items()}


def write_outputs(out: Path, summary: dict) -> None:
    """sweep.json, sweep.csv and sweep.png, each written whole (the folder's manifest lists them already)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["points"])
    write_output(out, "sweep.csv", text.getvalue())
    write_output(out, "sweep.json", json.dumps(summary, indent=2) + "\n")
    write_output(out, "sweep.png", plot(summary["points"]))


def plot(rows: list[dict]) -> bytes:
    """Golden accuracy against images/s and against logic, a colour and marker per board, the Pareto front
    filled, builds that missed their clock crossed (points that do not fit or failed are left out): PNG."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    shown = [row for row in rows if row["status"] in ("estimated", "built", "cached")]
    figure, (rate_axis, logic_axis) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for k, board in enumerate(sorted({row["board"] for row in shown})):
        colour, marker = f"C{k}", "os^D"[k % 4]
        groups = {"Pareto front": [r for r in shown if r["board"] == board and r["pareto"]],
                  "beaten": [r for r in shown if r["board"] == board and not r["pareto"] and r["timing_met"] is not False],
                  "missed its clock": [r for r in shown if r["board"] == board and r["timing_met"] is False]}
        for name, mine in groups.items():
            style = {"Pareto front": dict(marker=marker, color=colour, s=55),
                     "beaten": dict(marker=marker, facecolors="none", edgecolors=colour, s=40),
                     "missed its clock": dict(marker="x", color=colour, s=40)}[name]
            for axis, x in ((rate_axis, lambda r: r["images_per_second"]), (logic_axis, _logic)):
                axis.scatter([x(r) for r in mine], [100 * r["golden_accuracy"] for r in mine],
                             label=f"{board}: {name}" if mine and axis is rate_axis else None, **style)
    for row in shown:
        if row["pareto"]:
            rate_axis.annotate(f"T{row['T']}/{row['weight_bits']}b/{row['lanes']}",
                               (row["images_per_second"], 100 * row["golden_accuracy"]), fontsize=7,
                               xytext=(3, 3), textcoords="offset points")
    rate_axis.set(xscale="log", xlabel="core images/s at the clock (worst case)", ylabel="golden accuracy (%)")
    logic_axis.set(xscale="log", xlabel="logic: LC or LUT4 (nextpnr's when built, else the estimate)")
    for axis in (rate_axis, logic_axis):
        low, high = axis.get_xlim()
        axis.xaxis.set_major_formatter(EngFormatter(sep=""))
        axis.xaxis.set_minor_formatter(EngFormatter(sep="") if high < 10 * low else NullFormatter())  # (< a decade)
        axis.tick_params(axis="x", which="minor", labelsize=7)
        axis.grid(alpha=0.3)
    rate_axis.legend(fontsize=7)
    figure.suptitle("spikesmith sweep: filled points are the Pareto front (accuracy, logic, images/s)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
