"""cocotb bench that turns the simulated board top into a serial device on a loopback TCP port.

Started by :class:`spikesmith.sim.board.SimulatedBoard`. It listens on 127.0.0.1 (an
ephemeral port, written to ``SPIKESMITH_PORT_FILE``), and bridges the connection to the
board's UART pins: bytes from the host are shifted into ``rx`` bit by bit (8N1), bytes the
board shifts out on ``tx`` go back to the host. The host driver opens it as
``socket://127.0.0.1:PORT`` with pyserial, exactly as it opens a real board's serial port.

The connection is private: any local process can connect to a loopback port, so the bench
takes only a connection whose first bytes are the run's token (``SPIKESMITH_TOKEN_FILE``, in
the simulated board's 0700 folder); it closes any other once it has sent as many bytes or
after :data:`TOKEN_SECONDS`, and keeps waiting for the right one.
When the host closes the connection the simulation ends and writes its cycle count to
``SPIKESMITH_STATS``. A second port, the *control* connection (``SimulatedBoard.clock``),
answers each request with the simulated time: cycles since reset and when the last byte to the
host ended, so the host can time a stretch of its run in simulated cycles.

Every wait is a :class:`Timer` of whole clock periods started on a falling clock edge, so the
bench changes ``rx`` and samples ``tx`` half a period away from the rising edges and no Python
runs on the cycles in between (``ClockCycles`` would wake it on every edge).
"""

from __future__ import annotations

import hmac
import json
import os
import select
import socket
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer
from cocotb.utils import get_sim_time

ACCEPT_SECONDS = 120
TOKEN_SECONDS = 5.0          # a connection has this long to present the token
MOST_PENDING = 64            # connections waiting to present it (more: the oldest is closed)
CLOCK_NS = 10


def cycles(count: int) -> Timer:
    """Wait ``count`` clock periods (from a falling edge: to a falling edge)."""
    return Timer(count * CLOCK_NS, unit="ns")


class SimTime:
    """Simulated cycles since reset, and when the last byte to the host ended (the run's end)."""

    def __init__(self):
        self.start = get_sim_time(unit="ns")
        self.last_tx = 0

    def now(self) -> int:
        return int((get_sim_time(unit="ns") - self.start) // CLOCK_NS)


async def _board_to_host(dut, divisor: int, conn: socket.socket, clock: SimTime):
    """Sample the board's tx line at the middle of each bit; send every byte to the host."""
    while True:
        await FallingEdge(dut.tx)                       # a start bit (tx changes on a rising edge)
        await Timer(divisor // 2 * CLOCK_NS + CLOCK_NS // 2, unit="ns")     # mid-bit, on a falling edge
        if dut.tx.value:                                 # a glitch, not a start bit
            continue
        value = 0
        for bit in range(8):
            await cycles(divisor)
            value |= int(dut.tx.value) << bit
        await cycles(divisor)                            # the stop bit
        clock.last_tx = clock.now()
        try:
            conn.sendall(bytes([value]))
        except OSError:
            return


def _listen() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    return server


def accept_presenting(server: socket.socket, token: bytes, seconds: float = ACCEPT_SECONDS) -> socket.socket:
    """The first connection to ``server`` whose first bytes are ``token`` (read off; what follows stays
    in the socket); then ``server`` is closed. Other connections are closed once they have sent
    ``len(token)`` bytes, or after :data:`TOKEN_SECONDS` (a guess is read whole before it is compared,
    so how it is refused says nothing of which bytes were right). ``TimeoutError`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    pending: dict[socket.socket, tuple[bytearray, float]] = {}       # connection -> (bytes so far, until)
    try:
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"no connection presented the token in {seconds:g} s")
            for conn in [conn for conn, (_, until) in pending.items() if until < now]:
                del pending[conn]
                conn.close()
            readable, _, _ = select.select([server, *pending], [], [], 0.2)
            for conn in readable:
                if conn is server:
                    try:
                        accepted, _ = server.accept()
                    except (BlockingIOError, ConnectionError):
                        continue
                    accepted.setblocking(False)
                    if len(pending) >= MOST_PENDING:
                        oldest = next(iter(pending))
                        del pending[oldest]
                        oldest.close()
                    pending[accepted] = (bytearray(), now + TOKEN_SECONDS)
                    continue
                got, _ = pending[conn]
                try:
                    chunk = conn.recv(len(token) - len(got))
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                got += chunk
                if chunk and len(got) < len(token):
                    continue
                del pending[conn]
                if chunk and hmac.compare_digest(bytes(got), token):
                    conn.setblocking(True)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return conn
                conn.close()
    finally:
        server.close()
        for conn in pending:
            conn.close()


def _answer(control: socket.socket, clock: SimTime, received: int) -> bool:
    """A request on the control connection: the simulated time, as a JSON line. False: it closed."""
    try:
        if not control.recv(64):
            return False
        control.sendall((json.dumps({"cycles": clock.now(), "last_tx_cycle": clock.last_tx,
                                     "bytes_from_host": received}) + "\n").encode())
    except OSError:
        return False
    return True


async def _host_to_board(dut, divisor: int, conn: socket.socket, control: socket.socket | None, clock: SimTime) -> int:
    """Shift the host's bytes into rx (8N1) until it closes the port; answer the control connection
    between chunks. Returns the bytes received."""
    received = 0
    while True:
        readable, _, _ = select.select([conn] + ([control] if control else []), [], [], 0)
        if control in readable and not _answer(control, clock, received):
            control = None
        if conn not in readable:
            await cycles(10 * divisor)                   # idle line for one character time
            continue
        data = conn.recv(4096)
        if not data:                                     # the host closed the port
            return received
        received += len(data)
        for byte in data:
            for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                dut.rx.value = bit
                await cycles(divisor)


@cocotb.test()
async def serve(dut):
    divisor = int(os.environ["SPIKESMITH_DIVISOR"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    await cycles(4)
    dut.rst.value = 0
    clock = SimTime()

    token = Path(os.environ["SPIKESMITH_TOKEN_FILE"]).read_bytes()
    server, control_server = _listen(), _listen()
    with open(os.environ["SPIKESMITH_PORT_FILE"] + ".tmp", "w") as f:
        f.write(f"{server.getsockname()[1]} {control_server.getsockname()[1]}")
    os.replace(os.environ["SPIKESMITH_PORT_FILE"] + ".tmp", os.environ["SPIKESMITH_PORT_FILE"])
    control = accept_presenting(control_server, token)   # SimulatedBoard connects it before it opens the port
    conn = accept_presenting(server, token)
    cocotb.start_soon(_board_to_host(dut, divisor, conn, clock))
    received = await _host_to_board(dut, divisor, conn, control, clock)
    await cycles(20 * divisor)
    conn.close()
    control.close()
    with open(os.environ["SPIKESMITH_STATS"], "w") as f:
        json.dump({"cycles": clock.now(), "last_tx_cycle": clock.last_tx, "bytes_from_host": received}, f)
