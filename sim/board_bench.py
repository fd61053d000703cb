"""cocotb bench that turns the simulated board top into a serial device on a loopback TCP port.

Started by :class:`spikesmith.sim.board.SimulatedBoard`. It listens on 127.0.0.1 (an
ephemeral port, written to ``SPIKESMITH_PORT_FILE``), and bridges the connection to the
board's UART pins: bytes from the host are shifted into ``rx`` bit by bit (8N1), bytes the
board shifts out on ``tx`` go back to the host. The host driver opens it as
``socket://127.0.0.1:PORT`` with pyserial, exactly as it opens a real board's serial port.
When the host closes the connection the simulation ends and writes its cycle count to
``SPIKESMITH_STATS``.
"""

from __future__ import annotations

import json
import os
import select
import socket

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

ACCEPT_SECONDS = 120


class Cycles:
    count = 0


async def _count(dut, cycles: Cycles):
    while True:
        await ClockCycles(dut.clk, 1024)
        cycles.count += 1024


async def _board_to_host(dut, divisor: int, conn: socket.socket):
    """Sample the board's tx line at the middle of each bit; send every byte to the host."""
    while True:
        await FallingEdge(dut.tx)                       # a start bit
        await ClockCycles(dut.clk, divisor // 2)
        if dut.tx.value:                                 # a glitch, not a start bit
            continue
        value = 0
        for bit in range(8):
            await ClockCycles(dut.clk, divisor)
            value |= int(dut.tx.value) << bit
        await ClockCycles(dut.clk, divisor)              # the stop bit
        try:
            conn.sendall(bytes([value]))
        except OSError:
            return


@cocotb.test()
async def serve(dut):
    divisor = int(os.environ["SPIKESMITH_DIVISOR"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    cycles = Cycles()
    cocotb.start_soon(_count(dut, cycles))

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(ACCEPT_SECONDS)
    with open(os.environ["SPIKESMITH_PORT_FILE"] + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.replace(os.environ["SPIKESMITH_PORT_FILE"] + ".tmp", os.environ["SPIKESMITH_PORT_FILE"])
    conn, _ = server.accept()
    server.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cocotb.start_soon(_board_to_host(dut, divisor, conn))

    received = 0
    while True:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            await ClockCycles(dut.clk, 10 * divisor)     # idle line for one character time
            continue
        data = conn.recv(4096)
        if not data:                                     # the host closed the port
            break
        received += len(data)
        for byte in data:
            for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                dut.rx.value = bit
                await ClockCycles(dut.clk, divisor)
    await ClockCycles(dut.clk, 20 * divisor)
    conn.close()
    with open(os.environ["SPIKESMITH_STATS"], "w") as f:
        json.dump({"cycles": cycles.count, "bytes_from_host": received}, f)
