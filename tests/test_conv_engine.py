"""The convolution engine: geometry tables, kernel-only memories, cycle model, and bit-exactness in amaranth.sim."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikesmith.contract.network import ConvGeometry
from spikesmith.gen.sizing import SizingError, plan_core
from spikesmith.sim import golden
from spikesmith.sim.hdl import simulate_core

from conftest import conv_networks_and_codes, make_conv_network

# (input shape, [(C_out, kernel, stride, padding)], classes, T, lanes, input lanes)
CONV_CASES = [
    ((1, 8, 8), [(4, (3, 3), (1, 1), (1, 1)), (6, (6, 6), (2, 2), (2, 2))], 10, 6, [2, 6, 1], 4),
    ((2, 7, 5), [(3, (2, 3), (1, 2), (0, 1)), (4, (3, 1), (3, 1), (1, 0))], 3, 4, [3, 2, 2], 5),
    ((3, 6, 6), [(2, (1, 1), (2, 2), (0, 0))], 5, 8, [1, 5], 3),        # 1x1 kernel, stride 2: odd pixels reach nothing
    ((1, 5, 9), [(8, (5, 5), (1, 3), (2, 4))], 2, 3, [8, 1], 9),       # kernel wider than the stride, big padding
]


def conv_case(case, seed=0):
    shape, convs, classes, T, lanes, input_lanes = CONV_CASES[case]
    return make_conv_network(np.random.default_rng(seed), shape, convs, classes, T), lanes, input_lanes


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 5), st.integers(1, 3), st.integers(0, 4))
def test_taps_are_exactly_the_outputs_whose_window_covers_the_input(channels, size, kernel, stride, padding):
    padding = min(padding, kernel - 1)
    if size + 2 * padding < kernel:
        return
    g = ConvGeometry((channels, size, size), 2, (kernel, kernel), (stride, stride), (padding, padding))
    for position in range(size):
        expected = [(k, o) for o in range(g.out_shape[1]) for k in range(kernel) if o * stride - padding + k == position]
        assert g.taps(0, position) == sorted(expected), f"input row {position}"
        outputs = [o for _, o in g.taps(0, position)]
        assert outputs == sorted(outputs, reverse=True), "each further tap is one output row back"


def test_dense_and_kernel_of_invert_each_other():
    rng = np.random.default_rng(1)
    g = ConvGeometry((2, 5, 6), 3, (3, 2), (2, 1), (1, 1))
    kernel = rng.integers(-9, 10, size=g.kernel_shape)
    matrix = g.dense(kernel)
    assert matrix.shape == (3 * 3 * 7, 2 * 5 * 6)
    assert np.array_equal(g.kernel_of(matrix), kernel)
    # Every row holds at most kh*kw*C_in kernel entries: the window of one output pixel.
    assert (np.count_nonzero(matrix, axis=1) <= 3 * 2 * 2).all()


def test_the_plan_stores_only_the_kernel():
    net, lanes, input_lanes = conv_case(0)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, streaming=False)
    conv0, conv1 = plan.layers[:2]
    assert conv0.conv is not None and conv0.emits_pixels and conv1.conv is not None and not conv1.emits_pixels
    assert conv1.memory_bits["weights"] == 6 * 4 * 6 * 6 * conv1.weight_width, "C_out x C_in x kh x kw weights"
    assert conv0.blocks == 2 and conv0.rows == 2 * 8 * 8, "4 channels on 2 lanes, 8x8 pixels"
    assert conv1.blocks == 1 and conv1.rows == 4 * 4
    assert plan.input.pixels == (1, 8, 8)
    dense_bits = net.layers[1].in_size * net.layers[1].out_size * conv1.weight_width
    assert conv1.memory_bits["weights"] * 10 < dense_bits


def test_lanes_of_a_convolution_divide_its_channels():
    net, lanes, _ = conv_case(0)
    with pytest.raises(SizingError, match="convolution with 6 output channels: its lanes must divide that number, "
                                          "not 4 \\(one of 1, 2, 3, 6\\)"):
        plan_core(net, lanes=[2, 4, 1], streaming=False)
    with pytest.raises(SizingError, match="input lanes must divide 8, not 3"):
        plan_core(net, lanes=lanes, input_lanes=3, streaming=False)
    assert plan_core(net, streaming=False).input.lanes == 8, "the default input lanes divide the image width"


@pytest.mark.long
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("skip_silent", [True, False])
def test_conv_networks_bit_exact_under_backpressure(case, skip_silent):
    net, lanes, input_lanes = conv_case(case, seed=10 + case)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=skip_silent, streaming=False)
    rng = np.random.default_rng(case)
    codes = rng.integers(0, net.max_code + 1, size=(4, net.input.size))
    codes[1] = 0
    codes[2] = net.max_code
    expected = golden.run(net, codes)
    run = simulate_core(plan, codes, seed=case, valid_probability=0.6, ready_probability=0.4, drain=200)
    assert run.extra_results == [] and len(run.labels) == len(codes)
    for n in range(len(codes)):
        assert run.logits[n].tolist() == expected.logits[n].tolist(), f"image {n}: logits differ"
        assert run.labels[n] == expected.predictions[n], f"image {n}: label differs"


@pytest.mark.parametrize("case", [1, 2])
def test_conv_interval_equals_the_report(case):
    """Skipping off: the cycle model (B cycles per tap of each event, passes over the rows) is exact."""
    net, lanes, input_lanes = conv_case(case, seed=20 + case)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=False, streaming=False)
    codes = np.random.default_rng(case).integers(0, net.max_code + 1, size=(7, net.input.size))
    run = simulate_core(plan, codes)
    gaps = np.diff(run.result_cycles)[3:]
    assert gaps.tolist() == [plan.initiation_interval] * len(gaps)
    assert run.result_cycles[0] <= plan.latency_bound


def test_event_cycles_count_the_taps():
    net, lanes, input_lanes = conv_case(2)
    layer = plan_core(net, lanes=lanes, input_lanes=input_lanes, streaming=False).layers[0]
    cycles = np.array(layer.event_cycles()).reshape(3, 6, 6)
    # 1x1 kernel, stride 2: even pixels reach one output (B = 2 blocks), odd ones none (one idle cycle).
    for y, x in itertools.product(range(6), range(6)):
        assert cycles[0, y, x] == (2 if y % 2 == 0 and x % 2 == 0 else 1)


def test_run_time_weights_of_a_convolution():
    net, lanes, input_lanes = conv_case(1, seed=5)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, loaded_weights=[0, 1], streaming=False)
    codes = np.random.default_rng(2).integers(0, net.max_code + 1, size=(3, net.input.size))
    run = simulate_core(plan, codes, valid_probability=0.7, ready_probability=0.7)
    assert run.logits.tolist() == golden.run(net, codes).logits.tolist()


@settings(max_examples=30, deadline=None)
@given(conv_networks_and_codes(), st.data())
def test_any_small_conv_network_bit_exact(case, draw):
    """Hypothesis: channels, image sizes, kernels, strides, paddings, T, weight bits, lanes and skipping."""
    net, codes = case
    lanes = [draw.draw(st.sampled_from([d for d in range(1, layer.conv.geometry.out_channels + 1)
                                        if layer.conv.geometry.out_channels % d == 0]))
             if layer.conv is not None else draw.draw(st.integers(1, layer.out_size)) for layer in net.layers]
    width = net.input.shape[2]
    plan = plan_core(net, lanes=lanes, input_lanes=draw.draw(st.sampled_from([d for d in range(1, width + 1)
                                                                               if width % d == 0])),
                     skip_silent=draw.draw(st.booleans()), streaming=False)
    run = simulate_core(plan, codes, seed=draw.draw(st.integers(0, 99)), valid_probability=0.6,
                        ready_probability=0.6, drain=20)
    assert run.extra_results == []
    assert run.logits.tolist() == golden.run(net, codes).logits.tolist()


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_tap_decoder_gives_each_pixel_its_first_tap_rows(case):
    """The decoder's register holds, per input pixel, the rows and tap counts of ``LayerPlan.taps``."""
    from amaranth.sim import Simulator

    from spikesmith.hw.conv import TapDecoder

    net, lanes, input_lanes = conv_case(case)
    layer = plan_core(net, lanes=lanes, input_lanes=input_lanes, streaming=False).layers[0]
    (channels, height, width), rows, cols = layer.conv.in_shape, layer.taps(0), layer.taps(1)
    pixels = list(itertools.product(range(channels), range(height), range(width)))
    seen = []
    decoder = TapDecoder(layer)

    async def bench(ctx):
        ctx.set(decoder.outlet.ready, 1)
        for c, y, x in pixels:
            ctx.set(decoder.inlet.valid, 1)
            ctx.set(decoder.inlet.payload, {"channel": c, "y": y, "x": x, "spike": 1, "end": 0})
            await ctx.tick()
            seen.append(ctx.get(decoder.outlet.payload))    # the beat, registered at this tick

    sim = Simulator(decoder)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for (c, y, x), got in zip(pixels, seen):
        (m_y, w_y, taps_y), (m_x, w_x, taps_x) = rows[y], cols[x]
        reaches = taps_y > 0 and taps_x > 0
        assert got.reaches == reaches and got.spike == 1 and got.end == 0, (c, y, x)
        if reaches:
            assert (got.first_m, got.first_w) == (m_y + m_x, w_y + w_x + c), (c, y, x)
            assert (got.last_tap_y, got.last_tap_x) == (taps_y - 1, taps_x - 1), (c, y, x)
            assert (got.one_tap_y, got.one_tap_x, got.one_tap) == (taps_y == 1, taps_x == 1, taps_y == taps_x == 1)
