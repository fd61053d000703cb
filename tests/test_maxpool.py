"""Max pooling on spike codes: the window's largest code, computed on MSB-first spike trains by a race."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spikesmith.contract.network import DenseLayer, InputEncoding, PoolGeometry, SpikingNetwork, max_pool
from spikesmith.sim import golden
from spikesmith.sim.golden import spike_trains
from spikesmith.sim.reference import max_pool_spikes, run_reference


@st.composite
def pools(draw):
    """Any geometry torch's MaxPool2d accepts: kernel, stride, padding <= kernel/2, dilation, ceil_mode."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    shape = (draw(st.integers(1, 3)), draw(st.integers(span[0], 9)), draw(st.integers(span[1], 9)))
    return PoolGeometry(shape, kernel, (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                        (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2))), dilation,
                        draw(st.booleans()))


@settings(max_examples=80, deadline=None)
@given(pools(), st.integers(0, 2**32 - 1))
def test_max_pool_is_torchs_on_the_codes(geometry, seed):
    """Output size and values equal torch's max_pool2d (its -inf padding never wins over codes >= 0)."""
    codes = np.random.default_rng(seed).integers(0, 256, size=(3, geometry.in_size))
    want = torch.nn.functional.max_pool2d(torch.from_numpy(codes.reshape(3, *geometry.in_shape)).double(),
                                          geometry.kernel, geometry.stride, geometry.padding, geometry.dilation,
                                          ceil_mode=geometry.ceil_mode)
    assert tuple(want.shape[1:]) == geometry.out_shape
    assert np.array_equal(max_pool(codes, geometry), want.reshape(3, -1).numpy().astype(np.int64))


@settings(max_examples=80, deadline=None)
@given(pools(), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_the_spike_race_gives_the_spike_train_of_the_largest_code(geometry, timesteps, seed):
    """Step by step: a candidate silent while another in the race spikes drops out; the output spikes
    when any candidate still in the race spikes. That is the MSB-first code of the maximum."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << timesteps, size=(1, geometry.in_size))
    codes[:, rng.random(geometry.in_size) < 0.3] = 0
    spikes = spike_trains(codes, timesteps)[0].astype(int).tolist()
    raced = np.array(max_pool_spikes(spikes, geometry))
    assert np.array_equal(raced, spike_trains(max_pool(codes, geometry), timesteps)[0])


def pooled_network(rng, timesteps: int) -> SpikingNetwork:
    """Dense 6 -> 2x4x4 (firing), then a layer that reads its 2x2 max pool (8 codes) -> 3 logits."""
    geometry = PoolGeometry((2, 4, 4), (2, 2), (2, 2))
    first = DenseLayer("l0", rng.integers(-9, 10, (32, 6)), rng.integers(-40, 40, 32), rng.integers(1, 200, 32), 5)
    second = DenseLayer("l1", rng.integers(-9, 10, (3, 8)), rng.integers(-40, 40, 3), None, 5, pool=geometry)
    return SpikingNetwork(timesteps, InputEncoding((6,), 1.0), (first, second))


@pytest.mark.parametrize("seed", range(4))
def test_golden_equals_the_step_by_step_reference_with_a_max_pool(seed):
    rng = np.random.default_rng(seed)
    net = pooled_network(rng, timesteps=4)
    codes = rng.integers(0, 16, size=(12, 6))
    result = golden.run(net, codes)
    for n in range(len(codes)):
        reference = run_reference(net, codes[n].tolist())
        assert reference.logits == result.logits[n].tolist()


def test_a_network_file_keeps_the_max_pool(tmp_path):
    from spikesmith.gen.netfile import fingerprint, load_network, save_network

    net = pooled_network(np.random.default_rng(0), timesteps=5)
    loaded = load_network(save_network(net, tmp_path / "pooled.net.npz"))
    assert loaded.layers[1].pool == net.layers[1].pool and fingerprint(loaded) == fingerprint(net)
    codes = np.random.default_rng(1).integers(0, 32, size=(5, 6))
    assert np.array_equal(golden.run(loaded, codes).logits, golden.run(net, codes).logits)
    unpooled = SpikingNetwork(net.timesteps, net.input, (net.layers[0], DenseLayer(
        "l1", net.layers[1].weight, net.layers[1].bias, None, 5)))
    assert fingerprint(unpooled) != fingerprint(net), "the pool is part of what the hardware depends on"


# ------------------------------------------------------------------ conversion

def convert_lenet(seed: int = 0, timesteps: int = 8, pool_before_relu: bool = False):
    """A LeNet-style CNN on 1x8x8: conv, ReLU, max pool 2, conv, ReLU, max pool 2 (ceil), Linear."""
    from torch import nn

    from spikesmith.gen.convert import ConversionOptions, convert_module

    torch.manual_seed(seed)
    first = [nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()] if pool_before_relu else [
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*first, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                          nn.Flatten(), nn.Linear(54, 10))
    calib = np.random.default_rng(seed).uniform(0, 1, (60, 1, 8, 8)).astype(np.float32)
    return model.eval(), convert_module(model, calib, ConversionOptions(timesteps=timesteps)), calib


@pytest.mark.parametrize("pool_before_relu", [False, True])
def test_a_lenet_with_max_pooling_converts_with_pools_on_the_next_layers(pool_before_relu):
    model, net, calib = convert_lenet(pool_before_relu=pool_before_relu)
    assert [layer.pool is not None for layer in net.layers] == [False, True, True]
    assert net.layers[1].pool.in_shape == (4, 8, 8) and net.layers[2].pool.out_shape == (6, 3, 3)
    from spikesmith.sim.floatsim import ann_logits

    with torch.no_grad():
        want = model(torch.from_numpy(calib[:10])).numpy()
    assert np.allclose(ann_logits(net, calib[:10]), want, atol=1e-4), "the float shadow computes the ANN"


def test_the_converted_lenet_agrees_with_its_ann_and_the_reference():
    """At T=8 the SNN's classes mostly match the ANN's; the golden model equals the step-by-step reference."""
    model, net, calib = convert_lenet(timesteps=8)
    images = np.random.default_rng(9).uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    result = golden.run_images(net, images)
    with torch.no_grad():
        ann = model(torch.from_numpy(images)).numpy().argmax(1)
    assert np.mean(result.predictions == ann) >= 0.8
    for n in range(3):
        assert run_reference(net, result.input_codes[n].tolist()).logits == result.logits[n].tolist()


def test_eval_runs_a_max_pool_network_file(tmp_path):
    from spikesmith.gen.netfile import save_network

    from conftest import run_cli

    _, net, _ = convert_lenet()
    path = save_network(net, tmp_path / "lenet.net.npz")
    report = json.loads(run_cli("eval", str(path), "--data", "digits", "-n", "20", "--json").stdout)
    assert report["images"] == 20


@settings(max_examples=30, deadline=None)
@given(pools(), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_random_pooled_networks_golden_equals_the_reference(geometry, timesteps, classes, seed):
    """Random producer (its outputs are the pool's C x H x W), any pool geometry, random consumer:
    the golden model's logits equal the step-by-step reference's (which pools by the spike race)."""
    rng = np.random.default_rng(seed)
    inputs, qmax = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    scale = qmax * inputs * ((1 << timesteps) - 1)
    first = DenseLayer("l0", rng.integers(-qmax, qmax + 1, (geometry.in_size, inputs)),
                       rng.integers(-scale // 4 - 1, scale // 4 + 1, geometry.in_size),
                       rng.integers(1, max(2, scale // 2), geometry.in_size), 6)
    second = DenseLayer("l1", rng.integers(-qmax, qmax + 1, (classes, geometry.out_size)),
                        rng.integers(-50, 50, classes), None, 6, pool=geometry)
    net = SpikingNetwork(timesteps, InputEncoding((inputs,), 1.0), (first, second))
    codes = rng.integers(0, 1 << timesteps, size=(3, inputs))
    result = golden.run(net, codes)
    for n in range(len(codes)):
        assert run_reference(net, codes[n].tolist()).logits == result.logits[n].tolist()
