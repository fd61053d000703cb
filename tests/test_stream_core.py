"""Whole cores with streaming convolutions (and the max pools they read) in front of the dense engines:
amaranth.sim and the compiled Verilator harness against the golden model, and the cycle model."""

import numpy as np
import pytest

from spikesmith.contract.streaming import StreamConvPlan, StreamPoolPlan
from spikesmith.gen.sizing import SizingError, plan_core
from spikesmith.sim import golden
from spikesmith.sim.harness import build_harness, run_harness
from spikesmith.sim.hdl import simulate_core
from spikesmith.sim.random_networks import make_conv_network, make_pooled_network, random_codes

from test_harness import assert_agrees


def strided_network(seed: int, timesteps: int = 4):
    """Two or three convolutions with random kernels, strides and padding, a max pool after one, then dense."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(6, 11)), int(rng.integers(6, 11)))
    convs, pools, current = [], [], shape
    from spikesmith.contract.network import ConvGeometry, PoolGeometry
    for index in range(int(rng.integers(2, 4))):
        kernel = tuple(int(rng.integers(1, min(4, current[1 + a]) + 1)) for a in range(2))
        stride = tuple(int(rng.integers(1, 3)) for _ in range(2))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        geometry = ConvGeometry(current, int(rng.choice([2, 4, 6])), kernel, stride, padding)
        if min(geometry.out_shape[1:]) < 2:
            break
        convs.append((geometry.out_channels, kernel, stride, padding))
        current = geometry.out_shape
        pool = None
        if index == 0 and min(current[1:]) >= 4:
            pool = ((2, 2), (2, 2), (0, 0), (1, 1), bool(rng.integers(0, 2)))
            current = PoolGeometry(current, *pool[:4], pool[4]).out_shape
        pools.append(pool)
    return make_conv_network(rng, shape, convs, int(rng.integers(2, 6)), timesteps, weight_bits=5, pools=pools)


NETWORKS = [strided_network(seed, timesteps=1 + seed % 8) for seed in range(6)]


@pytest.mark.parametrize("case", range(4), ids=[f"net{k}" for k in range(4)])
def test_a_streaming_core_in_amaranth_sim_is_bit_exact(case):
    net = NETWORKS[case]
    plan = plan_core(net)
    assert plan.stream and isinstance(plan.stream[0], StreamConvPlan)
    codes = random_codes(net, 5, seed=case)
    run = simulate_core(plan, codes, valid_probability=0.8, ready_probability=0.7, drain=40)
    expected = golden.run(net, codes)
    assert (run.logits == expected.logits).all() and (run.labels == expected.predictions).all()
    assert not run.extra_results


def _longer_after(count: int, cases):
    """The first ``count`` cases in the default suite, the others in the long one (README, "Tests")."""
    return [case if k < count else pytest.param(case, marks=pytest.mark.long) for k, case in enumerate(cases)]


@pytest.mark.parametrize("case", _longer_after(2, range(len(NETWORKS))), ids=[f"net{k}" for k in range(len(NETWORKS))])
def test_a_streaming_core_in_verilog_is_bit_exact_under_backpressure(case, harness_cache):
    net = NETWORKS[case]
    plan = plan_core(net, skip_silent=case % 2 == 0)
    build = build_harness(plan, harness_cache)
    codes = random_codes(net, 80, seed=case)
    expected = golden.run(net, codes)
    run = run_harness(build, plan, codes, expected, seed=case, valid_probability=0.6, ready_probability=0.5)
    assert_agrees(run, expected, len(codes))


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
def test_windows_in_ram_are_bit_exact_in_verilog(skip, harness_cache):
    """Chunks that line up with the input's pixels (an entry of two chunks; a chunk of two entries) put both
    convolutions' windows in RAM; the emitted Verilog agrees with the golden model under back-pressure."""
    rng = np.random.default_rng(31)
    net = make_conv_network(rng, (16, 8, 8), [(8, (3, 3), (1, 1), (1, 1)), (4, (3, 3), (2, 2), (1, 1))], 5, 6,
                            weight_bits=5)
    plan = plan_core(net, lanes=[4, 2, 5], chunks=["8", "16"], input_lanes=4, skip_silent=skip)
    assert [stage.window_in_ram for stage in plan.stream if isinstance(stage, StreamConvPlan)] == [True, True]
    codes = random_codes(net, 40, seed=3)
    expected = golden.run(net, codes)
    run = run_harness(build_harness(plan, harness_cache), plan, codes, expected, seed=4,
                      valid_probability=0.7, ready_probability=0.6)
    assert_agrees(run, expected, len(codes))


@pytest.mark.parametrize("seed", _longer_after(2, range(4)))
def test_random_pooled_networks_stream_bit_exact(seed, harness_cache):
    """make_pooled_network's max pools (any kernel, stride, padding, dilation, ceil_mode) in the stream."""
    net, _ = make_pooled_network(np.random.default_rng(700 + seed), timesteps=3 + seed)
    plan = plan_core(net)
    assert any(isinstance(stage, StreamPoolPlan) for stage in plan.stream)
    codes = random_codes(net, 60, seed=seed)
    expected = golden.run(net, codes)
    run = run_harness(build_harness(plan, harness_cache), plan, codes, expected, seed=seed,
                      valid_probability=0.7, ready_probability=0.6)
    assert_agrees(run, expected, len(codes))


@pytest.mark.parametrize("steps", [2, 4])
def test_whole_windows_at_several_steps_a_cycle_are_bit_exact_in_verilog(steps, harness_cache):
    """``--chunks KxS``: the whole window at ``steps`` time steps a cycle."""
    net = NETWORKS[3]
    assert net.timesteps == 4
    taps = [layer.conv.geometry.window_size for layer in net.layers if layer.conv is not None]
    plan = plan_core(net, chunks=[f"{t}x{steps}" for t in taps])
    assert [stage.op_steps for stage in plan.stream if isinstance(stage, StreamConvPlan)] == [steps] * len(taps)
    codes = random_codes(net, 60, seed=steps)
    expected = golden.run(net, codes)
    run = run_harness(build_harness(plan, harness_cache), plan, codes, expected, seed=steps,
                      valid_probability=0.7, ready_probability=0.6)
    assert_agrees(run, expected, len(codes))


def test_a_large_adder_budget_takes_a_one_channel_window_several_steps_a_cycle():
    """A 1-channel 3x3 convolution at its whole window and every lane can only go faster by steps."""
    from spikesmith.gen.streaming import StreamChoice, choose_stream, stream_options

    rng = np.random.default_rng(9)
    layer = make_conv_network(rng, (1, 8, 8), [(2, (3, 3), (1, 1), (1, 1))], 3, 8, weight_bits=5).layers[0]
    choice, = choose_stream([layer], 8, budget=4096)
    assert choice.lanes == 2 and choice.chunk == 9 and choice.steps > 1
    cycles = dict(stream_options(layer, 8))
    assert cycles[choice] < cycles[StreamChoice(2, 9)]


def test_a_floor_of_steps_a_cycle_reads_fewer_weights_for_the_same_adders_and_worst_case():
    """``steps=4``: every chunk at 4 steps a cycle or more. ``K`` taps at 4 steps has the adders and the worst
    case of ``4K`` taps at one step (four times the chunks, a quarter of the step groups) and a weight row a
    quarter as wide."""
    from spikesmith.gen.streaming import stream_options

    rng = np.random.default_rng(11)
    layer = make_conv_network(rng, (8, 8, 8), [(4, (3, 3), (1, 1), (1, 1))], 3, 8, weight_bits=5).layers[0]
    one, four = dict(stream_options(layer, 8, lanes=4)), dict(stream_options(layer, 8, lanes=4, steps=4))
    assert all(choice.steps >= 4 for choice in four)
    same = [(a, b) for a in one for b in four if a.steps == 1 and b.chunk * 4 == a.chunk]
    assert same and all(one[a] == four[b] and a.adders == b.adders for a, b in same)


def test_a_layer_of_relays_visits_fewer_chunks_than_its_window():
    """A residual block's first convolution carries its input on relay channels: sized with the live chunks,
    the plan's worst case is below that of the same lanes and chunks over every chunk."""
    from spikesmith.contract.streaming import StreamConvPlan

    rng = np.random.default_rng(12)
    net = make_conv_network(rng, (4, 6, 6), [(8, (3, 3), (1, 1), (1, 1))], 3, 4, weight_bits=5)
    conv = net.layers[0].conv
    conv.kernel[4:] = 0
    for relay in range(4):
        conv.kernel[4 + relay, relay, 1, 1] = 1
    plan = plan_core(net, lanes=[4, 1], chunks=[4])
    stage = next(stage for stage in plan.stream if isinstance(stage, StreamConvPlan))
    assert stage.block_cycles() == (4 * 9 + 1, 4 * 1 + 1)


def test_with_skipping_off_a_streaming_bottleneck_sets_the_interval_exactly():
    rng = np.random.default_rng(5)
    net = make_conv_network(rng, (2, 8, 8), [(4, (3, 3), (1, 1), (1, 1))], 3, 4, weight_bits=5)
    plan = plan_core(net, lanes=[1, 3], chunks=[2], skip_silent=False)
    assert plan.bottleneck == "conv0 stream"
    run = simulate_core(plan, random_codes(net, 5, seed=1))
    gaps = np.diff(run.result_cycles)[1:]
    assert gaps.tolist() == [plan.initiation_interval] * len(gaps)


def test_explicit_lanes_and_chunks_are_checked_in_one_line():
    rng = np.random.default_rng(6)
    net = make_conv_network(rng, (1, 6, 6), [(4, (3, 3), (1, 1), (1, 1))], 3, 4)
    with pytest.raises(SizingError, match="must divide that number, not 3"):
        plan_core(net, lanes=[3, 1])
    with pytest.raises(SizingError, match="a chunk is 1..9 taps"):
        plan_core(net, lanes=[2, 1], chunks=[10])
    with pytest.raises(SizingError, match=r"steps a cycle below 8 \(KxS\), not 9x8"):
        plan_core(net, lanes=[2, 1], chunks=["9x8"])
    with pytest.raises(SizingError, match="its S a power of two, not '9x3'"):
        plan_core(net, lanes=[2, 1], chunks=["9x3"])
    assert plan_core(net, lanes=[2, 1], chunks=["3x4"]).chunk_counts == ("3x4",)
    with pytest.raises(SizingError, match="input lanes must divide 1"):
        plan_core(net, input_lanes=2)


def test_a_max_pool_after_a_dense_layer_behind_streamed_convolutions_is_refused():
    """The dense layers after the stream pool nothing: a pool of a dense layer's codes is refused there too,
    naming the layers, as on the event-driven engines."""
    from dataclasses import replace

    from spikesmith.contract.network import DenseLayer, PoolGeometry, SpikingNetwork

    rng = np.random.default_rng(8)
    conv = make_conv_network(rng, (1, 4, 4), [(2, (3, 3), (1, 1), (1, 1))], 3, 4).layers[0]
    dense = DenseLayer("d0", rng.integers(-9, 10, (32, 32)), rng.integers(-40, 40, 32), rng.integers(1, 200, 32), 5)
    pooled = DenseLayer("d1", rng.integers(-9, 10, (3, 8)), rng.integers(-40, 40, 3), None, 5,
                        pool=PoolGeometry((2, 4, 4), (2, 2), (2, 2)))
    net = replace(make_conv_network(rng, (1, 4, 4), [(2, (3, 3), (1, 1), (1, 1))], 3, 4),
                  layers=(conv, dense, pooled))
    assert isinstance(net, SpikingNetwork)
    with pytest.raises(SizingError, match="layer d1 reads a max pool of layer d0, which runs on a dense engine"):
        plan_core(net)
