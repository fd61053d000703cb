"""The core's max-pooling stage: its visit tables, the plan around it, and bit-exactness in amaranth.sim and
under the compiled Verilator harness on random pooled networks (any kernel, stride, padding, dilation, ceil_mode)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikesmith.contract.network import InputEncoding, PoolGeometry, SpikingNetwork
from spikesmith.contract.plan import PoolPlan
from spikesmith.gen.sizing import SizingError, plan_core
from spikesmith.sim import golden
from spikesmith.sim.harness import build_harness, run_harness
from spikesmith.sim.hdl import simulate_core
from spikesmith.sim.random_networks import make_conv_network, make_pooled_network, random_codes

from conftest import assert_one_line_error, run_cli
from test_maxpool import convert_lenet, pools

POOLED_NETWORKS = 8          # seeds of make_pooled_network under the harness
IMAGES_PER_NETWORK = 200


@settings(max_examples=60, deadline=None)
@given(pools())
def test_visits_are_exactly_the_windows_that_read_each_position(geometry):
    """Per axis: the windows reading a position are first + j * step, and bit j says the position is that
    window's first real tap; checked against the flat window table the golden model pools with."""
    plan = PoolPlan(geometry, 1, 4, False)
    windows = geometry.windows()                       # (out_size, taps): flat input index, in_size = padding
    _, out_h, out_w = geometry.out_shape
    _, height, width = geometry.in_shape
    rows, cols = plan.visits(0), plan.visits(1)
    for y in range(height):
        for x in range(width):
            flat = y * width + x                        # channel 0
            want = {o for o in range(out_h * out_w) if flat in windows[o]}
            first_want = {o for o in want if min(windows[o][windows[o] < geometry.in_size]) == flat}
            (oy0, ny, fy), (ox0, nx, fx) = rows[y], cols[x]
            sy, sx = plan.window_step(0), plan.window_step(1)
            got = {(oy0 + j * sy) * out_w + ox0 + k * sx for j in range(ny) for k in range(nx)}
            first = {(oy0 + j * sy) * out_w + ox0 + k * sx for j in range(ny) for k in range(nx)
                     if fy >> j & 1 and fx >> k & 1}
            assert got == want and first == first_want, (y, x)


def test_the_plan_pools_a_convolution_engines_rows():
    _, net, _ = convert_lenet()
    plan = plan_core(net, lanes=[2, 3, 1], streaming=False)
    conv0, conv1, out = plan.layers
    assert conv0.emits_rows and not conv0.emits_pixels and conv1.emits_rows
    assert conv1.pool.emits_pixels and conv1.pool.lanes == 2, "pooled pixels into a convolution"
    assert not out.pool.emits_pixels and out.pool.lanes == 3 and out.pool.rows == 2 * 3 * 3, "6 channels on 3 lanes: 2 blocks of 3x3 pooled pixels"
    assert conv0.memory_bits["spike history"] == 4 * 8 * 8 * 8, "one T-bit history per neuron (4x8x8, T=8)"
    report = plan.report()
    assert report["layers"][2]["max_pool"]["kernel"] == [3, 3]
    assert report["stage_cycles_worst"][f"{out.name} pool + accumulate"] == out.pool.cycles() + out.accumulate_cycles()


def test_the_plan_refuses_a_pool_of_the_input_image():
    """The input encoder's words are pixels along a row, not channels: the core pools only a convolution."""
    net = make_conv_network(np.random.default_rng(0), (1, 4, 4), [(2, (1, 1), (1, 1), (0, 0))], 2, 3)
    first = replace(net.layers[0], pool=PoolGeometry((1, 8, 8), (2, 2), (2, 2)))
    with pytest.raises(SizingError, match="max pool of the input image"):
        plan_core(SpikingNetwork(3, InputEncoding((1, 8, 8), 1.0), (first, net.layers[1])), streaming=False)


def test_a_pooled_network_in_amaranth_sim():
    """amaranth.sim, random gaps and backpressure: two pools (2x2, then 3x3 stride 2 padding 1 ceil) bit-exact."""
    _, net, calib = convert_lenet()
    images = np.random.default_rng(3).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    expected = golden.run_images(net, images)
    plan = plan_core(net, lanes=[2, 3, 2], streaming=False)
    run = simulate_core(plan, expected.input_codes, seed=2, valid_probability=0.7, ready_probability=0.6, drain=50)
    assert np.array_equal(run.logits, expected.logits) and np.array_equal(run.labels, expected.predictions)


@pytest.mark.parametrize("seed", range(POOLED_NETWORKS))
def test_random_pooled_networks_under_the_harness(seed, harness_cache):
    """One or two convolutions with random max pools (any geometry torch allows), pooled pixels into a
    convolution or pooled addresses into a dense layer: every logit of 200 images, back to back
    (even seeds) or under random gaps and backpressure (odd); the cycle model bounds the steady state."""
    rng = np.random.default_rng(seed)
    net, lanes = make_pooled_network(rng, int(rng.integers(1, 9)))
    lanes[-1] = min(lanes[-1], net.layers[-1].out_size)
    plan = plan_core(net, lanes=lanes, input_lanes=1, streaming=False)
    codes = random_codes(net, IMAGES_PER_NETWORK, seed=seed)
    expected = golden.run(net, codes)
    odd = seed % 2
    run = run_harness(build_harness(plan, harness_cache), plan, codes, expected, seed=seed,
                      valid_probability=0.7 if odd else 1.0, ready_probability=0.6 if odd else 1.0)
    assert run.first_mismatch is None, run.first_mismatch
    assert run.passed and run.extra == [] and np.array_equal(run.logits, expected.logits)
    if not odd:
        cycles = run.result_cycles
        assert (cycles[-1] - cycles[0]) / (len(cycles) - 1) <= plan.initiation_interval
        assert cycles[0] <= plan.latency_bound


@pytest.mark.long
def test_generate_and_simulate_a_lenet_with_max_pools(tmp_path, harness_cache):
    """The CLI: a converted LeNet with two max pools generates (the report names the pools) and its Verilog
    agrees with the golden model on every digits test image it is given."""
    from spikesmith.gen.netfile import save_network

    _, net, _ = convert_lenet()
    path = save_network(net, tmp_path / "lenet.net.npz")
    report = json.loads(run_cli("generate", str(path), "-o", str(tmp_path / "core"), "--json").stdout)
    assert [stage["engine"].split()[-1] for stage in report["stream"]] == ["convolution", "pool"] * 2
    assert (tmp_path / "core" / "spikesmith_core.v").is_file()
    event = json.loads(run_cli("generate", str(path), "-o", str(tmp_path / "event"), "--event-driven", "--json").stdout)
    assert [("max_pool" in layer) for layer in event["layers"]] == [False, True, True]
    proc = run_cli("simulate", str(path), "--data", "digits", "-n", "120", "--build-dir", str(harness_cache),
                   "--json", "-q")
    result = json.loads(proc.stdout)
    assert result["results"] == 120 and result["mismatches"] == 0 and result["agreement"] == 1.0


def test_generate_refuses_a_pool_after_a_dense_layer_in_one_line(tmp_path):
    from test_maxpool import pooled_network

    from spikesmith.gen.netfile import save_network

    path = save_network(pooled_network(np.random.default_rng(0), 4), tmp_path / "pooled.net.npz")
    proc = run_cli("generate", str(path), "-o", str(tmp_path / "core"), check=False)
    assert_one_line_error(proc, "layer l1 reads a max pool of layer l0, which runs on a dense engine")
    assert not (tmp_path / "core").exists()
