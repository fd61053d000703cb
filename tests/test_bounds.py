"""The derived widths hold every value the membranes take, and the bounds are reached."""

import numpy as np
from hypothesis import given, settings

from spikesmith.contract.bounds import layer_bounds, network_bounds
from spikesmith.contract.network import DenseLayer, SpikingNetwork, signed_width, unsigned_width
from spikesmith.sim.reference import run_reference

from conftest import make_network, networks_and_codes


def fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value <= (1 << (bits - 1)) - 1


@settings(max_examples=300, deadline=None)
@given(networks_and_codes())
def test_no_intermediate_value_exceeds_its_declared_width(case):
    net, codes = case
    bounds = network_bounds(net)
    for image in codes:
        ref = run_reference(net, list(image))
        for b, (lo, hi) in zip(bounds, ref.extremes):
            assert b.membrane_lo <= lo and hi <= b.membrane_hi, f"layer {b.name}: [{lo}, {hi}] outside bounds"
            assert fits(lo, b.membrane_width) and fits(hi, b.membrane_width), f"layer {b.name} overflows"
    for layer, b in zip(net.layers, bounds):
        assert fits(int(layer.weight.min()), b.weight_width) and fits(int(layer.weight.max()), b.weight_width)
        assert fits(int(layer.bias.min()), b.bias_width) and fits(int(layer.bias.max()), b.bias_width)
        if layer.fires:
            assert int(layer.threshold.max()) < (1 << b.threshold_width)


def test_accumulation_bounds_are_reached():
    """The adversarial input (full codes where the weight has one sign) drives each neuron's
    membrane to exactly its lower and upper bound at some point of the accumulation."""
    rng = np.random.default_rng(3)
    net = make_network(rng, [12, 5], timesteps=6)
    layer = net.layers[0]
    b = layer_bounds(layer, net.timesteps)
    for j in range(layer.out_size):
        one = DenseLayer("one", layer.weight[j:j + 1], layer.bias[j:j + 1], None, layer.weight_bits)
        single = SpikingNetwork(net.timesteps, net.input, (one,))
        high = [net.max_code if w > 0 else 0 for w in layer.weight[j]]
        low = [net.max_code if w < 0 else 0 for w in layer.weight[j]]
        assert run_reference(single, high).extremes[0][1] == b.neuron_hi[j]
        assert run_reference(single, low).extremes[0][0] == b.neuron_lo[j]


def test_width_helpers():
    assert signed_width(-128, 127) == 8 and signed_width(-129, 0) == 9 and signed_width(0, 128) == 9
    assert signed_width(0, 0) == 1 and signed_width(-1, 0) == 1
    assert unsigned_width(255) == 8 and unsigned_width(256) == 9 and unsigned_width(0) == 1
