"""The host driver and the wire protocol, against a fault-injecting fake board (tests/fakeboard.py)."""

import binascii
import socket
import threading
import zlib

import numpy as np
import pytest

from spikesmith.host.driver import Accelerator, BoardError, BoardTimeout, WrongNetworkError, load_payloads
from spikesmith.contract.protocol import (LOAD_HEAD, ErrorCode, FrameDecoder, FrameType, Identity, crc32,
                                          encode_frame)
from spikesmith.gen.sizing import plan_core
from spikesmith.sim import golden
from spikesmith.sim.link import LossyLink

from conftest import assert_one_line_error, make_network, run_cli
from fakeboard import FakeBoard, identity_of


@pytest.fixture(scope="module")
def net():
    return make_network(np.random.default_rng(4), [12, 9, 6], 6, negative_bias=0.5, threshold_scale=0.3)


@pytest.fixture(scope="module")
def codes(net):
    return np.random.default_rng(5).integers(0, net.max_code + 1, size=(60, net.input.size))


def run_all(board, codes, timeout=0.05, **options):
    """Every result, in order. Tests that count resends use a timeout no loaded machine reaches."""
    with Accelerator(board, timeout=timeout, **options) as driver:
        results = list(driver.infer(codes))
        return results, driver.stats


def assert_correct(results, net, codes):
    expected = golden.run(net, codes)
    assert [r.index for r in results] == list(range(len(codes))), "every image once, in order"
    assert [r.label for r in results] == expected.predictions.tolist()
    assert [r.logits for r in results] == expected.logits.tolist()


def test_crc_check_value_and_frame_round_trip():
    assert crc32(b"123456789") == 0xCBF43926      # the catalogued check value of CRC-32/ISO-HDLC
    frame = encode_frame(FrameType.INFER, 0x1234, bytes(range(40)))
    decoder = FrameDecoder()
    noise = bytes([0x00, 0xA5, 0x02, 0xFF])   # a false sync and garbage before the frame
    frames = decoder.feed(noise + frame[:7]) + decoder.feed(frame[7:])
    assert [(f.type, f.seq, f.payload) for f in frames] == [(FrameType.INFER, 0x1234, bytes(range(40)))]


def _result_frame_and_decoder():
    """A RESULT frame of 10 two-byte logits (32 bytes) and a decoder bounded as the driver's, once identified."""
    identity = Identity(timesteps=8, inputs=64, classes=10, logit_bytes=2, window=3, clock_hz=12_000_000,
                        initiation_interval=1000, fingerprint=bytes(32))
    payload = (3).to_bytes(2, "little") + b"".join(v.to_bytes(2, "little", signed=True)
                                                    for v in (-7, 12, 40, 900, -300, 5, 0, 899, 1, 2))
    lengths = {FrameType.RESULT: (identity.result_bytes,) * 2, FrameType.LOADED: (0, 0), FrameType.ERROR: (1, 1)}
    return encode_frame(FrameType.RESULT, 0x1234, payload), lambda: FrameDecoder(lengths=lengths)


def _refused(frame: bytes, damaged: bytes, decoder: FrameDecoder) -> bool:
    """The damaged frame yields nothing, and the good frame after it is still found."""
    after = encode_frame(FrameType.RESULT, 0x4321, FrameDecoder().feed(frame)[0].payload)
    return [(f.seq, f.payload) for f in decoder.feed(damaged + after)] == [(0x4321, after[6:-4])]


def test_every_single_bit_error_in_a_result_frame_is_refused():
    frame, decoder = _result_frame_and_decoder()
    for bit in range(8 * len(frame)):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << bit % 8
        assert _refused(frame, bytes(damaged), decoder()), f"bit {bit} flipped and the frame was taken"


def test_every_burst_of_up_to_32_bits_in_a_result_frame_is_refused():
    """Every value of every byte (bursts of up to 8 bits), and random bursts of 9 to 32 bits at every
    bit of the frame, among them the CRC-16's generator (a 17-bit burst the old CRC-16 never saw)."""
    frame, decoder = _result_frame_and_decoder()
    for position in range(len(frame)):
        for value in range(256):
            if value != frame[position]:
                damaged = frame[:position] + bytes([value]) + frame[position + 1:]
                assert _refused(frame, damaged, decoder()), f"byte {position} = {value:#04x} was taken"
    rng = np.random.default_rng(0)
    whole = int.from_bytes(frame, "little")          # bit k is the k-th bit on the line (UART: LSB first)
    for start in range(8 * len(frame) - 8):
        for length in range(9, 33):
            if start + length > 8 * len(frame):
                break
            inner = int(rng.integers(0, 1 << (length - 2))) if length > 2 else 0
            burst = (1 << (length - 1)) | inner << 1 | 1               # first and last bit of the burst flipped
            damaged = (whole ^ burst << start).to_bytes(len(frame), "little")
            assert _refused(frame, damaged, decoder()), f"burst {burst:#x} at bit {start} was taken"
    body = bytearray(frame[1:-4])                    # (CRC-16/CCITT reads each byte MSB first)
    body[8:11] = (int.from_bytes(body[8:11], "big") ^ 0x11021 << 3).to_bytes(3, "big")
    assert binascii.crc_hqx(bytes(body), 0xFFFF) == binascii.crc_hqx(frame[1:-4], 0xFFFF), "CRC-16 blind to it"
    assert _refused(frame, frame[:1] + bytes(body) + frame[-4:], decoder())


def test_decoder_drops_a_damaged_frame_and_keeps_the_next():
    good = encode_frame(FrameType.RESULT, 7, b"\x01\x02")
    bad = bytearray(encode_frame(FrameType.RESULT, 6, b"\xA5\xA5\x05"))
    bad[-3] ^= 0x10
    decoder = FrameDecoder()
    frames = decoder.feed(bytes(bad) + good)
    assert [(f.seq, f.payload) for f in frames] == [(7, b"\x01\x02")] and decoder.bad_frames >= 1


def test_identity_round_trip(net):
    identity = identity_of(net, window=3)
    assert Identity.decode(identity.encode()) == identity
    with pytest.raises(ValueError):
        Identity.decode(b"NOPE" + identity.encode()[4:])
    loads = identity_of(net, plan=plan_core(net, lanes=[2, 3], loaded_weights=[0]))
    assert Identity.decode(loads.encode()) == loads and loads.load_rows == 255 and loads.loaded == (True, False)


@pytest.fixture(scope="module")
def spram_net():
    """Weights in RAM, two layers of them: 64 x 40 1-byte rows (11 LOADs of <= 255), then 40 x 10."""
    net = make_network(np.random.default_rng(6), [64, 40, 10], 6, negative_bias=0.5, threshold_scale=0.3)
    return net, plan_core(net, lanes=[1, 1], loaded_weights=[0, 1])


def test_load_payloads_are_runs_of_consecutive_rows(spram_net):
    """docs/protocol.md, LOAD: a run of one layer's consecutive rows, at most load_rows a frame."""
    net, plan = spram_net
    identity = identity_of(net, plan=plan)
    loads = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 5, 4), (1, 6, 5)] + [(1, 7 + k, k) for k in range(256)]
    payloads = load_payloads(identity, loads)
    heads = [(p[0], int.from_bytes(p[1:3], "little"), p[3], rows) for p, rows in payloads]
    assert heads == [(0, 0, 3, 3), (0, 5, 1, 1), (1, 6, 255, 255), (1, 261, 2, 2)]
    assert payloads[0][0][LOAD_HEAD:] == bytes([1, 2, 3]) and identity.load_bytes == 1


def test_weights_go_in_frames_of_many_rows(spram_net):
    """Every row of plan.weight_loads() lands at its address, 255 rows a LOAD, and only then the commit."""
    net, plan = spram_net
    board = FakeBoard(net, plan=plan)
    with Accelerator(board, timeout=5.0) as driver:
        driver.expect(net)
        assert driver.load_weights(plan) == 64 * 40 + 40 * 10
    assert board.rows == {(layer, address): row for layer, address, row in plan.weight_loads()}
    assert board.loads == [255] * 10 + [10, 255, 145] and board.committed


@pytest.mark.parametrize("faults", [{"corrupt_in": 0.002}, {"drop_out": 0.05}, {"corrupt_out": 0.05}],
                         ids=["corrupt-in", "drop-out", "corrupt-out"])
def test_damaged_loads_are_resent_until_every_row_is_in(spram_net, faults):
    net, plan = spram_net
    board = FakeBoard(net, plan=plan, seed=zlib.crc32(repr(faults).encode()))
    with Accelerator(board, timeout=0.05, retries=20) as driver:
        driver.expect(net)
        for name, value in faults.items():         # after the identity: the loads take the damage
            setattr(board, name, value)
        driver.load_weights(plan)
        for name in faults:
            setattr(board, name, 0.0)
        assert driver.stats.resent > 0
        results = list(driver.infer(np.zeros((2, net.input.size), dtype=int)))
    assert board.rows == {(layer, address): row for layer, address, row in plan.weight_loads()}
    assert len(results) == 2


def test_a_load_whose_length_does_not_match_its_row_count_is_refused(spram_net):
    net, plan = spram_net
    board = FakeBoard(net, plan=plan)
    identity = identity_of(net, plan=plan)
    good = identity.encode_load(0, 0, [7, 8])
    for payload in (good[:3] + bytes([3]) + good[4:], good + b"\0", identity.encode_load(0xFF, 0, [1])):
        board.write(encode_frame(FrameType.LOAD, 1, payload))
    board.write(encode_frame(FrameType.LOAD, 2, good))
    frames = FrameDecoder().feed(board.read(1000))
    assert [(f.type, f.seq, f.payload) for f in frames] == [(FrameType.ERROR, 1, bytes([ErrorCode.LENGTH]))] * 3 + [
        (FrameType.LOADED, 2, b"")]
    assert board.rows == {(0, 0): 7, (0, 1): 8}


def test_clean_board(net, codes):
    results, stats = run_all(FakeBoard(net), codes, timeout=5.0)
    assert_correct(results, net, codes)
    assert stats.resent == 0 and stats.unexpected_replies == 0 and stats.images == len(codes) and stats.most_sends == 1


@pytest.mark.parametrize("faults", [
    {"corrupt_in": 0.01}, {"corrupt_out": 0.01}, {"drop_in": 0.005}, {"drop_out": 0.005},
    {"delay": 0.03}, {"max_chunk": 3}, {"unknown_replies": 0.3}, {"duplicate_replies": 0.3},
    {"corrupt_in": 0.005, "corrupt_out": 0.005, "drop_in": 0.003, "drop_out": 0.003, "delay": 0.02,
     "max_chunk": 5, "unknown_replies": 0.2, "duplicate_replies": 0.2},
], ids=["corrupt-in", "corrupt-out", "drop-in", "drop-out", "delay", "partial-reads", "unknown-seq",
        "duplicates", "everything"])
def test_every_image_gets_its_correct_result_despite_faults(net, codes, faults):
    results, stats = run_all(FakeBoard(net, seed=zlib.crc32(repr(faults).encode()), **faults), codes, retries=20)
    assert_correct(results, net, codes)
    if "unknown_replies" in faults or "duplicate_replies" in faults:
        assert stats.unexpected_replies > 0, "the injected replies were seen and ignored"
    if any(k in faults for k in ("corrupt_in", "corrupt_out", "drop_in", "drop_out")):
        assert stats.resent > 0, "damaged traffic was resent"


def test_board_reset_mid_stream(net, codes):
    results, stats = run_all(FakeBoard(net, reset_after=20), codes)
    assert_correct(results, net, codes)
    assert stats.resent > 0 and stats.most_sends == 2


def test_silent_board_is_a_clear_timeout(net, codes):
    with Accelerator(FakeBoard(net, silent=True), timeout=0.02, retries=2) as driver:
        with pytest.raises(BoardTimeout, match="no identity from the board after 3 tries"):
            driver.identify()


def test_a_board_that_stops_answering_mid_stream(net, codes):
    board = FakeBoard(net)
    with Accelerator(board, timeout=0.02, retries=2) as driver:
        stream = driver.infer(codes)
        first = [next(stream) for _ in range(5)]
        board.silent = True
        with pytest.raises(BoardTimeout, match=r"image \d+: no reply after 3 sends"):
            list(stream)
    assert [r.index for r in first] == list(range(5)) and board.closed


def test_wrong_network_is_refused(net):
    other = make_network(np.random.default_rng(99), [12, 9, 6], 6)
    with Accelerator(FakeBoard(other), timeout=0.05) as driver:
        with pytest.raises(WrongNetworkError, match="the board runs network sha256:"):
            driver.expect(net)
    with Accelerator(FakeBoard(net), timeout=0.05) as driver:
        assert driver.expect(net).inputs == 12


def test_wrong_image_size_is_refused_before_sending(net):
    board = FakeBoard(net)
    with Accelerator(board, timeout=0.05) as driver:
        with pytest.raises(BoardError, match="image 0 has 5 codes; the board takes 12"):
            list(driver.infer([np.zeros(5, dtype=int)]))
    assert board.requests == 0


class CountingPort:
    """Wraps a port and tracks how many images are sent but not yet answered."""

    def __init__(self, port):
        self.port, self.outstanding, self.most = port, 0, 0
        self.sent, self.received = FrameDecoder(), FrameDecoder()

    def write(self, data):
        self.outstanding += sum(f.type == FrameType.INFER for f in self.sent.feed(data))
        self.most = max(self.most, self.outstanding)
        return self.port.write(data)

    def read(self, size=1):
        data = self.port.read(size)
        self.outstanding -= sum(f.type == FrameType.RESULT for f in self.received.feed(data))
        return data

    @property
    def in_waiting(self):
        return self.port.in_waiting

    def close(self):
        self.port.close()


@pytest.mark.parametrize("board_window,driver_window,most", [(3, None, 3), (4, 2, 2), (1, 8, 1)])
def test_window_limits_images_in_flight(net, codes, board_window, driver_window, most):
    port = CountingPort(FakeBoard(net, delay=0.01, window=board_window))
    results, _ = run_all(port, codes[:20], timeout=5.0, window=driver_window)
    assert_correct(results, net, codes[:20])
    assert port.most == most


def test_loop_url_without_a_board_times_out_cleanly():
    """pyserial's loop:// echoes our own requests back: not a board, and the driver says so."""
    with Accelerator.open("loop://", timeout=0.05, retries=1) as driver:
        with pytest.raises(BoardTimeout):
            driver.identify()
        assert driver.decoder.bad_frames >= 1, "its own IDENTIFY came back and was taken for noise"


def test_unopenable_port_is_a_clear_error():
    with pytest.raises(BoardError, match="cannot open /dev/does-not-exist"):
        Accelerator.open("/dev/does-not-exist")


def test_a_damaged_length_costs_one_frame_not_the_run(net):
    """A corrupted header claiming 800 bytes used to hold back every later reply until the run timed out."""
    identity = identity_of(net)
    decoder = FrameDecoder(lengths={FrameType.RESULT: (identity.result_bytes, identity.result_bytes),
                                    FrameType.ERROR: (1, 1)})
    good = encode_frame(FrameType.RESULT, 9, bytes(identity.result_bytes))
    damaged = bytes([0xA5, FrameType.RESULT, 8, 0]) + (800).to_bytes(2, "little")
    frames = decoder.feed(damaged + good)
    assert [(f.type, f.seq) for f in frames] == [(FrameType.RESULT, 9)]
    assert decoder.feed(bytes([0xA5, FrameType.IDENTITY, 1, 0, 59, 0])) == [] and decoder.buffer == b""


@pytest.mark.parametrize("seed", range(4))
def test_late_replies_of_an_earlier_session_are_never_taken(net, seed):
    """A driver stopped with images in flight; the next one on the same port gets only its own answers."""
    rng = np.random.default_rng(seed)
    earlier, ours = (rng.integers(0, net.max_code + 1, size=(6, net.input.size)) for _ in range(2))
    board = FakeBoard(net, seed=seed, delay=0.3)
    identity = identity_of(net)
    for k, row in enumerate(earlier):            # the sequence numbers a driver starting at 1 would reuse
        board.write(encode_frame(FrameType.INFER, k + 2, identity.encode_image(row)))
    with Accelerator(board, timeout=2.0) as driver:
        driver.expect(net)
        results = list(driver.infer(ours))
    assert_correct(results, net, ours)


@pytest.mark.parametrize("seed", range(3))
def test_a_link_with_one_percent_byte_damage_loses_nothing(net, seed):
    """Drop, duplicate and corrupt 1 % of the bytes each way (sim/link.py): every result correct, once, in order."""
    codes = np.random.default_rng(100 + seed).integers(0, net.max_code + 1, size=(150, net.input.size))
    link = LossyLink(FakeBoard(net, seed=seed), seed=seed, drop=0.0033, duplicate=0.0033, corrupt=0.0034)
    with Accelerator(link, timeout=0.05, retries=50) as driver:
        driver.expect(net)
        results = list(driver.infer(codes))
    assert_correct(results, net, codes)
    assert sum(link.damaged.values()) > 0


def test_an_image_too_large_for_a_frame_is_refused_before_building():
    from spikesmith.gen.board import board_params
    from spikesmith.gen.sizing import plan_core
    from spikesmith.errors import SpikesmithError

    plan = plan_core(make_network(np.random.default_rng(0), [70_000, 2, 2], 4), lanes=[1, 1])
    with pytest.raises(SpikesmithError, match="a frame carries at most 65,535"):
        board_params(plan, 12_000_000, 115_200)
    with pytest.raises(ValueError, match="at most 65,535 payload bytes"):
        encode_frame(FrameType.INFER, 1, bytes(70_000))


def test_a_result_whose_label_is_not_its_largest_logit_is_refused_as_damage():
    """A CRC misses some damage (CRC-16 about one damaged frame in 65,536): a result whose label is not the first
    largest logit (e.g. a byte slipped into the logits) is dropped and asked for again."""
    from spikesmith.contract.protocol import Identity

    identity = Identity(timesteps=4, inputs=3, classes=3, logit_bytes=3, window=2, clock_hz=12_000_000,
                        initiation_interval=100, fingerprint=b"\0" * 32)
    good = (1).to_bytes(2, "little") + b"".join(v.to_bytes(3, "little", signed=True) for v in (5, 9, 9))
    assert identity.decode_result(good) == (1, [5, 9, 9])
    slipped = good[:2] + good[3:] + b"\0"                   # one logit byte lost, the next frame's byte after
    with pytest.raises(ValueError, match="not the first largest"):
        identity.decode_result(slipped)
    tie = (2).to_bytes(2, "little") + good[2:]              # label 2 ties with 1, but the core names the first
    with pytest.raises(ValueError, match="not the first largest"):
        identity.decode_result(tie)


def _serve_identity_then_silence(board: FakeBoard, server: socket.socket, received: bytearray) -> None:
    """One connection to ``board``: every byte from the host into ``received`` and the board, which answers
    only until it has sent its identity."""
    conn, _ = server.accept()
    with conn:
        conn.settimeout(0.05)
        while True:
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                return
            received += chunk
            board.write(chunk)
            reply = board.read(1 << 16)
            if reply:
                conn.sendall(reply)
                board.silent = True


def test_infer_gives_up_on_an_image_after_exactly_retries_plus_one_sends(small_digits_net):
    """``infer --retries 3`` on a board that identifies itself and then answers nothing: image 0 goes on the
    wire 4 times, then one line."""
    from spikesmith.gen.netfile import load_network

    board, received = FakeBoard(load_network(small_digits_net)), bytearray()
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_serve_identity_then_silence, args=(board, server, received), daemon=True)
        thread.start()
        proc = run_cli("infer", str(small_digits_net), "--port", f"socket://127.0.0.1:{server.getsockname()[1]}",
                       "-n", "1", "--timeout", "0.3", "--retries", "3", "-q", check=False)
        thread.join(timeout=10)
    assert_one_line_error(proc, "image 0: no reply after 4 sends (timeout 0.3 s, 3 retries)")
    sent = FrameDecoder(max_payload=1 << 16).feed(bytes(received))
    assert [f.type for f in sent] == [FrameType.IDENTIFY] + [FrameType.INFER] * 4
    assert len({f.seq for f in sent[1:]}) == 1, "the same request each time"
