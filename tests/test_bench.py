"""The benchmark baseline (bench/baselines.py) computes what it claims: rate-coded IF, soft reset."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from baselines import normalised_layers, rate_if_logits  # noqa: E402

from spikesmith.gen.ir import FloatLayer, FloatNetwork  # noqa: E402


def small_network(rng):
    return FloatNetwork((6,), (FloatLayer("h", rng.normal(0, 0.6, (9, 6)), rng.normal(0, 0.1, 9), True),
                               FloatLayer("o", rng.normal(0, 0.6, (4, 9)), rng.normal(0, 0.1, 4), False)))


def test_hidden_rates_approach_the_clipped_activations():
    """At large T a hidden IF neuron's rate is its activation / lambda, clipped to 1: the logits follow."""
    rng = np.random.default_rng(0)
    net = small_network(rng)
    x = rng.uniform(0, 1, (50, 6))
    layers = normalised_layers(net, x, percentile=100)
    (w, b, _), (w_out, b_out, _) = layers
    rate = np.clip(x @ w.T + b, 0, 1)                  # the ANN's hidden activation / lambda
    expected = rate @ w_out.T + b_out
    for T, tolerance in ((64, 0.2), (1024, 0.015)):
        got = rate_if_logits(layers, x, T) / T
        assert np.abs(got - expected).max() < tolerance * np.abs(expected).max(), T


def test_soft_reset_keeps_the_remainder():
    """One neuron, constant drive 0.375 a step, threshold 1: spikes at steps 3, 6 and 8 (soft reset)."""
    layers = [(np.array([[0.375]]), np.zeros(1), True), (np.array([[1.0]]), np.zeros(1), False)]
    assert rate_if_logits(layers, np.ones((1, 1)), 8)[0, 0] == 3          # 8 * 0.375, no remainder lost
    assert rate_if_logits(layers, np.ones((1, 1)), 2)[0, 0] == 0
