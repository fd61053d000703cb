"""Residual blocks: relay channels carry the shortcut along the main branch, so the converted network is a
chain that computes the model exactly in float, codes the shortcut bit for bit, and runs on the core."""

import numpy as np
import pytest
import torch
from torch import nn

from spikesmith.errors import UnsupportedModelError
from spikesmith.gen.convert import ConversionOptions, convert_module
from spikesmith.gen.importer import import_module
from spikesmith.gen.netfile import load_network, save_network
from spikesmith.gen.passes import lower
from spikesmith.gen.sizing import plan_core
from spikesmith.models import BasicBlock, small_resnet
from spikesmith.sim import golden
from spikesmith.sim.floatsim import ann_logits, snn_float_logits
from spikesmith.sim.harness import build_harness, run_harness
from spikesmith.sim.reference import run_reference


def _randomise_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Batch-norm statistics and affine parameters away from the identity, so that folding them matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.1)
    return model.eval()


class DenseBlock(nn.Module):
    """A Linear residual block ``relu(fc2(relu(fc1(x))) + x)`` between two Linear layers."""

    def __init__(self, layers_in_branch: int = 2):
        super().__init__()
        self.stem, self.head = nn.Linear(6, 8), nn.Linear(8, 3)
        self.branch = nn.ModuleList(nn.Linear(8, 8) for _ in range(layers_in_branch))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h = x
        for index, layer in enumerate(self.branch):
            h = layer(h)
            if index < len(self.branch) - 1:
                h = torch.relu(h)
        return self.head(torch.relu(h + x))


def resnet(seed: int = 0, stem_pool: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_batch_norm(small_resnet(1, (4, 8), 5, stem_pool=stem_pool), seed)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("stem_pool", [False, True])
def test_a_resnet_lowers_to_a_chain_that_computes_the_model(stem_pool):
    """Identity block and a downsampling block (1x1 stride-2 shortcut, batch norm folded): the float chain
    equals torch's output, and the relay channels are the extra channels of each block's first layer."""
    model = resnet(stem_pool=stem_pool)
    network = lower(import_module(model, (1, 8, 8)))
    assert [layer.relays is not None for layer in network.layers] == [False, True, False, True, False, False]
    assert network.layers[1].geometry.out_channels == 4 + 4 and network.layers[3].geometry.out_channels == 8 + 4
    x = images(20)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(network.forward(x)[-1], want, rtol=1e-5, atol=1e-5)


def test_relay_channels_quantise_to_weight_one_threshold_two_to_the_T():
    net = convert_module(resnet(), images(30), ConversionOptions(timesteps=6))
    block = net.layers[1]
    relay = block.conv.kernel[4:]                  # channels 4..7 relay the block input's 4 channels
    assert relay.sum() == 4 and relay[np.arange(4), np.arange(4), 1, 1].tolist() == [1, 1, 1, 1]
    assert (block.threshold.reshape(8, -1)[4:] == 1 << 6).all() and (block.bias.reshape(8, -1)[4:] == 0).all()


def test_a_relay_channel_spikes_its_source_code():
    """Golden trace: every relay neuron's output code is its source neuron's code, image by image."""
    net = convert_module(resnet(), images(30), ConversionOptions(timesteps=5))
    result = golden.run_images(net, images(12, seed=4), trace=True)
    stem, block = result.trace[0].codes, result.trace[1].codes
    pixels = net.layers[1].conv.geometry.pixels
    assert np.array_equal(block[:, 4 * pixels:], stem), "relays of the stem's 4 channels, same 8x8 pixels"
    assert stem.any(), "the stem spikes at all"


def test_the_golden_model_equals_the_reference_and_agrees_with_the_ann():
    net = convert_module(resnet(1), images(40), ConversionOptions(timesteps=8))
    x = images(40, seed=2)
    result = golden.run_images(net, x)
    with torch.no_grad():
        ann = resnet(1)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ann_logits(net, x), ann, rtol=1e-5, atol=1e-5)
    assert np.mean(result.predictions == ann.argmax(1)) >= 0.9
    assert np.mean(snn_float_logits(net, x).argmax(1) == ann.argmax(1)) >= 0.9
    for n in range(4):
        assert run_reference(net, result.input_codes[n].tolist()).logits == result.logits[n].tolist()


@pytest.mark.parametrize("layers_in_branch", [1, 2, 3])
def test_linear_residual_blocks_of_any_depth(layers_in_branch):
    """One layer: the shortcut adds into it (same input); two or three: relays ride one or two layers."""
    torch.manual_seed(layers_in_branch)
    model = DenseBlock(layers_in_branch).eval()
    calib = np.random.default_rng(0).uniform(0, 1, (50, 6)).astype(np.float32)
    net = convert_module(model, calib, ConversionOptions(timesteps=8))
    assert len(net.layers) == 2 + layers_in_branch
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    np.testing.assert_allclose(ann_logits(net, calib), want, rtol=1e-5, atol=1e-5)
    result = golden.run_images(net, calib)
    assert np.mean(result.predictions == want.argmax(1)) >= 0.9
    assert run_reference(net, result.input_codes[0].tolist()).logits == result.logits[0].tolist()


def test_a_network_file_keeps_the_relays_full_scales(tmp_path):
    net = convert_module(resnet(), images(30), ConversionOptions(timesteps=4))
    loaded = load_network(save_network(net, tmp_path / "resnet.net.npz"))
    for before, after in zip(net.layers, loaded.layers):
        assert np.array_equal(np.broadcast_to(before.shadow.activation_threshold, (before.out_size,)),
                              np.broadcast_to(after.shadow.activation_threshold, (after.out_size,)))
    x = images(10, seed=5)
    np.testing.assert_array_equal(snn_float_logits(loaded, x), snn_float_logits(net, x))


@pytest.mark.long
def test_a_resnet_on_the_core_under_the_harness(harness_cache):
    """The converted ResNet (stem max pool, identity and downsampling blocks): every logit of 150 images."""
    net = convert_module(resnet(2, stem_pool=True), images(40), ConversionOptions(timesteps=6))
    plan = plan_core(net)
    x = images(150, seed=6)
    expected = golden.run_images(net, x)
    run = run_harness(build_harness(plan, harness_cache), plan, expected.input_codes, expected, seed=1,
                      valid_probability=0.8, ready_probability=0.7)
    assert run.first_mismatch is None, run.first_mismatch
    assert run.passed and np.array_equal(run.logits, expected.logits)


class _Branchy(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x):
        x = torch.relu(self.a(x))
        if self.variant == "relu in shortcut":
            return self.head(torch.relu(torch.relu(self.b(x)) + torch.relu(self.a(x))).flatten(1))
        return self.head((self.b(x) + x).flatten(1))        # no ReLU after the add


@pytest.mark.parametrize("variant, message", [
    ("relu in shortcut", "shortcut"),
    ("no relu after", "is not followed by a ReLU"),
])
def test_other_branches_are_refused_naming_the_add(variant, message):
    with pytest.raises(UnsupportedModelError, match=message):
        lower(import_module(_Branchy(variant).eval(), (2, 6, 6)))


def test_a_block_whose_kernel_has_no_centre_is_refused():
    """A 2x2 stride-2 last layer beside a 1x1 stride-2 shortcut: same shapes, but no centre tap to ride."""
    class EvenKernelBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.last, self.shortcut = nn.Conv2d(2, 2, 2, stride=2), nn.Conv2d(2, 2, 1, stride=2)
            self.head = nn.Linear(2 * 3 * 3, 2)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            y = self.last(torch.relu(self.conv(x)))
            return self.head(torch.relu(y + self.shortcut(x)).flatten(1))

    with pytest.raises(UnsupportedModelError, match="residual add .* 2x2 kernel .* centre tap"):
        lower(import_module(EvenKernelBlock().eval(), (1, 6, 6)))


def test_a_basic_block_alone_converts():
    torch.manual_seed(3)
    model = _randomise_batch_norm(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), BasicBlock(3, 6, 2),
                                                nn.Flatten(), nn.Linear(6 * 4 * 4, 4)), 3)
    net = convert_module(model, images(30), ConversionOptions(timesteps=8))
    assert [layer.out_size for layer in net.layers] == [3 * 64, (6 + 3) * 16, 6 * 16, 4]


class RandomResidual(nn.Module):
    """A stem, then blocks of random depth (1-3 layers), width and stride, identity or 1x1 shortcuts."""

    def __init__(self, channels: int, blocks: list[tuple[int, int, int]]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.branches, self.shortcuts = nn.ModuleList(), nn.ModuleList()
        for depth, width, stride in blocks:
            layers = []
            for index in range(depth):
                layers += [nn.Conv2d(channels if index == 0 else width, width, 3, stride if index == 0 else 1, 1),
                           nn.BatchNorm2d(width)]
                if index < depth - 1:
                    layers.append(nn.ReLU())
            self.branches.append(nn.Sequential(*layers))
            self.shortcuts.append(nn.Identity() if (stride, width) == (1, channels) else
                                  nn.Sequential(nn.Conv2d(channels, width, 1, stride), nn.BatchNorm2d(width)))
            channels = width
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3))

    def forward(self, x):
        x = self.stem(x)
        for branch, shortcut in zip(self.branches, self.shortcuts):
            x = torch.relu(branch(x) + shortcut(x))
        return self.head(x)


def _relays_repeat_their_sources(net, x):
    """Every relay neuron's output code is its source neuron's, image by image; returns the golden result."""
    result = golden.run_images(net, x, trace=True)
    codes = [result.input_codes] + [trace.codes for trace in result.trace]
    for index, layer in enumerate(net.layers[:-1]):
        relays = layer.threshold == 1 << net.timesteps
        if relays.any():
            sources = np.argmax(layer.matrix[relays] != 0, axis=1)
            assert np.array_equal(codes[index + 1][:, relays], codes[index][:, sources]), layer.name
    return result


@pytest.mark.parametrize("seed", range(6))
def test_random_residual_networks_convert_exactly(seed):
    """Random blocks: the float chain equals torch, every relay neuron repeats its source's code, and the
    golden model equals the step-by-step reference."""
    rng = np.random.default_rng(seed)
    blocks = [(int(rng.integers(1, 4)), int(rng.choice([2, 3, 4])), int(rng.choice([1, 2])))
              for _ in range(int(rng.integers(1, 3)))]
    torch.manual_seed(seed)
    model = _randomise_batch_norm(RandomResidual(int(rng.choice([2, 3])), blocks), seed)
    x = images(30, seed)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(lower(import_module(model, (1, 8, 8))).forward(x)[-1], want, rtol=1e-5, atol=1e-5)
    net = convert_module(model, x, ConversionOptions(timesteps=int(rng.integers(2, 9))))
    result = _relays_repeat_their_sources(net, x[:6])
    for n in range(2):
        assert run_reference(net, result.input_codes[n].tolist()).logits == result.logits[n].tolist()


class NestedBlocks(nn.Module):
    """A residual block inside another: the inner block's first layer is also a layer of the outer branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(2, 2, 3, padding=1) for _ in range(4))
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h1 = torch.relu(self.c1(x))
        inner = torch.relu(self.c3(torch.relu(self.c2(h1))) + h1)
        return self.head(torch.relu(self.c4(inner) + x).flatten(1))


def test_nested_blocks_keep_the_inner_relays():
    """The outer block adds its relays to a layer that already carries the inner block's: both stay relays."""
    torch.manual_seed(5)
    model = NestedBlocks().eval()
    x = images(30, 5)
    net = convert_module(model, x, ConversionOptions(timesteps=6))
    inner_first = next(layer for layer in net.layers if layer.name == "c2")
    assert (inner_first.threshold.reshape(-1, 64)[:, 0] == 1 << 6).sum() == 4, "2 inner + 2 outer relay channels"
    with torch.no_grad():
        np.testing.assert_allclose(ann_logits(net, x), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    _relays_repeat_their_sources(net, x[:8])


def test_relay_rows_do_not_set_the_layers_weight_scale():
    """With one weight scale per layer, the layer's own channels still use the full 8-bit range."""
    net = convert_module(resnet(), images(30), ConversionOptions(timesteps=6, weight_scale="layer"))
    for layer in net.layers[:-1]:
        own = layer.threshold.reshape(layer.conv.geometry.out_channels, -1)[:, 0] != 1 << 6
        assert np.abs(layer.conv.kernel[own]).max() == 127, layer.name
