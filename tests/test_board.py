"""The board top: UART and CRC in amaranth.sim; the whole board under Verilator behind a socket."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spikesmith.gen.sizing import plan_core
from spikesmith.contract.protocol import FRAMING, ErrorCode, FrameDecoder, FrameType, Identity, encode_frame
from spikesmith.sim.board import SimulatedBoard
from spikesmith.processes import started_group
from spikesmith.hw.uart import UARTReceiver, UARTTransmitter
from spikesmith.sim import golden
from spikesmith.sim.random_networks import random_codes

from conftest import assert_one_line_error, descendants, make_network, run_cli, signal_a_waiting_infer


class Loopback(wiring.Component):
    def __init__(self, divisor):
        self.divisor = divisor
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = self.tx = UARTTransmitter(self.divisor)
        m.submodules.rx = self.rx = UARTReceiver(self.divisor)
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_uart_transmitter_holds_each_bit_divisor_cycles(divisor):
    """0x55 on the line: start bit low, then alternating bits LSB first, the stop bit high: ten runs of
    exactly ``divisor`` cycles each."""
    dut = UARTTransmitter(divisor)
    line = []

    async def bench(ctx):
        ctx.set(dut.data.payload, 0x55)
        ctx.set(dut.data.valid, 1)
        await ctx.tick().until(dut.data.ready)
        ctx.set(dut.data.valid, 0)
        for _ in range(12 * divisor):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    bits = line[line.index(0):][:10 * divisor]
    assert bits == [bit for k in range(10) for bit in [(0x155 << 1 >> k) & 1] * divisor]


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_uart_loopback_carries_every_byte(divisor):
    dut = Loopback(divisor)
    sent = list(range(256))[:: 5 if divisor > 4 else 1]
    got = []

    async def send(ctx):
        for byte in sent:
            ctx.set(dut.tx.data.payload, byte)
            ctx.set(dut.tx.data.valid, 1)
            await ctx.tick().until(dut.tx.data.ready)
        ctx.set(dut.tx.data.valid, 0)

    async def take(ctx):
        ctx.set(dut.rx.data.ready, 1)
        while len(got) < len(sent):
            _, _, valid, payload = await ctx.tick().sample(dut.rx.data.valid, dut.rx.data.payload)
            if valid:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(send)
    sim.add_testbench(take)
    sim.run()
    assert got == sent


def exchange(conn, request: bytes, replies: int, seconds: float = 20.0):
    conn.sendall(request)
    decoder = FrameDecoder()
    frames, deadline = [], time.monotonic() + seconds
    conn.settimeout(0.2)
    while len(frames) < replies and time.monotonic() < deadline:
        try:
            frames += decoder.feed(conn.recv(4096))
        except socket.timeout:
            pass
    return frames


@pytest.fixture(scope="module")
def small_board(tmp_path_factory):
    """A small random network's board top under Verilator, with a raw socket to it.

    Few inputs and many classes: a result frame takes far longer on the wire than a request,
    so a burst of requests really does pile up in the board.
    """
    net = make_network(np.random.default_rng(8), [4, 7, 24], 5, negative_bias=0.5, threshold_scale=0.3)
    plan = plan_core(net, lanes=[3, 4], input_lanes=4)
    cache = tmp_path_factory.mktemp("verilator")
    with SimulatedBoard(plan, cache) as board:
        with board.connect() as conn:
            yield net, board, conn, cache


def test_board_protocol_on_the_wire(small_board):
    net, board, conn, _ = small_board
    [identity] = exchange(conn, encode_frame(FrameType.IDENTIFY, 7), 1)
    assert (identity.type, identity.seq) == (FrameType.IDENTITY, 7)
    info = Identity.decode(identity.payload)
    assert info.fingerprint_text == board.params.plan.fingerprint and info.inputs == 4 and info.window == 3

    codes = np.random.default_rng(1).integers(0, 32, size=(3, 4))
    frames = exchange(conn, b"".join(encode_frame(FrameType.INFER, 100 + k, info.encode_image(row))
                                     for k, row in enumerate(codes)), 3)
    expected = golden.run(net, codes)
    assert [f.seq for f in frames] == [100, 101, 102]
    for frame, label, logits in zip(frames, expected.predictions, expected.logits):
        assert info.decode_result(frame.payload) == (label, logits.tolist())

    damaged = bytearray(encode_frame(FrameType.INFER, 200, info.encode_image(codes[0])))
    damaged[9] ^= 0x04
    wrong_crc = bytearray(encode_frame(FrameType.INFER, 203, info.encode_image(codes[0])))
    wrong_crc[-1] ^= 0x01                                            # the CRC-32's last byte
    cases = [(bytes(damaged), 200, ErrorCode.CRC), (bytes(wrong_crc), 203, ErrorCode.CRC),
             (encode_frame(FrameType.INFER, 201, bytes(9)), 201, ErrorCode.LENGTH),
             (encode_frame(0x33, 202), 202, ErrorCode.TYPE)]
    for request, seq, code in cases:
        [reply] = exchange(conn, b"\x00\x17" + request, 1)        # noise before: the board hunts for the sync
        assert (reply.type, reply.seq, reply.payload) == (FrameType.ERROR, seq, bytes([code]))

    # More than the window at once: the extra requests are refused BUSY, none silently dropped.
    burst = b"".join(encode_frame(FrameType.INFER, 300 + k, info.encode_image(codes[k % 3])) for k in range(9))
    frames = exchange(conn, burst, 9)
    results = sorted(f.seq for f in frames if f.type == FrameType.RESULT)
    busy = sorted(f.seq for f in frames if f.type == FrameType.ERROR and f.payload == bytes([ErrorCode.BUSY]))
    assert sorted(results + busy) == list(range(300, 309)) and len(results) >= 3 and busy


@pytest.mark.parametrize("window,lanes", [(1, 3), (2, 3), (3, 3), (4, 3), (4, 2)])
def test_board_tops_of_small_windows_pass_verilator_lint(tmp_path, window, lanes):
    """With run-time weights (3-byte rows, 170 a LOAD; 2-byte rows, 255) and every small window. A window
    of 2 once made Amaranth's buffered FIFO emit a zero-width address (``[-1:0]``) that Verilator refused
    (``infer --sim --window 2`` did not build), and 255 rows a LOAD a constant compare (CMPCONST)."""
    from amaranth.back import verilog

    from spikesmith.gen.board import board_params
    from spikesmith.gen.emit import lint_verilog
    from spikesmith.hw.board import BoardTop

    net = make_network(np.random.default_rng(8), [4, 7, 24], 5, negative_bias=0.5, threshold_scale=0.3)
    params = board_params(plan_core(net, lanes=[lanes, 4], input_lanes=4, loaded_weights=[0]), 12_000_000, 1_500_000,
                          window)
    assert params.load_rows == {3: 170, 2: 255}[lanes]
    path = tmp_path / "board.v"
    path.write_text(verilog.convert(BoardTop(params), name="spikesmith_board", emit_src=False))
    assert lint_verilog(path, top="spikesmith_board") == []


def test_the_simulated_board_waits_for_its_slow_line(tmp_path):
    """The driver's timeout is wall-clock time: at 115200 baud an MNIST-sized frame is 824,000 simulated
    cycles (about 10 s of simulation here), so the 30 s it had resent the fourth image in flight while the
    board was still receiving the first, and the resends took half the line (bench/endtoend.py)."""
    net = make_network(np.random.default_rng(0), [784, 4, 3], 8)
    slow = SimulatedBoard(plan_core(net, lanes=[4, 3]), tmp_path, baud=115_200)        # not started
    frame_cycles = 10 * (FRAMING + 784) * 104
    assert slow.reply_timeout(4) >= 30 + 5 * frame_cycles / 20_000
    assert SimulatedBoard(plan_core(net, lanes=[4, 3]), tmp_path).reply_timeout(4) < 60     # 1.5 Mbaud: quick


@pytest.mark.long
def test_a_core_slower_than_the_line_never_loses_a_byte(tmp_path):
    """A first layer of 50,000 cycles an image behind a 3 Mbaud line (2,240 cycles a frame): the board's
    window (3: the image buffer and the core's two input banks) keeps the host from sending an image it
    cannot hold. With 4 the fourth waited in the UART's 32-byte FIFO, which overflowed: CRC errors and
    resends after a timeout (bench/endtoend.py: MNIST on the iCEBreaker plan at 3 Mbaud, 7 images/s)."""
    from spikesmith.host.driver import Accelerator

    net = make_network(np.random.default_rng(3), [48, 128, 4], 8, negative_bias=0.5, threshold_scale=0.3)
    plan = plan_core(net, lanes=[1, 1], input_lanes=1, skip_silent=False)
    codes = np.full((5, 48), net.max_code)            # more than the window of 3
    with SimulatedBoard(plan, tmp_path, baud=3_000_000) as board, Accelerator(board.open_port(), timeout=10) as driver:
        driver.expect(net)
        results = list(driver.infer(codes))
        assert driver.window == 3 and plan.initiation_interval > 20 * 2240
        assert driver.stats.resent == 0 and not driver.stats.board_errors
    assert [r.logits for r in results] == golden.run(net, codes).logits.tolist()


@pytest.mark.long
def test_infer_command_on_the_simulated_board(digits_demo, tmp_path):
    """``spikesmith infer --sim``: 40 digits test images through the UART board top in Verilator,
    every logit checked with the golden model (the core alone takes all 450 in tests/test_harness.py)."""
    proc = run_cli("infer", str(digits_demo["net_path"]), "--sim", "--data", "digits", "-n", "40",
                   "--compare-golden", "--build-dir", str(tmp_path / "cache"), "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["images"] == 40 and report["golden"]["agreement"] == 1.0 and report["golden"]["mismatches"] == 0
    assert report["board"]["cycles_per_image"] > 0 and report["accuracy"] > 0.8
    human = run_cli("infer", str(digits_demo["net_path"]), "--sim", "-n", "3", "--compare-golden",
                    "--build-dir", str(tmp_path / "cache"))
    assert "agreement with the golden model: 3/3 images (100.00%)" in human.stdout
    assert "3/3 [" in human.stderr and " images/s]" in human.stderr, "a progress bar on stderr"


@pytest.fixture(scope="module")
def fast_uart_board(tmp_path_factory) -> list[str]:
    """``infer --sim`` options of one simulated board (3 Mbaud, the first layer's weights loaded over the
    wire) whose Verilator build the tests of this file share (builds are kept by their hash)."""
    return ["--baud", "3000000", "--spram", "0", "--build-dir", str(tmp_path_factory.mktemp("board-build"))]


def test_infer_sim_runs_the_uart_at_the_baud_rate_and_reports_rates_in_simulated_time(small_digits_net,
                                                                                       fast_uart_board):
    """``infer --sim --baud 3000000``: the board top's UART at 12 MHz / 4; the weight load and the
    images timed in simulated cycles, end to end below the line's bound (one 740-bit image frame each)
    and close to it (the window keeps the line busy), the core's worst case far above both: 64 one-byte
    codes and 10 bytes of framing, 10 bits a byte."""
    proc = run_cli("infer", str(small_digits_net), "--sim", *fast_uart_board, "-n", "8", "--compare-golden",
                   "--json", "-q")
    report = json.loads(proc.stdout)
    b, load = report["board"], report["board"]["weight_load"]
    assert (b["baud"], b["clock_hz"], b["divisor"], b["image_frame_bits"]) == (3_000_000, 12_000_000, 4, 740)
    assert report["golden"]["mismatches"] == 0 and b["line_images_per_second"] == pytest.approx(3e6 / 740)
    assert 0.8 * b["line_images_per_second"] < b["images_per_second_end_to_end"] < b["line_images_per_second"]
    assert b["core_images_per_second_worst"] > 2 * b["line_images_per_second"]
    assert load["rows"] == report["weight_rows_loaded"] > 0 and load["simulated_cycles"] > 0
    assert (load["load_bytes"], load["load_rows"]) == (6, 85)           # 12 lanes of 4-bit weights, 4096 / 48 rows
    assert 0.5 * 3e6 / 60 < load["rows_per_second"] < 3e6 / 60           # 60 bits on the line per row, and framing


def test_infer_sim_refuses_a_baud_rate_its_clock_cannot_make(small_digits_net):
    proc = run_cli("infer", str(small_digits_net), "--sim", "--baud", "2500000", "--clock", "12", "-n", "1",
                   check=False)
    assert_one_line_error(proc, "2500000 baud is more than 2% off any divisor of 12 MHz")
    proc = run_cli("infer", str(small_digits_net), "--port", "loop://", "--clock", "12", "-n", "1", check=False)
    assert_one_line_error(proc, "--clock sets the simulated board's clock: give it with --sim")


@pytest.mark.long
def test_infer_runs_the_digits_cnn_on_the_simulated_board(digits_demo, tmp_path):
    """The CNN's convolution engines behind the UART board top: every logit equals the golden model's."""
    proc = run_cli("infer", str(digits_demo["cnn_net_path"]), "--sim", "--data", "digits", "--range", "100:", "-n", "12",
                   "--compare-golden", "--build-dir", str(tmp_path / "cache"), "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["images"] == 12 and report["golden"]["agreement"] == 1.0 and report["golden"]["mismatches"] == 0
    assert report["accuracy"] > 0.8


def _relay(board: SimulatedBoard) -> str:
    """A ``socket://`` URL for the simulated board, as a real board's serial port: a relay that takes one
    connection and joins it to the board's private one (it presents the token)."""
    server = socket.create_server(("127.0.0.1", 0))

    def pump(source, sink):
        try:
            while data := source.recv(4096):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:                 # the other side closed first
            pass

    def serve():
        with server:
            host, _ = server.accept()
        inner = board.connect()
        threading.Thread(target=pump, args=(host, inner), daemon=True).start()
        pump(inner, host)

    threading.Thread(target=serve, daemon=True).start()
    return f"socket://127.0.0.1:{server.getsockname()[1]}"


def test_infer_refuses_a_board_with_another_network(digits_demo, small_board):
    net, board, _, cache = small_board
    with SimulatedBoard(board.params.plan, cache) as other:          # the same design: no new build
        proc = run_cli("infer", str(digits_demo["net_path"]), "--port", _relay(other), "-n", "2",
                       "--timeout", "5", "-q", check=False)
    assert_one_line_error(proc, "the board runs network sha256:")


def test_infer_on_a_port_nobody_answers(digits_demo):
    proc = run_cli("infer", str(digits_demo["net_path"]), "--port", "loop://", "-n", "2", "--timeout", "0.1",
                   check=False)
    assert proc.returncode == 1 and "no identity from the board" in proc.stderr.splitlines()[-1]


def test_ctrl_c_closes_cleanly(digits_demo):
    """SIGINT while the driver waits for a board: exit 130 with one line, no traceback."""
    returncode, stderr = signal_a_waiting_infer(digits_demo["net_path"], signal.SIGINT)
    assert returncode == 130 and stderr.strip() == "spikesmith: interrupted"


def test_spram_board_takes_its_weights_over_the_wire(tmp_path):
    """Weights in RAM (the iCE40UP5K's SPRAM): refused before the load, bit exact after it."""
    from spikesmith.host.driver import Accelerator, BoardError

    net = make_network(np.random.default_rng(9), [6, 9, 5], 6, negative_bias=0.5, threshold_scale=0.3)
    plan = plan_core(net, lanes=[2, 3], input_lanes=3, loaded_weights=[0, 1])
    codes = np.random.default_rng(2).integers(0, 64, size=(5, 6))
    with SimulatedBoard(plan, tmp_path) as board, Accelerator(board.open_port(), timeout=30) as driver:
        info = driver.identify()
        assert info.lanes == (2, 3) and info.loaded == (True, True)
        assert info.load_bytes == (plan.load_data_width + 7) // 8 >= 2
        with pytest.raises(BoardError, match="not loaded"):
            list(driver.infer(codes[:1]))                # ERROR NOT_LOADED
        with pytest.raises(BoardError, match="refused weight LOAD 0"):
            driver._acknowledged([(info.encode_load(5, 0, [0]), 1)])     # no layer 5: ERROR LENGTH
        driver.expect(net)
        assert info.load_rows == 170 and plan.layers[0].weight_row_count == 30     # one LOAD per layer
        assert driver.load_weights(plan) == len(list(plan.weight_loads()))    # the rows, then the commit
        # A damaged LOAD of zero rows over layer 0: refused (CRC), and none of its rows is written.
        damaged = bytearray(encode_frame(FrameType.LOAD, 9, info.encode_load(0, 0, [0] * 30)))
        damaged[-3] ^= 0x01
        driver._send(bytes(damaged))
        assert [(f.type, f.seq, f.payload) for f in driver._receive(30.0)] == [
            (FrameType.ERROR, 9, bytes([ErrorCode.CRC]))]
        results = list(driver.infer(codes))
    expected = golden.run(net, codes)
    assert [r.label for r in results] == expected.predictions.tolist()
    assert [r.logits for r in results] == expected.logits.tolist()


def test_a_noisy_link_to_the_board_top_loses_nothing(small_board):
    """1 % of the bytes dropped, duplicated or corrupted each way (sim/link.py) between the real driver and
    the board top under Verilator: every result correct, exactly once, in order (SECURITY.md)."""
    from spikesmith.host.driver import Accelerator
    from spikesmith.sim.link import LossyLink

    net, board, _, cache = small_board
    codes = np.random.default_rng(12).integers(0, net.max_code + 1, size=(24, net.input.size))
    with SimulatedBoard(board.params.plan, cache) as other:
        link = LossyLink(other.open_port(), seed=3, drop=0.0033, duplicate=0.0033,
                         corrupt=0.0034)
        with Accelerator(link, timeout=2.0, retries=50) as driver:
            driver.expect(net)
            results = list(driver.infer(codes))
    expected = golden.run(net, codes)
    assert [r.index for r in results] == list(range(len(codes)))
    assert [r.logits for r in results] == expected.logits.tolist()
    assert [r.label for r in results] == expected.predictions.tolist()
    assert sum(link.damaged.values()) > 0


def _closed_with_nothing(conn: socket.socket) -> bool:
    """The peer closed ``conn`` (a reset too: it left bytes unread) without sending a byte."""
    conn.settimeout(5)
    try:
        return conn.recv(100) == b""
    except ConnectionResetError:
        return True


def test_the_board_bench_takes_only_a_connection_that_presents_the_token():
    """A silent connection, a wrong guess, a short one: each closed, and the one with the token taken,
    with the bytes after its token left to read."""
    from spikesmith.sim.board_bench import _listen, accept_presenting

    server, token = _listen(), bytes(range(16))
    address = server.getsockname()
    silent = socket.create_connection(address)
    guess = socket.create_connection(address)
    guess.sendall(bytes(16) + b"\xa5\x01")
    short = socket.create_connection(address)
    short.sendall(token[:5])
    short.shutdown(socket.SHUT_WR)
    taken = []
    thread = threading.Thread(target=lambda: taken.append(accept_presenting(server, token, seconds=20)))
    thread.start()
    time.sleep(0.5)
    ours = socket.create_connection(address)
    ours.sendall(token + b"frames")
    thread.join(timeout=20)
    [conn] = taken
    conn.settimeout(5)
    assert conn.recv(100) == b"frames"
    assert _closed_with_nothing(guess) and _closed_with_nothing(short)
    assert _closed_with_nothing(silent), "closed once the right connection came"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address)
    for sock in (silent, guess, short, ours, conn):
        sock.close()


_INTRUDER = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
conn.sendall(bytes(16) + bytes.fromhex(sys.argv[2]))      # a wrong token, then an IDENTIFY
conn.settimeout(20)
received = b""
try:
    while chunk := conn.recv(4096):
        received += chunk
except OSError:
    pass
print(len(received))
"""


def test_another_process_connecting_first_does_not_take_the_simulated_board(small_board):
    """A local process connects to the simulated board's port before the driver, guesses a token and asks
    for the identity: it is cut off with nothing, and the driver's run completes, every logit right."""
    from spikesmith.host.driver import Accelerator

    net, board, _, cache = small_board
    codes = np.random.default_rng(13).integers(0, net.max_code + 1, size=(6, net.input.size))
    with SimulatedBoard(board.params.plan, cache) as other:
        with started_group([sys.executable, "-c", _INTRUDER, str(other.address[1]),
                            encode_frame(FrameType.IDENTIFY, 1).hex()], stdout=subprocess.PIPE, text=True) as intruder:
            time.sleep(1.0)                              # it connects first
            with Accelerator(other.open_port(), timeout=30) as driver:
                driver.expect(net)
                results = list(driver.infer(codes))
            stdout, _ = intruder.communicate(timeout=30)
    assert stdout.strip() == "0", "the intruder got no byte from the board"
    assert [r.logits for r in results] == golden.run(net, codes).logits.tolist()


def test_infer_sim_whose_simulator_dies_ends_in_one_line(small_digits_net, fast_uart_board):
    """The simulator killed while images stream: one line ``spikesmith: error: ...`` and exit 1, never an
    internal error (a lost connection to the simulated board once ended in "internal error: ConnectionRefusedError")."""
    with started_group([sys.executable, "-m", "spikesmith.cli", "infer", str(small_digits_net), "--sim", "-n", "4000",
                        *fast_uart_board], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "streaming" in line:
                break
        simulators = descendants(proc.pid)
        assert simulators, "the simulator runs in a process of its own"
        for pid in simulators:
            os.kill(pid, signal.SIGKILL)
        _, rest = proc.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("spikesmith: error: the port failed: "), stderr     # (disconnected, or reset)
    assert "internal error" not in stderr and "Traceback" not in stderr


def test_a_streaming_core_of_colour_images_behind_the_board_top(tmp_path):
    """Three-channel images stream pixel by pixel into the core while the wire carries them channel by channel
    (docs/protocol.md): the board top writes each code into its pixel's word, and every logit is the golden
    model's."""
    from spikesmith.sim.random_networks import make_conv_network

    net = make_conv_network(np.random.default_rng(4), (3, 5, 6), [(4, (3, 3), (1, 1), (1, 1))], 4, 4, weight_bits=5,
                            pools=[((2, 2), (2, 2), (0, 0), (1, 1), True)])
    plan = plan_core(net, lanes=[2, 2], chunks=[9])
    assert plan.input.pixel_major and plan.input.lanes == 3
    codes = random_codes(net, 6, seed=3)
    expected = golden.run(net, codes)
    with SimulatedBoard(plan, tmp_path / "verilator") as board, board.connect() as conn:
        [identity] = exchange(conn, encode_frame(FrameType.IDENTIFY, 1), 1)
        info = Identity.decode(identity.payload)
        frames = exchange(conn, b"".join(encode_frame(FrameType.INFER, 10 + k, info.encode_image(row))
                                         for k, row in enumerate(codes[:3])), 3)
        frames += exchange(conn, b"".join(encode_frame(FrameType.INFER, 13 + k, info.encode_image(row))
                                          for k, row in enumerate(codes[3:])), 3)
    assert [f.seq for f in frames] == list(range(10, 16))
    for frame, label, logits in zip(frames, expected.predictions, expected.logits):
        assert info.decode_result(frame.payload) == (label, logits.tolist())
