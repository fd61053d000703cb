"""The whole core in amaranth.sim: bit-exact to the golden model, under backpressure, on time."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikesmith.datasets import digits
from spikesmith.gen.netfile import load_network
from spikesmith.gen.sizing import plan_core
from spikesmith.sim import golden
from spikesmith.sim.hdl import simulate_core

from conftest import RANDOM_NETWORKS, make_network, networks_and_codes


def assert_bit_exact(run, expected, images):
    assert len(run.labels) == images, "one result per image"
    assert run.extra_results == [], "results after the last image (a duplicate)"
    for n in range(images):
        assert run.logits[n].tolist() == expected.logits[n].tolist(), f"image {n}: logits differ"
        assert run.labels[n] == expected.predictions[n], f"image {n}: label differs"


@pytest.mark.parametrize("case", range(len(RANDOM_NETWORKS)))
@pytest.mark.parametrize("skip_silent", [True, False])
def test_random_networks_bit_exact_under_backpressure(case, skip_silent):
    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[case]
    rng = np.random.default_rng(100 + case)
    net = make_network(rng, sizes, T, bits, negative, scale)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=skip_silent)
    codes = rng.integers(0, 1 << T, size=(12, sizes[0]))
    codes[3] = 0
    codes[4] = (1 << T) - 1
    codes[7] = codes[6]                                  # back-to-back identical images
    expected = golden.run(net, codes)
    run = simulate_core(plan, codes, seed=case, valid_probability=0.6, ready_probability=0.3,
                        drain=plan.latency_bound)
    assert_bit_exact(run, expected, len(codes))


@pytest.mark.parametrize("case", [0, 1, 4])
def test_steady_state_interval_equals_the_report(case):
    """Skipping off: every image costs the same; results arrive exactly every II cycles."""
    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[case]
    rng = np.random.default_rng(200 + case)
    net = make_network(rng, sizes, T, bits, negative, scale)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=False)
    codes = rng.integers(0, 1 << T, size=(10, sizes[0]))
    run = simulate_core(plan, codes)
    gaps = np.diff(run.result_cycles)[3:]                # past the pipeline fill
    assert gaps.tolist() == [plan.initiation_interval] * len(gaps)
    assert run.result_cycles[0] <= plan.latency_bound, "first result later than the latency bound"


def test_skipping_is_never_slower_than_the_worst_case():
    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[5]
    rng = np.random.default_rng(7)
    net = make_network(rng, sizes, T, bits, negative, scale)
    codes = rng.integers(0, 1 << T, size=(10, sizes[0]))
    sparse = simulate_core(plan_core(net, lanes=lanes, input_lanes=input_lanes), codes)
    dense = simulate_core(plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=False), codes)
    assert np.array_equal(sparse.logits, dense.logits)
    assert sparse.cycles < dense.cycles
    assert np.diff(sparse.result_cycles).max() <= plan_core(net, lanes=lanes).initiation_interval


@pytest.mark.long
def test_digits_network_bit_exact_on_10_test_images(digits_demo):
    """The demo's converted MLP, 10 digits test images, random backpressure on both streams.

    (The whole split runs through the emitted Verilog in tests/test_harness.py; amaranth.sim is
    ~1 image/s.)
    """
    net = load_network(digits_demo["net_path"])
    plan = plan_core(net)
    images = digits("test").images[:10]
    expected = golden.run_images(net, images)
    codes = net.input.encode(images, net.timesteps)
    run = simulate_core(plan, codes, seed=3, valid_probability=0.7, ready_probability=0.5, drain=200)
    assert_bit_exact(run, expected, len(images))


@settings(max_examples=25, deadline=None)
@given(networks_and_codes(max_layers=3, max_width=7, max_images=4), st.data())
def test_any_small_network_bit_exact(case, draw):
    """Hypothesis: random depth, widths, T, weight bits, lanes, input lanes and skipping."""
    net, codes = case
    lanes = [draw.draw(st.integers(1, layer.out_size)) for layer in net.layers]
    plan = plan_core(net, lanes=lanes, input_lanes=draw.draw(st.integers(1, net.input.size)),
                     skip_silent=draw.draw(st.booleans()))
    run = simulate_core(plan, codes, seed=draw.draw(st.integers(0, 99)), valid_probability=0.5,
                        ready_probability=0.5, drain=20)
    assert_bit_exact(run, golden.run(net, codes), len(codes))


@pytest.mark.parametrize("case", [0, 2, 5])
def test_run_time_weights_loaded_then_bit_exact(case):
    """Weights in RAM (the iCE40UP5K's SPRAM): written row by row through ``weights_load`` first."""
    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[case]
    rng = np.random.default_rng(300 + case)
    net = make_network(rng, sizes, T, bits, negative, scale)
    loaded = range(len(net.layers)) if case == 0 else [0, len(net.layers) - 1]
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, loaded_weights=loaded)
    assert [layer.weights_loaded for layer in plan.layers] == [i in loaded for i in range(len(net.layers))]
    codes = rng.integers(0, 1 << T, size=(6, sizes[0]))
    run = simulate_core(plan, codes, seed=case, valid_probability=0.7, ready_probability=0.5)
    assert_bit_exact(run, golden.run(net, codes), len(codes))


def test_unloaded_run_time_weights_compute_with_zeros():
    """The check above can fail: without the load the same core's logits are the biases' alone."""
    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[0]
    net = make_network(np.random.default_rng(300), sizes, T, bits, negative, scale)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, loaded_weights=[0])
    codes = np.random.default_rng(1).integers(1, 1 << T, size=(2, sizes[0]))
    unloaded = dataclasses.replace(plan, layers=(dataclasses.replace(plan.layers[0], weight_rows=(0,)),
                                                 *plan.layers[1:]))
    assert simulate_core(unloaded, codes).logits.tolist() != golden.run(net, codes).logits.tolist()


@pytest.mark.long
def test_digits_cnn_bit_exact_on_two_images(digits_demo):
    """The demo's CNN on its two convolution engines and the dense output layer, in amaranth.sim."""
    net = load_network(digits_demo["cnn_net_path"])
    assert [layer.kind for layer in net.layers] == ["conv", "conv", "dense"]
    images = digits("test").images[:2]
    expected = golden.run_images(net, images)
    run = simulate_core(plan_core(net), net.input.encode(images, net.timesteps))
    assert_bit_exact(run, expected, 2)
