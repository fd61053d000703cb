"""One engine at a time in amaranth.sim: the input encoder and a firing layer, event for event."""

import numpy as np
import pytest

from spikesmith.gen.sizing import plan_core
from spikesmith.hw.engines import InputEncoder, LayerEngine
from spikesmith.sim import golden
from spikesmith.sim.hdl import StreamSink, StreamSource, run_streams

from conftest import make_network


def expected_events(codes: np.ndarray, timesteps: int, skip_silent: bool) -> list[tuple]:
    """The event stream of docs/core.md for (N, n) codes: per step, spiking (or all) neurons, then END."""
    events = []
    for row in codes:
        for t in range(timesteps):
            bits = (row >> (timesteps - 1 - t)) & 1
            events += [(int(i), int(b)) for i, b in enumerate(bits) if b or not skip_silent]
            events.append("end")
    return events


def pack_event(event, addr_width: int) -> int:
    if event == "end":
        return 1 << (addr_width + 1)
    addr, spike = event
    return addr | (spike << addr_width)


def unpack_event(value: int, addr_width: int):
    if value >> (addr_width + 1) & 1:
        return "end"                              # the marker's address carries nothing
    return (value & ((1 << addr_width) - 1), value >> addr_width & 1)


def addr_width(n: int) -> int:
    return max(1, (n - 1).bit_length())


@pytest.mark.parametrize("skip_silent", [True, False])
@pytest.mark.parametrize("size,lanes,timesteps", [(7, 3, 4), (5, 5, 1), (9, 1, 3), (16, 4, 8)])
def test_input_encoder_emits_msb_first_codes(size, lanes, timesteps, skip_silent):
    rng = np.random.default_rng(size * lanes)
    net = make_network(rng, [size, 2], timesteps)
    plan = plan_core(net, input_lanes=lanes, skip_silent=skip_silent)
    codes = rng.integers(0, 1 << timesteps, size=(5, size))
    codes[1] = 0                                  # an all-silent image
    codes[2] = (1 << timesteps) - 1               # an all-spiking image
    dut = InputEncoder(plan.input, skip_silent)
    want = expected_events(codes, timesteps, skip_silent)
    source = StreamSource(dut.images, [b for row in codes for b in plan.input.beats(row)], probability=0.6, rng=rng)
    sink = StreamSink(dut.events, len(want), probability=0.5, rng=rng, drain=20)
    run_streams(dut, source, sink)
    got = [unpack_event(v, addr_width(size)) for v in sink.received]
    assert got == want
    assert sink.extra == [], "events after the last image"


@pytest.mark.parametrize("skip_silent", [True, False])
@pytest.mark.parametrize("inputs,neurons,lanes,timesteps", [(6, 7, 3, 4), (3, 4, 4, 6), (5, 5, 1, 2), (4, 9, 2, 8)])
def test_layer_engine_fires_the_golden_codes(inputs, neurons, lanes, timesteps, skip_silent):
    """Events in (the previous layer's spikes) -> events out equal the golden model's codes, step by step."""
    rng = np.random.default_rng(inputs * neurons + lanes)
    net = make_network(rng, [inputs, neurons, 2], timesteps, negative_bias=0.5, threshold_scale=0.3)
    plan = plan_core(net, lanes=[lanes, 1], skip_silent=skip_silent)
    codes = rng.integers(0, 1 << timesteps, size=(6, inputs))
    layer_codes = golden.run(net, codes, trace=True).trace[0].codes
    assert 0 < layer_codes.sum() < layer_codes.size * ((1 << timesteps) - 1), "a test that sees some spikes"
    dut = LayerEngine(plan.layers[0], skip_silent)
    events_in = [pack_event(e, addr_width(inputs)) for e in expected_events(codes, timesteps, skip_silent)]
    want = expected_events(layer_codes, timesteps, skip_silent)
    source = StreamSource(dut.spikes_in, events_in, probability=0.7, rng=rng)
    sink = StreamSink(dut.spikes_out, len(want), probability=0.4, rng=rng, drain=50)
    run_streams(dut, source, sink)
    got = [unpack_event(v, addr_width(neurons)) for v in sink.received]
    assert got == want
    assert sink.extra == []
