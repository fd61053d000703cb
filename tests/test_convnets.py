"""Convolutional networks: Conv2d, BatchNorm2d and AvgPool2d through conversion: exact float lowering,
convolution layers that keep their kernel (pools composed into the next convolution), the dense mode."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from spikesmith.errors import UnsupportedModelError
from spikesmith.gen.importer import import_module
from spikesmith.gen.passes import lower

# (channels in, image size, [(out channels, kernel, stride, padding, pool after)], classes)
RANDOM_CONVNETS = [
    (1, 8, [(4, 3, 1, 1, 2), (6, 3, 1, 1, 2)], 10),
    (1, 8, [(3, 3, 2, 1, 0), (5, (3, 2), (1, 2), 0, 0)], 4),
    (2, 7, [(4, 2, 1, 0, 3), (3, 1, 1, 0, 0)], 3),
    (1, 9, [(5, 5, 2, 2, 0), (4, 3, 1, 1, 2)], 6),
    (3, 6, [(2, 3, 1, 0, 0)], 5),
]


def make_convnet(channels, size, convs, classes, seed=0, batchnorm=True):
    torch.manual_seed(seed)
    layers, shape = [], (channels, size, size)
    for out, kernel, stride, padding, pool in convs:
        conv = nn.Conv2d(shape[0], out, kernel, stride=stride, padding=padding)
        layers += [conv] + ([nn.BatchNorm2d(out)] if batchnorm else []) + [nn.ReLU()]
        if pool:
            layers.append(nn.AvgPool2d(pool))
        with torch.no_grad():
            shape = tuple(nn.Sequential(*layers)(torch.zeros(1, channels, size, size)).shape[1:])
    layers += [nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, (channels, size, size)


@pytest.mark.parametrize("case", range(len(RANDOM_CONVNETS)))
def test_lowered_convnet_computes_what_torch_computes(case):
    model, shape = make_convnet(*RANDOM_CONVNETS[case], seed=case)
    network = lower(import_module(model, shape))
    x = torch.rand(8, *shape)
    with torch.no_grad():
        np.testing.assert_allclose(network.forward(x.numpy())[-1], model(x).numpy(), rtol=1e-5, atol=1e-5)
    convs = len(RANDOM_CONVNETS[case][2])
    assert len(network.layers) == convs + 1, "one dense layer per convolution (pooling merged), plus the Linear"
    assert all(layer.relu for layer in network.layers[:-1]) and not network.layers[-1].relu


def test_pool_merges_into_the_next_layer_and_the_first_conv_sees_the_flat_image():
    model, shape = make_convnet(*RANDOM_CONVNETS[0])
    network = lower(import_module(model, shape))
    assert [layer.matrix.shape for layer in network.layers] == [(4 * 8 * 8, 64), (6 * 4 * 4, 4 * 8 * 8),
                                                                (10, 6 * 4 * 4)]
    assert "AvgPool2d" in network.layers[1].source


@pytest.mark.parametrize("layer, message", [
    (nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2)), "'2.1' \\(MaxPool2d\\) follows another max pool"),
    (nn.Conv2d(4, 4, 3, groups=2, padding=1), "groups=2.*spikesmith converts groups=1"),
    (nn.Conv2d(4, 4, 3, dilation=2, padding=2), "dilation=\\[2, 2\\]"),
    (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
])
def test_unsupported_conv_features_are_refused_with_the_layer(layer, message):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), layer, nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(UnsupportedModelError, match=message):
        lower(import_module(model.eval(), (1, 8, 8)))


def test_linear_on_a_feature_map_without_flatten_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedModelError, match="last axis of a 2x8x8 tensor; flatten it first"):
        lower(import_module(model, (1, 8, 8)))


def test_mnist_sized_cnn_converts_and_runs_in_the_golden_model(tmp_path):
    """User data path: a 28x28 CNN from a .pt2 file and IDX images, through convert and eval."""
    from datafiles import write_mnist

    from conftest import run_cli
    from spikesmith.gen.importer import export_module
    from spikesmith.gen.netfile import load_network
    from spikesmith.sim import golden

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 7 * 7, 10)).eval()
    model = tmp_path / "mnist-cnn.pt2"
    torch.export.save(export_module(cnn, (1, 28, 28)), model)
    rng = np.random.default_rng(0)
    images = (rng.uniform(0, 1, (60, 28, 28)) * (rng.uniform(0, 1, (60, 28, 28)) > 0.7) * 255).astype(np.uint8)
    data = tmp_path / "mnist"
    write_mnist(data, images, rng.integers(0, 10, 60))
    net_path = tmp_path / "mnist-cnn.net.npz"
    run_cli("convert", str(model), "--calib", str(data), "--calib-range", "0:40", "-o", str(net_path), "-q")
    net = load_network(net_path)
    assert [layer.out_size for layer in net.layers] == [4 * 28 * 28, 8 * 14 * 14, 10]
    report = json.loads(run_cli("eval", str(net_path), "--data", str(data), "--range", "40:60", "--json", "-q").stdout)
    assert report["images"] == 20
    # The golden model follows the float network: its logits rank the classes as torch does on most images.
    x = torch.from_numpy(images[40:].astype(np.float32)[:, None] / 255)
    with torch.no_grad():
        torch_labels = cnn(x).argmax(1).numpy()
    codes = net.input.encode(x.numpy(), net.timesteps)
    assert np.mean(golden.run(net, codes).predictions == torch_labels) >= 0.7


def convert_convnet(case, timesteps=6, convolutions="kernel"):
    from spikesmith.gen.convert import ConversionOptions, convert_module

    model, shape = make_convnet(*RANDOM_CONVNETS[case], seed=10 + case)
    rng = np.random.default_rng(case)
    calib = rng.uniform(0, 1, (40, *shape)).astype(np.float32)
    return convert_module(model, calib, ConversionOptions(timesteps=timesteps, convolutions=convolutions)), rng


@pytest.mark.parametrize("case", range(len(RANDOM_CONVNETS)))
def test_convolutions_keep_their_kernel_and_compute_the_dense_map(case, tmp_path):
    """Every conv (a pool composed into the conv after it) stays a convolution whose dense matrix
    is the layer's weight; the network file stores the kernel and reads back the same integers."""
    from spikesmith.gen.netfile import fingerprint, load_network, network_to_bytes, save_network

    net, _ = convert_convnet(case)
    convs = RANDOM_CONVNETS[case][2]
    assert [layer.kind for layer in net.layers] == ["conv"] * len(convs) + ["dense"]
    for layer in net.layers[:-1]:
        g = layer.conv.geometry
        assert layer.weight is None, "a convolution is its kernel: no dense matrix is kept"
        assert np.array_equal(layer.matrix, g.dense(layer.conv.kernel))
        assert (layer.bias.reshape(g.out_channels, -1) == layer.bias[::g.pixels, None]).all(), "one bias per channel"
        assert (layer.threshold.reshape(g.out_channels, -1) == layer.threshold[::g.pixels, None]).all()
    dense, _ = convert_convnet(case, convolutions="dense")
    assert [layer.kind for layer in dense.layers] == ["dense"] * len(dense.layers)
    assert len(network_to_bytes(net)) < len(network_to_bytes(dense))
    loaded = load_network(save_network(net, tmp_path / "conv.net.npz"))
    assert fingerprint(loaded) == fingerprint(net) != fingerprint(dense)
    for a, b in zip(loaded.layers, net.layers):
        assert a.kind == b.kind and np.array_equal(a.matrix, b.matrix) and np.array_equal(a.bias, b.bias)


def test_pool_then_conv_becomes_one_strided_convolution():
    net, _ = convert_convnet(0)
    g = net.layers[1].conv.geometry
    # pool 2 then conv 3x3 padding 1, on the pool's input: kernel 2 + (3-1)*2 = 6, stride 2, padding 0 + 1*2.
    assert (g.in_shape, g.out_channels, g.kernel, g.stride, g.padding) == ((4, 8, 8), 6, (6, 6), (2, 2), (2, 2))


def test_compositions_that_are_not_convolutions_stay_dense():
    """A conv with a bias and no ReLU before a zero-padded conv, and a pool whose floor mode drops
    a row the composed window would read: the products are exact dense layers, not convolutions."""
    torch.manual_seed(3)
    biased = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    floor = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).eval()
    for model, shape, kinds in ((biased, (1, 6, 6), [False, False]), (floor, (1, 8, 8), [True, False, False])):
        network = lower(import_module(model, shape))
        assert [layer.geometry is not None for layer in network.layers] == kinds
        x = torch.rand(5, *shape)
        with torch.no_grad():
            np.testing.assert_allclose(network.forward(x.numpy())[-1], model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_damaged_convolution_header_is_refused(tmp_path):
    import json as _json

    from spikesmith.errors import NetFileError
    from spikesmith.gen.netfile import load_network, save_network

    net, _ = convert_convnet(1)
    path = save_network(net, tmp_path / "c.net.npz")
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = _json.loads(arrays["meta.json"].tobytes())
    meta["layers"][0]["convolution"]["kernel"] = [9, 9]
    arrays["meta.json"] = np.frombuffer(_json.dumps(meta).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.net.npz"
    np.savez(bad, **arrays)
    with pytest.raises(NetFileError, match="not a valid spikesmith network"):
        load_network(bad)


@pytest.mark.parametrize("case", [1, 2, 4])
def test_converted_convnets_bit_exact_in_amaranth_sim(case):
    """Random conv networks (kernels, strides, paddings, channels) converted and run as hardware."""
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.hdl import simulate_core

    net, rng = convert_convnet(case)
    codes = rng.integers(0, net.max_code + 1, size=(4, net.input.size))
    expected = golden.run(net, codes)
    run = simulate_core(plan_core(net, budget=48), codes, seed=case, valid_probability=0.7, ready_probability=0.6)
    assert run.logits.tolist() == expected.logits.tolist() and run.labels.tolist() == expected.predictions.tolist()


def test_dense_mode_convnet_bit_exact_in_amaranth_sim():
    """``--convolutions dense``: the convolutions as dense layers on the dense engine."""
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.hdl import simulate_core

    net, rng = convert_convnet(2, convolutions="dense")
    codes = rng.integers(0, net.max_code + 1, size=(3, net.input.size))
    run = simulate_core(plan_core(net, budget=48), codes, valid_probability=0.7, ready_probability=0.6)
    assert run.logits.tolist() == golden.run(net, codes).logits.tolist()


@pytest.mark.parametrize("case", [2])
def test_converted_convnets_bit_exact_under_verilator(case, tmp_path_factory):
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.harness import build_harness, run_harness

    net, rng = convert_convnet(case)
    plan = plan_core(net, budget=48)
    codes = rng.integers(0, net.max_code + 1, size=(40, net.input.size))
    codes[::7] = 0
    expected = golden.run(net, codes)
    run = run_harness(build_harness(plan, tmp_path_factory.mktemp("verilator-conv")), plan, codes, expected,
                      seed=case, valid_probability=0.6, ready_probability=0.5)
    assert run.first_mismatch is None and run.passed and run.mismatches == 0
    assert run.images.tolist() == list(range(len(codes)))


@pytest.mark.long
def test_a_convolution_after_a_dense_layer_runs_as_a_dense_layer(tmp_path):
    """The repro of a bug: a pool and the convolution after it that cannot be composed stay a
    dense layer; the convolution after that then reads neuron events, not pixels, and must be
    planned on a dense engine. ``generate`` used to stop with an internal error."""
    from spikesmith.gen.convert import ConversionOptions, convert_module
    from spikesmith.gen.netfile import save_network
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.harness import build_harness, run_harness

    from conftest import run_cli

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    rng = np.random.default_rng(5)
    net = convert_module(model, rng.uniform(0, 1, (40, 1, 5, 5)).astype(np.float32), ConversionOptions(timesteps=6))
    assert [layer.kind for layer in net.layers] == ["conv", "dense", "conv", "dense"]
    plan = plan_core(net)
    assert len(plan.stream) == 1 and [layer.conv is not None for layer in plan.layers] == [False, False, False]
    event = plan_core(net, streaming=False)
    assert [layer.conv is not None for layer in event.layers] == [True, False, False, False]
    codes = rng.integers(0, net.max_code + 1, size=(60, net.input.size))
    expected = golden.run(net, codes)
    run = run_harness(build_harness(plan, tmp_path / "cache"), plan, codes, expected, seed=1,
                      valid_probability=0.7, ready_probability=0.6)
    assert run.passed and run.images.tolist() == list(range(len(codes))), run.first_mismatch
    proc = run_cli("generate", str(save_network(net, tmp_path / "net.npz")), "-o", str(tmp_path / "core"), "--json")
    assert (tmp_path / "core" / "spikesmith_core.v").is_file()
    report = json.loads(proc.stdout)
    assert [stage["engine"] for stage in report["stream"]] == ["streaming convolution"]
    assert [layer["engine"] for layer in report["layers"]] == ["dense"] * 3
