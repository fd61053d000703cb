"""Calibration and quantisation: thresholds, integer scales, and the float/integer agreement."""

import numpy as np
import pytest

from spikesmith.errors import ConversionError
from spikesmith.gen.calibrate import calibrate, choose_threshold, conversion_error, decode
from spikesmith.gen.convert import ConversionOptions, convert_float_network
from spikesmith.gen.ir import FloatLayer, FloatNetwork
from spikesmith.contract.network import encode_codes
from spikesmith.gen.quantise import MIN_CHANNEL_SCALE_RATIO, quantise
from spikesmith.sim import golden
from spikesmith.sim.floatsim import snn_float_logits


def _random_float_network(rng, sizes):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(FloatLayer(f"fc{i}", rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)),
                                 rng.normal(0, 0.1, n_out), relu=i < len(sizes) - 2))
    return FloatNetwork((sizes[0],), tuple(layers))


def test_encode_codes_rounds_to_nearest_and_clips():
    codes = encode_codes(np.array([-1.0, 0.0, 0.49 / 16, 0.51 / 16, 0.5, 15.4 / 16, 1.0, 7.0]), 1.0, 4)
    assert codes.tolist() == [0, 0, 0, 1, 8, 15, 15, 15]


@pytest.mark.parametrize("timesteps", [2, 4, 8])
def test_search_is_no_worse_than_max_or_percentile(timesteps):
    a = np.random.default_rng(0).exponential(1.0, 50_000)
    searched = choose_threshold(a, timesteps, "search")
    for other in (choose_threshold(a, timesteps, "max"), choose_threshold(a, timesteps, "percentile", 99.9)):
        assert conversion_error(a, searched, timesteps) <= conversion_error(a, other, timesteps)
    assert choose_threshold(a, timesteps, "max") == a.max()


def test_threshold_of_a_silent_layer_is_positive():
    assert choose_threshold(np.zeros(100), 8) > 0


def test_decode_error_is_at_most_half_a_step_inside_the_range():
    lam, T = 2.0, 6
    a = np.linspace(0, lam * (1 - 2 ** -T), 1000)
    assert np.abs(decode(a, lam, T) - a).max() <= lam / 2 ** (T + 1) + 1e-12


def test_empty_or_negative_calibration_sets_are_refused():
    net = _random_float_network(np.random.default_rng(0), [4, 3, 2])
    with pytest.raises(ConversionError, match="calibration set is empty"):
        calibrate(net, np.zeros((0, 4)), 8)
    with pytest.raises(ConversionError, match="negative values"):
        calibrate(net, -np.ones((3, 4)), 8)


@pytest.mark.parametrize("scale", ["channel", "layer"])
def test_integer_network_tracks_the_float_snn(scale):
    """With 12-bit weights the golden logits, scaled back to ANN units, sit close to the float SNN."""
    rng = np.random.default_rng(1)
    fnet = _random_float_network(rng, [20, 16, 12, 5])
    x = rng.random((300, 20))
    net = convert_float_network(fnet, x, ConversionOptions(timesteps=10, weight_bits=12, weight_scale=scale))
    float_logits = snn_float_logits(net, x)
    result = golden.run(net, net.input.encode(x, net.timesteps))
    out = net.layers[-1]
    unit = out.shadow.weight.max() / out.weight.max()  # output layer: one scale
    lam_in = net.layers[-2].shadow.activation_threshold
    int_logits = result.logits * unit * lam_in / 2 ** net.timesteps
    assert np.mean(np.argmax(int_logits, 1) == np.argmax(float_logits, 1)) > 0.95
    assert np.abs(int_logits - float_logits).mean() < 0.05 * np.abs(float_logits).mean()


def test_thresholds_and_scales():
    rng = np.random.default_rng(2)
    fnet = _random_float_network(rng, [8, 6, 3])
    w = fnet.layers[0].weight.copy()
    w[0] *= 1e-18  # a dead neuron must not get an absurd threshold
    fnet = FloatNetwork(fnet.input_shape, (FloatLayer("fc0", w, fnet.layers[0].bias, True), fnet.layers[1]))
    cal = calibrate(fnet, rng.random((50, 8)), 8)
    net = quantise(fnet, cal, 8, weight_bits=8, weight_scale="channel")
    hidden, out = net.layers
    assert hidden.threshold.min() >= 1
    assert hidden.threshold.max() <= hidden.threshold.min() / MIN_CHANNEL_SCALE_RATIO * (1 + 1e-4)
    assert np.all(hidden.weight[0] == 0)
    assert np.abs(hidden.weight).max() == 127 and np.abs(out.weight).max() == 127
    assert not out.fires and out.threshold is None


def test_bad_options_are_refused():
    fnet = _random_float_network(np.random.default_rng(0), [4, 3, 2])
    cal = calibrate(fnet, np.random.default_rng(0).random((5, 4)), 4)
    with pytest.raises(ConversionError, match="timesteps"):
        quantise(fnet, cal, 0)
    with pytest.raises(ConversionError, match="weight bits"):
        quantise(fnet, cal, 4, weight_bits=1)
    with pytest.raises(ConversionError, match="weight scale"):
        quantise(fnet, cal, 4, weight_scale="tensor")
