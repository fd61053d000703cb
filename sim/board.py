"""The simulated board: the Verilator model of the board top (``spikesmith.hw.board``) serving
its UART on ``socket://127.0.0.1:PORT`` (``sim/board_bench.py`` bridges the two).

The host driver opens that URL as it opens a real board's ``/dev/ttyUSB1`` (any pyserial
URL), and cannot tell them apart.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from amaranth.back import verilog

from ..contract.protocol import FRAMING
from ..errors import SpikesmithError
from ..gen.board import DEFAULT_WINDOW, board_params
from ..hw.board import BoardTop
from .verilator import build_verilog, run_cocotb

__all__ = ["SimulatedBoard", "SIM_CLOCK_HZ", "SIM_BAUD"]

#: The simulated board's default clock and UART rate: 8 clock cycles per bit keeps simulation quick.
SIM_CLOCK_HZ = 12_000_000
SIM_BAUD = 1_500_000
#: Wall-clock seconds to wait for the simulated time (the bench answers between chunks it shifts in).
CLOCK_SECONDS = 120.0


class SimulatedBoard:
    """The board top for a plan under Verilator at ``clock_hz`` and ``baud`` (refused in one line
    when the clock cannot make the baud rate within 2 %), reachable at :attr:`url` while open.

        with SimulatedBoard(plan, cache_dir, baud=3_000_000) as board:
            with Accelerator.open(board.url, timeout=30) as driver:
                start = board.clock()["cycles"]                      # simulated cycles since reset
                ...
                cycles = board.clock()["last_tx_cycle"] - start      # ... to the last byte sent to the host
        board.stats     # {"cycles": simulated clock cycles, ...}
    """

    def __init__(self, plan, cache_dir: Path, *, window: int | None = None, clock_hz: float = SIM_CLOCK_HZ,
                 baud: int = SIM_BAUD, progress=lambda message: None, start_seconds: float = 180.0):
        self.params = board_params(plan, clock_hz, baud, window or DEFAULT_WINDOW)
        self.clock_hz, self.baud = int(clock_hz), baud
        self.cache_dir, self.progress, self.start_seconds = Path(cache_dir), progress, start_seconds
        self.url: str | None = None
        self.stats: dict = {}
        self._control: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None
        self._folder: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "SimulatedBoard":
        text = verilog.convert(BoardTop(self.params), name="spikesmith_board", emit_src=False)
        build = build_verilog(text, "spikesmith_board", self.cache_dir, waves=False, progress=self.progress)
        self._folder = tempfile.TemporaryDirectory(prefix="spikesmith-board-")
        folder = Path(self._folder.name)
        port_file = folder / "port"
        env = {"SPIKESMITH_DIVISOR": str(self.params.divisor), "SPIKESMITH_PORT_FILE": str(port_file),
               "SPIKESMITH_STATS": str(folder / "stats.json")}

        def run():
            self._failure = run_cocotb(build, "spikesmith.sim.board_bench", folder, env)

        self._thread = threading.Thread(target=run, name="simulated-board", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_seconds
        while not port_file.is_file():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._cleanup()
                raise SpikesmithError(f"the simulated board did not start ({self._failure or 'timeout'}); "
                                      f"see {folder / 'sim.log'}")
            time.sleep(0.05)
        data_port, control_port = (int(port) for port in port_file.read_text().split())
        self._control = socket.create_connection(("127.0.0.1", control_port), timeout=CLOCK_SECONDS)
        self.url = f"socket://127.0.0.1:{data_port}"
        self.progress(f"simulated board listening at {self.url}")
        return self

    def reply_timeout(self, window: int) -> float:
        """Wall-clock seconds a reply may take here: 30 s, plus ``window`` + 1 times a frame's line time
        and the core's worst-case latency, simulated at a slow 20,000 cycles/s (an MNIST image at 115200
        baud is 824,000 cycles of line). The driver's timeout is wall-clock time: a shorter one resent
        images the board was still receiving, and the resends took the line (half of it, measured)."""
        p = self.params
        frame = 10 * (FRAMING + max(p.image_bytes, p.result_bytes, p.load_payload_bytes)) * p.divisor
        return 30.0 + (window + 1) * (frame + p.plan.latency_bound) / 20_000

    def clock(self) -> dict:
        """The simulated time now: ``cycles`` since reset, ``last_tx_cycle`` (when the last byte to the
        host ended) and ``bytes_from_host``. Answered between the chunks of host bytes the bench shifts in."""
        if self._control is None:
            raise SpikesmithError("the simulated board is not running")
        self._control.sendall(b"?")
        line = b""
        while not line.endswith(b"\n"):
            chunk = self._control.recv(4096)
            if not chunk:
                raise SpikesmithError("the simulated board stopped")
            line += chunk
        return json.loads(line)

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._folder is not None:
            stats = Path(self._folder.name) / "stats.json"
            if stats.is_file():
                self.stats = json.loads(stats.read_text())
            self._folder.cleanup()
            self._folder = None
