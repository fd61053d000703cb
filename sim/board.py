"""The simulated board: the Verilator model of the board top (``spikesmith.hw.board``) serving
its UART on a loopback TCP port (``sim/board_bench.py`` bridges the two).

The host driver takes the port :meth:`SimulatedBoard.open_port` opens (pyserial's
``socket://``) as it takes a real board's ``/dev/ttyUSB1``, and cannot tell them apart. The
connection is private: it must begin with a token of this run, which only this process knows
(the bench reads it from a 0700 folder), so another local process that connects first does
not take the board.
"""

from __future__ import annotations

import json
import os
import secrets
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
#: Bytes of the token a connection to the simulated board begins with.
TOKEN_BYTES = 16


class SimulatedBoard:
    """The board top for a plan under Verilator at ``clock_hz`` and ``baud`` (refused in one line
    when the clock cannot make the baud rate within 2 %), reachable by one :meth:`open_port` (or
    :meth:`connect`) while open; its TCP port is :attr:`address`, but a connection that does not
    begin with this run's token is closed.

        with SimulatedBoard(plan, cache_dir, baud=3_000_000) as board:
            with Accelerator(board.open_port(), timeout=30) as driver:
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
        self.address: tuple[str, int] | None = None     # the UART's TCP port, while open
        self.stats: dict = {}
        self._token = secrets.token_bytes(TOKEN_BYTES)
        self._control: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None
        self._folder: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "SimulatedBoard":
        text = verilog.convert(BoardTop(self.params), name="spikesmith_board", emit_src=False)
        build = build_verilog(text, "spikesmith_board", self.cache_dir, waves=False, progress=self.progress)
        self._folder = tempfile.TemporaryDirectory(prefix="spikesmith-board-")      # (mode 0700: mkdtemp)
        folder = Path(self._folder.name)
        port_file, token_file = folder / "port", folder / "token"
        with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(self._token)
        env = {"SPIKESMITH_DIVISOR": str(self.params.divisor), "SPIKESMITH_PORT_FILE": str(port_file),
               "SPIKESMITH_TOKEN_FILE": str(token_file), "SPIKESMITH_STATS": str(folder / "stats.json")}

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
        try:
            self._control = self._connect(control_port)
        except SpikesmithError:
            self._cleanup()
            raise
        self.address = ("127.0.0.1", data_port)
        self.progress(f"simulated board listening on 127.0.0.1:{data_port} (private: a connection begins with "
                      "this run's token)")
        return self

    def _connect(self, port: int) -> socket.socket:
        """A connection to the bench's ``port`` that has presented the token."""
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=CLOCK_SECONDS)
            conn.sendall(self._token)
        except OSError as exc:
            raise SpikesmithError(f"cannot connect to the simulated board: {exc}") from exc
        return conn

    def connect(self) -> socket.socket:
        """A TCP connection to the board's UART (the token sent): the bytes of a serial line. Once only."""
        if self.address is None:
            raise SpikesmithError("the simulated board is not running")
        conn = self._connect(self.address[1])
        conn.settimeout(None)
        return conn

    def open_port(self):
        """The board's UART as a pyserial port (``socket://``, reads never wait), the token sent: what
        :class:`spikesmith.host.driver.Accelerator` takes. Once only: the board then takes no other."""
        import serial

        if self.address is None:
            raise SpikesmithError("the simulated board is not running")
        host, port = self.address
        try:
            serial_port = serial.serial_for_url(f"socket://{host}:{port}", timeout=0)
            serial_port.write(self._token)
        except (serial.SerialException, OSError) as exc:
            raise SpikesmithError(f"cannot connect to the simulated board: {exc}") from exc
        return serial_port

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
        line = b""
        try:
            self._control.sendall(b"?")
            while not line.endswith(b"\n"):
                chunk = self._control.recv(4096)
                if not chunk:
                    raise SpikesmithError("the simulated board stopped")
                line += chunk
        except OSError as exc:
            raise SpikesmithError(f"the simulated board stopped: {exc}") from exc
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
