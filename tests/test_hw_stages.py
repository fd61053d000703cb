"""Each hardware stage alone in amaranth.sim: banks, accumulate (dense, convolution), fire, readout,
and the board top's frame receiver, frame transmitter, image loader and weight loader."""

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from spikesmith.contract.protocol import CRC_BYTES, ErrorCode, FrameDecoder, FrameType, encode_frame
from spikesmith.gen.board import board_params
from spikesmith.gen.sizing import plan_core
from spikesmith.hw.accumulate import DenseAccumulate, input_event_layout
from spikesmith.hw.board import (ErrorKind, FrameCRC, FrameKind, FrameReceiver, FrameTransmitter, ImageLoader,
                                 WeightLoader)
from spikesmith.hw.conv import ConvAccumulate
from spikesmith.hw.events import count_up_to, lowest_set_lane, sum_up_to
from spikesmith.hw.fire import FireStage
from spikesmith.hw.membranes import READ_LATENCY, MembraneBanks
from spikesmith.hw.readout import Readout
from spikesmith.hw.streams import SlowStreamRegister, StreamRegister
from spikesmith.sim.hdl import StreamSink, StreamSource, run_streams

from conftest import make_conv_network, make_network
from test_hw_engines import addr_width, expected_events, pack_event, unpack_event


def _rows_to_lanes(rows: list[int], lanes: int, width: int) -> np.ndarray:
    """Packed rows -> (rows, lanes) signed integers."""
    out = np.zeros((len(rows), lanes), dtype=np.int64)
    for r, row in enumerate(rows):
        for lane in range(lanes):
            value = row >> (lane * width) & ((1 << width) - 1)
            out[r, lane] = value - (1 << width) if value >> (width - 1) else value
    return out


def _pack_lanes(values, width: int) -> int:
    return sum((int(v) & ((1 << width) - 1)) << (k * width) for k, v in enumerate(values))


class _Banked(Elaboratable):
    """A stage joined to its membrane banks; the banks' other port is left to the testbench."""

    def __init__(self, stage, plan, stage_port: str):
        self.stage, self.plan = stage, plan
        self.banks = MembraneBanks(plan.rows, plan.lanes * plan.membrane_width)
        self.stage_port = stage_port

    def elaborate(self, platform):
        m = Module()
        m.submodules.stage, m.submodules.banks = self.stage, self.banks
        wiring.connect(m, self.stage.membranes, getattr(self.banks, self.stage_port))
        return m


def _accumulate_and_read(stage, plan, events: list[int]) -> list[int]:
    """Feed ``events`` to an accumulate stage; return its bank's rows once handed over."""
    dut = _Banked(stage, plan, "fill")
    drain, rows = dut.banks.drain, []
    source = StreamSource(stage.events, events, probability=0.7, rng=np.random.default_rng(3))
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def send(ctx):
        await source.run(ctx, _NoClock())

    async def read(ctx):
        await ctx.tick().until(drain.ready)
        rows.extend(await _read_rows(ctx, drain, plan.rows))
        ctx.set(drain.done, 1)
        await ctx.tick()
        ctx.set(drain.done, 0)
        assert not ctx.get(drain.ready), "the drained bank is released"

    sim.add_testbench(send)
    sim.add_testbench(read)
    sim.run()
    return rows


async def _read_rows(ctx, port, count: int) -> list[int]:
    """Rows ``0 .. count-1`` through a membrane port, one address per cycle (data two cycles later)."""
    rows = []
    for cycle in range(count + READ_LATENCY):
        if cycle < count:
            ctx.set(port.read_addr, cycle)
        await ctx.tick()
        if cycle >= READ_LATENCY - 1 and len(rows) < count:
            rows.append(ctx.get(port.read_data))
    return rows


class _NoClock:
    cycles = 0


@pytest.mark.parametrize("inputs,neurons,lanes,timesteps", [(6, 7, 3, 4), (5, 4, 4, 6), (3, 5, 1, 2)])
def test_dense_accumulate_leaves_w_times_code_plus_bias(inputs, neurons, lanes, timesteps):
    """After T steps of ``V <- 2V + W s[t]`` and the bias pass, ``V = W @ code + b`` (codes MSB first)."""
    rng = np.random.default_rng(inputs + neurons)
    net = make_network(rng, [inputs, neurons, 2], timesteps)
    plan = plan_core(net, lanes=[lanes, 1], streaming=False).layers[0]
    code = rng.integers(0, 1 << timesteps, size=(1, inputs))
    events = [pack_event(e, addr_width(inputs)) for e in expected_events(code, timesteps, skip_silent=True)]
    rows = _accumulate_and_read(DenseAccumulate(plan), plan, events)
    got = _rows_to_lanes(rows, lanes, plan.membrane_width).reshape(-1)[:neurons]
    layer = net.layers[0]
    assert got.tolist() == (layer.weight @ code[0] + layer.bias).tolist()


def test_conv_accumulate_leaves_the_convolution_plus_bias():
    """The kernel scattered event by event equals the dense convolution matrix times the codes."""
    rng = np.random.default_rng(7)
    net = make_conv_network(rng, (2, 5, 4), [(4, (3, 2), (1, 2), (1, 0))], 3, 4)
    plan = plan_core(net, lanes=[2, 1], streaming=False).layers[0]
    g, T = plan.conv, plan.timesteps
    code = rng.integers(0, 1 << T, size=g.in_shape)
    events = []
    for t in range(T):
        for c, y, x in np.ndindex(*g.in_shape):
            if code[c, y, x] >> (T - 1 - t) & 1:
                events.append(_pixel_event(plan, c, y, x))
        events.append(_pixel_event(plan, 0, 0, 0, end=True))
    rows = _accumulate_and_read(ConvAccumulate(plan), plan, events)
    got = _rows_to_lanes(rows, plan.lanes, plan.membrane_width)        # row b*P + p, lane l: channel b*L + l
    layer = net.layers[0]
    want = (layer.matrix @ code.reshape(-1) + layer.bias).reshape(g.out_channels, g.pixels)
    for b in range(plan.blocks):
        for lane in range(plan.lanes):
            assert got[b * g.pixels:(b + 1) * g.pixels, lane].tolist() == want[b * plan.lanes + lane].tolist()


def _pixel_event(plan, c, y, x, end=False) -> int:
    fields = {"channel": c, "y": y, "x": x, "spike": int(not end), "end": int(end)}
    return sum(fields[name] << field.offset for name, field in input_event_layout(plan))


def _fill_bank(ctx, fill, rows: list[int]):
    """Write ``rows`` through the fill port and hand the bank over."""
    for address, row in enumerate(rows):
        ctx.set(fill.write_addr, address)
        ctx.set(fill.write_data, row)
        ctx.set(fill.write_en, 1)
        yield
    ctx.set(fill.write_en, 0)
    ctx.set(fill.done, 1)
    yield
    ctx.set(fill.done, 0)


def _pack_rows(membranes: np.ndarray, plan) -> list[int]:
    """One membrane per neuron -> the bank's rows (lane 0 in the LSBs; padding lanes 0)."""
    padded = np.zeros(plan.blocks * plan.lanes, dtype=np.int64)
    padded[:len(membranes)] = membranes
    return [_pack_lanes(padded[b * plan.lanes:(b + 1) * plan.lanes], plan.membrane_width) for b in range(plan.blocks)]


def _drain_a_filled_bank(stage, plan, rows: list[int], sink: StreamSink) -> None:
    """Fill a bank with ``rows``, hand it to ``stage`` (a drain-side stage) and run ``sink`` on its output."""
    dut = _Banked(stage, plan, "drain")
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def fill(ctx):
        for _ in _fill_bank(ctx, dut.banks.fill, rows):
            await ctx.tick()

    async def take(ctx):
        await sink.run(ctx, _NoClock())

    sim.add_testbench(fill)
    sim.add_testbench(take)
    sim.run()


def _fire_reference(membrane: np.ndarray, threshold: np.ndarray, timesteps: int) -> np.ndarray:
    """docs/semantics.md: clamp to [0, theta], then T steps of double, spike if >= theta, subtract."""
    v = np.clip(membrane, 0, threshold)
    code = np.zeros_like(v)
    for _ in range(timesteps):
        v = 2 * v
        spike = v >= threshold
        code = 2 * code + spike
        v = np.where(spike, v - threshold, v)
    return code


@pytest.mark.parametrize("skip_silent", [True, False])
def test_fire_stage_sends_the_binary_code_of_each_membrane(skip_silent):
    rng = np.random.default_rng(11)
    net = make_network(rng, [4, 7, 2], 5, threshold_scale=0.3)
    plan = plan_core(net, lanes=[3, 1], skip_silent=skip_silent, streaming=False).layers[0]
    threshold = net.layers[0].threshold
    membrane = rng.integers(-int(threshold.max()), 2 * int(threshold.max()), size=plan.neurons)
    stage = FireStage(plan, skip_silent)
    want = expected_events(_fire_reference(membrane, threshold, plan.timesteps)[None], plan.timesteps, skip_silent)
    sink = StreamSink(stage.spikes, len(want), probability=0.6, rng=rng, drain=30)
    _drain_a_filled_bank(stage, plan, _pack_rows(membrane, plan), sink)
    assert [unpack_event(v, addr_width(plan.neurons)) for v in sink.received] == want
    assert sink.extra == []


def _evaluate(m: Module, given: Signal, output: Signal, values: list[int]) -> list[int]:
    """``output`` of the logic in ``m`` for each of ``values`` of ``given``, in amaranth.sim."""
    got = []

    async def testbench(ctx):
        for value in values:
            ctx.set(given, value)
            got.append(ctx.get(output))

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    return got


@pytest.mark.parametrize("lanes", [1, 2, 3, 10, 64])
def test_lowest_set_lane_finds_the_lowest_set_bit(lanes):
    rng = np.random.default_rng(lanes)
    m, mask = Module(), Signal(lanes)
    lowest = lowest_set_lane(m, mask, lanes)
    masks = [1 << lane for lane in range(lanes)] + [int(rng.integers(1, 1 << min(lanes, 62))) << int(rng.integers(0, max(1, lanes - 62)))
                                                    for _ in range(50)] + [(1 << lanes) - 1]
    assert _evaluate(m, mask, lowest, masks) == [(value & -value).bit_length() - 1 for value in masks]


@pytest.mark.parametrize("lanes,cap", [(1, 2), (5, 2), (64, 2), (64, 3)])
def test_count_up_to_counts_set_bits_and_saturates(lanes, cap):
    rng = np.random.default_rng(lanes + cap)
    m, mask = Module(), Signal(lanes)
    count = Signal(2)
    m.d.comb += count.eq(count_up_to([mask[lane] for lane in range(lanes)], cap))
    masks = [0, (1 << lanes) - 1] + [sum(1 << int(k) for k in rng.choice(lanes, size=int(n), replace=False))
                                     for n in rng.integers(0, min(lanes, 4) + 1, size=40)]
    assert _evaluate(m, mask, count, masks) == [min(bin(value).count("1"), cap) for value in masks]


@pytest.mark.parametrize("terms", [1, 3, 8])
def test_sum_up_to_adds_capped_counts_and_saturates(terms):
    """The group counts of a wide row (each 0..2, two bits) add up to at most 2."""
    rng = np.random.default_rng(terms)
    m, packed = Module(), Signal(2 * terms)
    total = Signal(2)
    m.d.comb += total.eq(sum_up_to([(packed[2 * k:2 * k + 2], 2) for k in range(terms)], 2))
    values = [rng.integers(0, 3, size=terms).tolist() for _ in range(40)] + [[0] * terms, [2] * terms]
    packs = [sum(v << (2 * k) for k, v in enumerate(value)) for value in values]
    assert _evaluate(m, packed, total, packs) == [min(sum(value), 2) for value in values]


@pytest.mark.parametrize("register,cycles_per_beat", [(StreamRegister, 1), (SlowStreamRegister, 2)])
@pytest.mark.parametrize("valid,ready", [(1.0, 1.0), (0.6, 0.4), (0.3, 0.9)])
def test_stream_registers_pass_every_beat_once_in_order(register, cycles_per_beat, valid, ready):
    """Under any pattern of valid and ready: every beat, once, in order; at full rate, a beat every
    cycle (the skid buffer) or every other cycle (the slow one)."""
    rng = np.random.default_rng(11)
    stage = register(data.StructLayout({"value": 8}))
    beats = rng.integers(0, 256, size=200).tolist()
    source = StreamSource(stage.inlet, beats, probability=valid, rng=rng)
    sink = StreamSink(stage.outlet, len(beats), probability=ready, rng=rng, drain=10)
    run_streams(stage, source, sink)
    assert sink.received == beats and sink.extra == []
    if valid == ready == 1.0:
        assert sink.received_at[-1] <= cycles_per_beat * len(beats) + 2


def test_readout_sends_the_logits_and_the_first_largest():
    rng = np.random.default_rng(5)
    net = make_network(rng, [3, 7], 4)
    plan = plan_core(net, lanes=[3], streaming=False).layers[0]
    logits = np.array([5, -3, 9, 9, 0, -7, 2])                   # a tie: the first index wins
    stage = Readout(plan)
    sink = StreamSink(stage.results, 1, probability=0.5, rng=rng, drain=20)
    _drain_a_filled_bank(stage, plan, _pack_rows(logits, plan), sink)
    [result] = sink.received
    label_width = addr_width(plan.neurons)
    assert result & ((1 << label_width) - 1) == 2
    got = _rows_to_lanes([result >> label_width], plan.neurons, plan.membrane_width)[0]
    assert got.tolist() == logits.tolist()
    assert sink.extra == []


@pytest.mark.parametrize("write_first", [False, True])
def test_membrane_reads_see_the_stages_writes_before_they_land(write_first):
    """A fill-port read returns the newest of the writes to its row up to the cycle before its data:
    the one in the read's own cycle (forwarded, or read write-first) or the one after it (forwarded)."""
    banks = MembraneBanks(rows=3, width=8, write_first=write_first)
    writes = {0: (1, 5), 1: (2, 7), 2: (1, 9)}          # cycle: (row, value)
    reads = [1, 1, 2, 1, 0]                               # one address per cycle
    seen = []

    async def bench(ctx):
        fill = banks.fill
        for cycle in range(len(reads) + READ_LATENCY):
            row, value = writes.get(cycle, (0, 0))
            ctx.set(fill.write_en, cycle in writes)
            ctx.set(fill.write_addr, row)
            ctx.set(fill.write_data, value)
            ctx.set(fill.read_addr, reads[cycle] if cycle < len(reads) else 0)
            if cycle >= READ_LATENCY:
                seen.append(ctx.get(fill.read_data))
            await ctx.tick()

    sim = Simulator(banks)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [5, 9, 7, 9, 0]


@pytest.mark.parametrize("rereads,write_first", [(True, False), (False, False), (True, True)])
def test_a_drain_read_sees_a_write_of_its_own_cycle_only_where_its_stage_rereads(rereads, write_first):
    """A fire stage of few rows may read a row in the cycle it writes it back: its read gets the write
    (forwarded, or read write-first)."""
    banks = MembraneBanks(rows=3, width=8, drain_rereads=rereads, write_first=write_first)
    seen = []

    async def bench(ctx):
        for _ in _fill_bank(ctx, banks.fill, [4, 5, 6]):
            await ctx.tick()
        drain = banks.drain
        ctx.set(drain.read_addr, 1)
        ctx.set(drain.write_addr, 1)
        ctx.set(drain.write_data, 77)
        ctx.set(drain.write_en, 1)
        await ctx.tick()
        ctx.set(drain.write_en, 0)
        ctx.set(drain.read_addr, 1)
        await ctx.tick()
        seen.append(ctx.get(drain.read_data))          # the read of the write's cycle
        await ctx.tick()
        seen.append(ctx.get(drain.read_data))          # the read a cycle later

    sim = Simulator(banks)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == ([77, 77] if rereads else [5, 77])


def test_membrane_banks_alternate_between_fill_and_drain():
    banks = MembraneBanks(rows=3, width=8)
    seen = []

    async def bench(ctx):
        fill, drain = banks.fill, banks.drain
        assert ctx.get(fill.ready) and not ctx.get(drain.ready)
        for image in range(3):
            for _ in _fill_bank(ctx, fill, [10 * image + r for r in range(3)]):
                await ctx.tick()
            assert ctx.get(drain.ready), "a handed-over bank is full"
            assert ctx.get(fill.ready), "the other bank is free for the next image"
            seen.append(await _read_rows(ctx, drain, 3))
            ctx.set(drain.done, 1)
            await ctx.tick()
            ctx.set(drain.done, 0)
            assert not ctx.get(drain.ready)

    sim = Simulator(banks)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [[0, 1, 2], [10, 11, 12], [20, 21, 22]]


# ---------------------------------------------------------------------------- board top stages

@pytest.mark.parametrize("gap", [2, 3, 7])
def test_frame_crc_is_zlibs_crc32_a_byte_every_gap_cycles(gap):
    """Random frames of 0-40 bytes, one taken every ``gap`` cycles (two at least: the receiver's and the
    UART's pace): once busy falls after the last, ``crc`` is ``zlib.crc32`` of them."""
    import zlib

    dut = FrameCRC()
    rng = np.random.default_rng(gap)
    frames = [bytes(rng.integers(0, 256, size=n, dtype=np.uint8)) for n in (0, 1, 5, 40)]
    got = []

    async def bench(ctx):
        for frame in frames:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await ctx.tick()
            for byte in frame:
                ctx.set(dut.byte, byte)
                ctx.set(dut.take, 1)
                await ctx.tick()
                ctx.set(dut.take, 0)
                await ctx.tick().repeat(gap - 1)
            await ctx.tick().until(~dut.busy)
            got.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [zlib.crc32(frame) for frame in frames]
    assert FrameCRC.RESIDUE == zlib.crc32(frames[-1] + zlib.crc32(frames[-1]).to_bytes(4, "little"))


@pytest.fixture(scope="module")
def board():
    net = make_network(np.random.default_rng(2), [5, 4, 3], 4)
    return net, board_params(plan_core(net, lanes=[2, 3], input_lanes=2), 12_000_000, 1_500_000)


def _run_receiver(params, data: bytes, cycles: int = 400, busy=lambda cycle: False,
                  image_busy=lambda cycle: False):
    """Bytes into a FrameReceiver with every answer stream ready (``image_busy(cycle)``: the image
    buffer's busy input); what came out of each port, image writes with their cycle in ``writes``.
    With run-time weights: the LOAD buffer rows written, the LOADs started (``busy(cycle)``: the
    weight loader's busy input) and the acknowledgements."""
    dut = FrameReceiver(params)
    T, lanes = params.plan.timesteps, params.plan.input.lanes
    out = {"requests": [], "errors": [], "identify": [], "image": {}, "writes": [], "start": 0, "rows": [], "loads": [],
           "acks": [],
           "lane_bits": [((1 << T) - 1) << (lane * T) for lane in range(lanes)]}
    ports = {"taken": dut.bytes.ready, "req": dut.requests.valid, "seq": dut.requests.payload,
             "err": dut.errors.valid, "error": dut.errors.payload, "ident": dut.identify.valid,
             "ident_seq": dut.identify.payload, "write": dut.image.en, "addr": dut.image.addr, "beat": dut.image.data,
             "start": dut.image.start, "ack": dut.acks.valid, "ack_seq": dut.acks.payload}
    if hasattr(dut, "weights"):
        ports.update({"row": dut.weights.en, "row_addr": dut.weights.addr, "row_data": dut.weights.data,
                      "load": dut.weights.start, "request": dut.weights.request})

    async def bench(ctx):
        for port in (dut.requests, dut.errors, dut.acks, dut.identify):
            ctx.set(port.ready, 1)
        pending = list(data)
        for cycle in range(cycles):
            ctx.set(dut.bytes.valid, bool(pending))
            if pending:
                ctx.set(dut.bytes.payload, pending[0])
            ctx.set(dut.image.busy, image_busy(cycle))
            if "row" in ports:
                ctx.set(dut.weights.busy, busy(cycle))
            got = dict(zip(ports, (await ctx.tick().sample(*ports.values()))[2:]))
            if pending and got["taken"]:
                pending.pop(0)
            _record(out, got, cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def _record(out: dict, got: dict, cycle: int) -> None:
    """One cycle's outputs of a FrameReceiver, sampled at the clock edge."""
    if got["req"]:
        out["requests"].append(got["seq"].seq)
    if got["err"]:
        out["errors"].append((got["error"].seq, got["error"].code))
    if got["ident"]:
        out["identify"].append(got["ident_seq"])
    if got["write"]:      # the lanes whose bit is set in the write enable (unwritten lanes read as all ones)
        out["writes"].append(cycle)
        word = out["image"].setdefault(got["addr"], sum(out["lane_bits"]))
        for lane, bits in enumerate(out["lane_bits"]):
            if got["write"] >> lane & 1:
                word = word & ~bits | got["beat"] & bits
        out["image"][got["addr"]] = word
    if got["ack"]:
        out["acks"].append(got["ack_seq"])
    out["start"] += got["start"]
    if got.get("row"):
        out["rows"].append((cycle, got["row_addr"], got["row_data"]))
    if got.get("load"):
        out["loads"].append((cycle, got["request"].layer, got["request"].address, got["request"].count))


def test_frame_receiver_accepts_a_checked_image(board):
    net, params = board
    codes = [3, 0, 15, 7, 1]
    out = _run_receiver(params, encode_frame(FrameType.INFER, 41, bytes(codes)))
    assert out["requests"] == [41] and out["errors"] == [] and out["start"] == 1
    assert out["image"] == dict(enumerate(params.plan.input.beats(codes)))


def test_frame_receiver_writes_no_code_while_the_image_buffer_is_busy(board):
    """Bytes on offer every cycle, the image buffer busy for the first 120 cycles (loading the previous
    image): the header is taken, but no code until the buffer is free, and then the image is exact."""
    net, params = board
    codes = [3, 0, 15, 7, 1]
    out = _run_receiver(params, encode_frame(FrameType.INFER, 42, bytes(codes)), image_busy=lambda cycle: cycle < 120)
    assert out["writes"] and min(out["writes"]) >= 120
    assert out["requests"] == [42] and out["errors"] == [] and out["start"] == 1
    assert out["image"] == dict(enumerate(params.plan.input.beats(codes)))


@pytest.mark.parametrize("frame,error", [
    (bytearray(encode_frame(FrameType.INFER, 9, bytes(5))), ErrorCode.CRC),         # damaged below
    (encode_frame(FrameType.INFER, 9, bytes(4)), ErrorCode.LENGTH),
    (encode_frame(0x42, 9), ErrorCode.TYPE),
])
def test_frame_receiver_refuses_a_bad_request(board, frame, error):
    _, params = board
    if error == ErrorCode.CRC:
        frame[-1] ^= 0x10
    out = _run_receiver(params, bytes(frame))
    assert out["errors"] == [(9, ErrorKind(error.value))] and out["requests"] == [] and out["start"] == 0


@pytest.mark.parametrize("crc_byte", range(CRC_BYTES))
def test_frame_receiver_compares_every_byte_of_the_crc32(board, crc_byte):
    """One bit off in any of the CRC-32's four bytes is ERROR CRC, and no image starts."""
    _, params = board
    frame = bytearray(encode_frame(FrameType.INFER, 9, bytes([3, 0, 15, 7, 1])))
    frame[len(frame) - CRC_BYTES + crc_byte] ^= 0x80
    out = _run_receiver(params, bytes(frame))
    assert out["errors"] == [(9, ErrorKind.CRC)] and out["requests"] == [] and out["start"] == 0


def test_frame_receiver_holds_an_identify_until_taken(board):
    _, params = board
    out = _run_receiver(params, b"\x00\x13" + encode_frame(FrameType.IDENTIFY, 300))   # noise before SYNC
    assert 300 in out["identify"] and out["errors"] == []


@pytest.fixture(scope="module")
def loading_board():
    """Both layers' weights loaded at run time: 3-byte rows (lanes 3 x 8 bits), 170 rows a LOAD."""
    net = make_network(np.random.default_rng(2), [5, 4, 3], 4)
    params = board_params(plan_core(net, lanes=[2, 3], input_lanes=2, loaded_weights=[0, 1]), 12_000_000, 1_500_000)
    assert (params.load_bytes, params.load_rows) == (3, 170)
    return net, params


def _load_frame(params, seq: int, layer: int, address: int, rows, count: int | None = None) -> bytes:
    """A LOAD frame; ``count`` overrides the row count byte (a length that does not fit it)."""
    payload = bytearray(bytes([layer]) + address.to_bytes(2, "little") + bytes([len(rows)])
                        + b"".join(row.to_bytes(params.load_bytes, "little") for row in rows))
    if count is not None:
        payload[3] = count
    return encode_frame(FrameType.LOAD, seq, bytes(payload))


def test_frame_receiver_takes_a_load_of_several_rows_once_the_buffer_is_free(loading_board):
    """docs/protocol.md, LOAD: rows into the buffer, in order, not before the last LOAD's rows are
    written (busy for 60 cycles), then one start with layer, address and count, and an acknowledgement."""
    _, params = loading_board
    rows = [0x123456, 0xABCDEF, 0x000001]
    out = _run_receiver(params, _load_frame(params, 21, 1, 2, rows), busy=lambda cycle: cycle < 60)
    assert [(addr, data) for _, addr, data in out["rows"]] == list(enumerate(rows)) and out["rows"][0][0] >= 60
    assert [load[1:] for load in out["loads"]] == [(1, 2, 3)] and out["acks"] == [21] and out["errors"] == []
    commit = _run_receiver(params, _load_frame(params, 22, 0xFF, 0, []), busy=lambda cycle: cycle < 60)
    assert [load[1:] for load in commit["loads"]] == [(0xFF, 0, 0)] and commit["loads"][0][0] >= 60
    assert commit["rows"] == [] and commit["acks"] == [22]


def _damaged(frame: bytes) -> bytes:
    frame = bytearray(frame)
    frame[-1] ^= 0x10
    return bytes(frame)


@pytest.mark.parametrize("frame,error,buffered", [
    (lambda p: _load_frame(p, 9, 1, 0, [1, 2], count=3), ErrorCode.LENGTH, 0),     # the length is not 4 + 3 rows
    (lambda p: _load_frame(p, 9, 1, 0, [], count=0), ErrorCode.LENGTH, 0),         # a LOAD of no rows
    (lambda p: _load_frame(p, 9, 1, 0, [7] * 171), ErrorCode.LENGTH, 0),          # more rows than the buffer's
    (lambda p: _load_frame(p, 9, 0xFF, 0, [7]), ErrorCode.LENGTH, 0),             # a commit with a row
    (lambda p: _load_frame(p, 9, 5, 0, [7, 8]), ErrorCode.LENGTH, 2),             # no layer 5 (after the CRC)
    (lambda p: _damaged(_load_frame(p, 9, 1, 0, [7, 8])), ErrorCode.CRC, 2),
], ids=["length-not-count", "no-rows", "too-many-rows", "commit-with-rows", "unknown-layer", "crc"])
def test_frame_receiver_never_starts_a_bad_load(loading_board, frame, error, buffered):
    """A refused LOAD is answered and never started: its rows (if any reached the buffer) are never written."""
    _, params = loading_board
    out = _run_receiver(params, frame(params), cycles=600)
    assert out["errors"] == [(9, ErrorKind(error.value))] and out["loads"] == [] and out["acks"] == []
    assert len(out["rows"]) == buffered


def test_frame_kinds_are_the_protocol_numbers():
    assert {k.name: k.value for k in FrameKind} == {t.name: t.value for t in FrameType}
    assert {k.name: k.value for k in ErrorKind} == {c.name: c.value for c in ErrorCode}


def _transmitted(dut: FrameTransmitter, offer, cycles: int) -> bytes:
    """Run ``offer`` (a testbench driving the transmitter's inputs) and collect the bytes it sends."""
    sent = []

    async def take(ctx):
        ctx.set(dut.bytes.ready, 1)
        for _ in range(cycles):
            _, _, valid, byte = await ctx.tick().sample(dut.bytes.valid, dut.bytes.payload)
            if valid:
                sent.append(byte)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(offer)
    sim.add_testbench(take)
    sim.run()
    return bytes(sent)


def test_frame_transmitter_frames_an_error_and_a_result(board):
    _, params = board
    plan = params.plan
    dut = FrameTransmitter(params)

    async def offer(ctx):
        ctx.set(dut.errors.payload.seq, 77)
        ctx.set(dut.errors.payload.code, ErrorKind.BUSY)
        ctx.set(dut.errors.valid, 1)
        await ctx.tick().until(dut.errors.ready)
        ctx.set(dut.errors.valid, 0)
        ctx.set(dut.results.payload.label, 1)
        for k, logit in enumerate([-300, 12, 5]):
            ctx.set(dut.results.payload.logits[k], logit)
        ctx.set(dut.requests.payload, {"seq": 5, "generation": 0})
        ctx.set(dut.results.valid, 1)
        ctx.set(dut.requests.valid, 1)
        await ctx.tick().until(dut.results.ready)
        ctx.set(dut.results.valid, 0)
        ctx.set(dut.requests.valid, 0)

    error, result = FrameDecoder(max_payload=64).feed(_transmitted(dut, offer, cycles=200))
    assert (error.type, error.seq, error.payload) == (FrameType.ERROR, 77, bytes([ErrorCode.BUSY]))
    assert (result.type, result.seq) == (FrameType.RESULT, 5)
    label = int.from_bytes(result.payload[:2], "little")
    n = params.logit_bytes
    logits = [int.from_bytes(result.payload[2 + k * n:2 + (k + 1) * n], "little", signed=True) for k in range(3)]
    assert (label, logits) == (1, [-300, 12, 5]) and plan.classes == 3


def test_frame_transmitter_drops_the_results_of_an_earlier_session(board):
    """docs/protocol.md, "Sessions": a result of a request taken before the last IDENTIFY is not sent."""
    _, params = board
    dut = FrameTransmitter(params)

    async def offer(ctx):
        ctx.set(dut.generation, 7)
        for seq, generation in ((11, 6), (12, 7)):
            ctx.set(dut.requests.payload, {"seq": seq, "generation": generation})
            ctx.set(dut.results.valid, 1)
            ctx.set(dut.requests.valid, 1)
            await ctx.tick().until(dut.results.ready)
        ctx.set(dut.results.valid, 0)
        ctx.set(dut.requests.valid, 0)

    frames = FrameDecoder().feed(_transmitted(dut, offer, cycles=120))
    assert [(f.type, f.seq) for f in frames] == [(FrameType.RESULT, 12)]


def test_an_identify_starts_a_new_session(board):
    _, params = board
    dut = FrameReceiver(params)
    generations = []

    async def bench(ctx):
        for port in (dut.identify, dut.errors, dut.acks):
            ctx.set(port.ready, 1)
        for byte in encode_frame(FrameType.IDENTIFY, 1) + encode_frame(FrameType.IDENTIFY, 2):
            ctx.set(dut.bytes.valid, 1)
            ctx.set(dut.bytes.payload, byte)
            await ctx.tick().until(dut.bytes.ready)
            generations.append(ctx.get(dut.generation))
        ctx.set(dut.bytes.valid, 0)
        for _ in range(8):                           # the last frame's check (a few cycles)
            await ctx.tick()
            generations.append(ctx.get(dut.generation))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert generations[0] == 0 and generations[-1] == 2


def test_image_loader_streams_the_buffer_into_the_core(board):
    _, params = board
    beats = params.plan.input.beats([3, 0, 15, 7, 1])
    dut = ImageLoader(params)
    sink = StreamSink(dut.images, len(beats), probability=0.5, rng=np.random.default_rng(0), drain=10)

    async def write(ctx):
        for address, beat in enumerate(beats):
            ctx.set(dut.receive.addr, address)
            ctx.set(dut.receive.data, beat)
            ctx.set(dut.receive.en, (1 << params.plan.input.lanes) - 1)
            await ctx.tick()
        ctx.set(dut.receive.en, 0)
        ctx.set(dut.receive.start, 1)
        await ctx.tick()
        ctx.set(dut.receive.start, 0)
        assert ctx.get(dut.receive.busy)
        await ctx.tick().until(~dut.receive.busy)

    async def take(ctx):
        await sink.run(ctx, _NoClock())

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(write)
    sim.add_testbench(take)
    sim.run()
    assert sink.received == beats and sink.extra == []


def test_weight_loader_writes_rows_and_commits(loading_board):
    """The buffer's rows go to consecutive core addresses, one a cycle; busy until the last; the
    rows clear *loaded*, the commit sets it."""
    _, params = loading_board
    plan = params.plan
    dut = WeightLoader(params)
    rows, written = [0x5A5A5A, 0x000102, 0xFFFFFF], []
    mask = (1 << plan.load_data_width) - 1

    async def bench(ctx):
        for address, row in enumerate(rows):
            ctx.set(dut.requests.addr, address)
            ctx.set(dut.requests.data, row)
            ctx.set(dut.requests.en, 1)
            await ctx.tick()
        ctx.set(dut.requests.en, 0)
        ctx.set(dut.requests.request, {"layer": 1, "address": 5, "count": 3})
        ctx.set(dut.requests.start, 1)
        await ctx.tick()
        ctx.set(dut.requests.start, 0)
        for _ in range(6):
            busy = ctx.get(dut.requests.busy)
            if ctx.get(dut.core.en):
                written.append((ctx.get(dut.core.layer), ctx.get(dut.core.addr), ctx.get(dut.core.data), busy))
            await ctx.tick()
        assert not ctx.get(dut.requests.busy) and not ctx.get(dut.requests.loaded)
        ctx.set(dut.requests.request, {"layer": 0xFF, "address": 0, "count": 0})     # the commit
        ctx.set(dut.requests.start, 1)
        await ctx.tick()
        ctx.set(dut.requests.start, 0)
        assert ctx.get(dut.requests.loaded) and not ctx.get(dut.core.en)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert written == [(1, 5 + k, row & mask, 1) for k, row in enumerate(rows)]
