"""The vectorised golden model equals the step-by-step scalar model of docs/semantics.md."""

import numpy as np
import pytest
from hypothesis import given, settings

from spikesmith.contract.network import DenseLayer
from spikesmith.sim import golden
from spikesmith.sim.reference import run_reference

from conftest import make_network, networks_and_codes


@settings(max_examples=300, deadline=None)
@given(networks_and_codes())
def test_golden_equals_scalar_reference(case):
    net, codes = case
    result = golden.run(net, codes, trace=True)
    for n, image in enumerate(codes):
        ref = run_reference(net, list(image))
        assert list(result.logits[n]) == ref.logits, "logits differ"
        assert result.predictions[n] == ref.prediction, "prediction differs"
        firing = [t for t in result.trace if t.codes is not None]
        assert len(firing) == len(ref.codes)
        for trace, ref_codes, ref_spikes in zip(firing, ref.codes, ref.spikes):
            assert list(trace.codes[n]) == ref_codes, f"codes of layer {trace.name} differ"
            assert trace.spikes(net.timesteps)[n].astype(int).tolist() == ref_spikes, "spike trains differ"


@pytest.mark.parametrize("timesteps", [1, 3, 8, 16])
def test_fire_closed_form_at_the_edges(timesteps):
    """V below 0, exactly 0, just under, at and far above theta: code = clip(floor(2^T V / theta))."""
    theta = np.array([1, 7, 255, 1000, 12345])
    membranes = np.array([[-5, 0, 1, 999, 12344], [0, 6, 254, 1000, 12345], [3, 7, 256, 10**6, 2**40]])
    codes = golden.fire(membranes, theta, timesteps)
    clamped = np.clip(membranes, 0, theta)
    expected = np.minimum((clamped * (1 << timesteps)) // theta, (1 << timesteps) - 1)
    assert np.array_equal(codes, expected)
    assert codes[2, 2:].tolist() == [(1 << timesteps) - 1] * 3, "saturated neurons must emit all ones"
    assert codes[0, 0] == 0, "negative membranes emit no spike"


def test_spike_train_is_msb_first_binary_code():
    codes = np.array([[0b1011, 0, 15]])
    spikes = golden.spike_trains(codes, 4)
    assert spikes[0, :, 0].tolist() == [True, False, True, True]
    assert not spikes[0, :, 1].any() and spikes[0, :, 2].all()


def test_ties_go_to_the_lowest_class():
    layer = DenseLayer("out", np.zeros((3, 2), dtype=np.int64), np.array([5, 9, 9]), None, 8)
    net = make_network(np.random.default_rng(0), [2, 3], 4)
    net = type(net)(net.timesteps, net.input, (layer,))
    result = golden.run(net, np.array([[1, 2]]))
    assert result.predictions[0] == 1
    assert run_reference(net, [1, 2]).prediction == 1


def test_golden_uses_exact_integer_path_for_wide_sums():
    """Sums beyond 2**53 take the int64 path and still match Python integers."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-32767, 32768, size=(3, 4000)).astype(np.int64)
    layer = DenseLayer("wide", weight, np.zeros(3, dtype=np.int64), None, 16)
    codes = rng.integers(0, 2**16, size=(2, 4000)).astype(np.int64)
    out = golden.accumulate(layer, codes, 16)
    for n in range(2):
        for j in range(3):
            assert out[n, j] == sum(int(w) * int(c) for w, c in zip(weight[j], codes[n]))


def test_golden_rejects_out_of_range_codes():
    net = make_network(np.random.default_rng(0), [3, 2], 4)
    with pytest.raises(ValueError):
        golden.run(net, np.array([[0, 16, 1]]))
    with pytest.raises(ValueError):
        golden.run(net, np.array([[0, 1]]))


def test_input_encoding_clips_pixels_beyond_float64_without_warning():
    """docs/semantics.md: a finite pixel whose x / λ0 · 2^T overflows becomes M (or 0), silently."""
    import warnings

    from spikesmith.contract.network import encode_codes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = encode_codes(np.array([1e308, -1e308, 0.25, 0.999]), 0.5, 8)
    assert codes.tolist() == [255, 0, 128, 255]
