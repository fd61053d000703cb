"""Quantisation-aware fine-tuning (spikesmith.train): the spike code operator, the integer grid, the exported
model's conversion (tests/test_finetune_cli.py: the commands)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from spikesmith.contract.network import encode_codes
from spikesmith.datasets import digits
from spikesmith.errors import SpikesmithError
from spikesmith.gen.convert import ConversionOptions, convert_graph
from spikesmith.gen.importer import export_module, import_program
from spikesmith.gen.ir import SpikeCode as SpikeCodeOp
from spikesmith.gen.passes import lower
from spikesmith.gen.spikecode import spike_code
from spikesmith.sim import golden
from spikesmith.sim.floatsim import snn_float_logits
from spikesmith.train import (FinetuneOptions, SpikeCode, class_nudges, export_twin, fake_quantised, finetune,
                              float_error_margins, grid_scales, initial_twin)


def test_spike_code_is_the_code_the_converted_layer_emits():
    rng = np.random.default_rng(0)
    for timesteps, full_scale in ((1, 1.0), (3, 2.5), (8, 0.37), (16, 7.0)):
        steps = 1 << timesteps
        # Values below zero, beyond full scale, and exactly on rounding ties (k + 1/2 steps).
        x = np.concatenate([rng.uniform(-1, 1.5 * full_scale, 500), (np.arange(-2, steps + 2) + 0.5) * full_scale / steps])
        got = spike_code(torch.from_numpy(x), torch.tensor(full_scale, dtype=torch.float64), timesteps).numpy()
        assert np.array_equal(got, encode_codes(x, full_scale, timesteps) * (full_scale / steps))


def test_spike_code_gradient_is_straight_through_inside_full_scale():
    x = torch.tensor([-0.5, 0.1, 0.6, 0.9, 1.5], requires_grad=True)
    full_scale = torch.tensor(1.0, requires_grad=True)
    spike_code(x, full_scale, 2).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]       # 0.9 is beyond the top code (3/4 of full scale)
    # LSQ: (code - x*4)/4 inside, 3/4 above, 0 below: 0 + (0 - 0.4)/4 + (2 - 2.4)/4 + 3/4 + 3/4
    assert full_scale.grad.item() == pytest.approx(-0.1 - 0.1 + 1.5)


def test_fake_quantised_weights_sit_on_the_converters_grid():
    """Converting a layer whose weights are fake-quantised gives integers proportional to them, row by row."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(12, 20)) * rng.uniform(0.01, 1, size=(12, 1))
    weight[3] *= 3 / np.abs(weight[3]).max() * np.abs(weight).max() / 15 / 16   # the scale floor applies
    quantised = fake_quantised(torch.tensor(weight, dtype=torch.float32), bits=5, per_channel=True).detach()
    model = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[0].weight.copy_(quantised)
    net = convert_graph(import_program(export_module(model, (20,))), rng.uniform(0, 1, (50, 20)),
                        ConversionOptions(timesteps=4, weight_bits=5))
    integers = net.layers[0].weight
    assert np.abs(integers).max() <= 15
    step = quantised.numpy() / np.where(integers == 0, np.inf, integers)    # one weight step per row
    assert np.all(np.any(integers != 0, axis=1))
    for row, ints in zip(step, integers):
        assert np.allclose(row[ints != 0], row[ints != 0][0], rtol=1e-6)
    assert np.all(quantised.numpy()[integers == 0] == 0)


def test_spike_code_gradient_reaches_the_full_scale_parameter():
    code = SpikeCode(full_scale=1.0, timesteps=3)
    code(torch.tensor([2.0, 3.0])).sum().backward()
    assert code.full_scale.grad.item() == pytest.approx(2 * 7 / 8)


def test_exported_model_reads_as_spike_codes_with_its_full_scales(digits_cnn_twin):
    twin, program, _ = digits_cnn_twin
    codes = [op for op in import_program(program).ops if isinstance(op, SpikeCodeOp)]
    assert [op.full_scale for op in codes] == [code.full_scale.item() for code in twin.codes()]
    assert {op.timesteps for op in codes} == {3}


def test_converted_model_uses_the_full_scales_as_thresholds(digits_cnn_twin):
    twin, program, train = digits_cnn_twin
    net = convert_graph(import_program(program), train.images[:20], ConversionOptions(timesteps=3))
    scales = [code.full_scale.item() for code in twin.codes()]
    assert net.input.threshold == scales[0]
    assert [layer.shadow.full_scale for layer in net.layers if layer.fires] == scales[1:]
    assert net.metadata["thresholds_from"] == "model"
    assert [layer.kind for layer in net.layers][:2] == ["conv", "conv"] and net.layers[1].pool is not None


def test_golden_model_predicts_what_the_fine_tuned_model_predicts(digits_cnn_twin):
    """The torch program, the float SNN of the converted network and the golden model: the same classes, on
    every image."""
    _, program, train = digits_cnn_twin
    test = digits("test")
    net = convert_graph(import_program(program), train.images[:20], ConversionOptions(timesteps=3))
    with torch.no_grad():
        torch_classes = program.module()(torch.from_numpy(test.images)).argmax(dim=1).numpy()
    assert np.array_equal(golden.run_images(net, test.images).predictions, torch_classes)
    assert np.array_equal(snn_float_logits(net, test.images).argmax(axis=1), torch_classes)


def _summed_in_order(twin, images: np.ndarray, rng) -> tuple[list[np.ndarray], np.ndarray]:
    """A baked twin's integer codes per firing layer and its logits, every affine map summed over its inputs
    (a dense layer's features, a convolution's input channels) in a random order: what another CPU's
    kernels may do."""
    with torch.no_grad():
        x = twin.input_code(torch.from_numpy(images).flatten(1))
        scales = twin.input_code.full_scale.expand(x.shape[1])
        codes = []
        for layer in twin.layers:
            x, scales = layer.layer_input(x, scales)
            order = torch.from_numpy(rng.permutation(x.shape[1]))
            if layer.geometry is not None:
                x = F.conv2d(x[:, order], layer.weight[:, order], layer.bias, layer.geometry.stride,
                             layer.geometry.padding).flatten(1)
            else:
                x = F.linear(x[:, order], layer.weight[:, order], layer.bias)
            scales = layer.full_scales(scales)
            if scales is None:
                return codes, x.numpy()
            scales = scales.expand(x.shape[1])
            x = spike_code(x, scales, twin.timesteps)
            codes.append(np.rint((x / scales).numpy() * (1 << twin.timesteps)).astype(np.int64))


def test_no_summation_order_changes_a_code_or_a_class(digits_cnn_twin):
    """Summed in eight random orders, the exported model's codes and classes stay the golden model's: the
    nudges keep every exact value farther from where the integers and floats could part than float64 errs
    (in float32 and without the output's nudges, an image with two tied integer logits took either class)."""
    twin, program, _ = digits_cnn_twin
    test = digits("test")
    traced = golden.run_images(convert_graph(import_program(program), None, ConversionOptions(timesteps=3)),
                               test.images, trace=True)
    for seed in range(8):
        codes, logits = _summed_in_order(twin, test.images, np.random.default_rng(seed))
        assert all(np.array_equal(mine, layer.codes) for mine, layer in zip(codes, traced.trace))
        assert np.array_equal(logits.argmax(axis=1), traced.predictions)


def test_tied_integer_logits_go_to_the_first_class_by_a_margin():
    """Output rows 0 and 1 equal: the integer logits tie on every image, and the fine-tuned program puts class
    0 ahead by 1/C membrane units (less at most the float error bound), as the golden model's first argmax."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        model[3].weight[1], model[3].bias[1] = model[3].weight[0], model[3].bias[0]
    network = lower(import_program(export_module(model.eval(), (1, 8, 8))))
    images = digits("test").images
    twin = initial_twin(network, images[:200], FinetuneOptions(timesteps=3))
    program = export_twin(twin)
    net = convert_graph(import_program(program), None, ConversionOptions(timesteps=3))
    result = golden.run_images(net, images)
    assert np.array_equal(result.logits[:, 0], result.logits[:, 1])
    with torch.no_grad():
        logits = program.module()(torch.from_numpy(images)).numpy()
    unit = grid_scales(twin.layers[-1].weight, 8, False)[0].item() * twin.layers[0].code.full_scale.item() / 8
    bound, margin = float_error_margins(twin)[-1]
    assert np.all((logits[:, 0] - logits[:, 1]) / unit >= 2 * margin - 2 * bound)
    assert np.array_equal(logits.argmax(axis=1), result.predictions)


def test_the_float_error_stays_within_its_bound_and_the_bound_below_the_margin(digits_cnn_twin):
    """Each exported value (a spike code's ``x/λ·2^T + 1/2`` and a logit, in membrane units) lies within the
    float64 bound of the exact value the integers and the nudges give; the bound is far below the margin."""
    twin, program, _ = digits_cnn_twin
    test = digits("test")
    net = convert_graph(import_program(program), None, ConversionOptions(timesteps=3))
    traced = golden.run_images(net, test.images, trace=True).trace
    steps = 1 << twin.timesteps
    with torch.no_grad():
        x = twin.input_code(torch.from_numpy(test.images).flatten(1))
        scales = twin.input_code.full_scale.expand(x.shape[1])
        for layer, trace, converted, (bound, margin) in zip(twin.layers, traced, net.layers, float_error_margins(twin)):
            assert bound < margin / 1e6
            given, given_scales = layer.layer_input(x, scales)
            if layer.geometry is not None:
                value = F.conv2d(given, layer.weight, layer.bias, layer.geometry.stride, layer.geometry.padding)
            else:
                value = F.linear(given, layer.weight, layer.bias)
            value = value.flatten(1).numpy()
            if layer.code is not None:
                theta = converted.threshold[None, :]
                code_value = value / layer.code.full_scale.item() * steps + 0.5
                error = (code_value - (steps * trace.membrane + 0.5) / theta) * theta / steps
            else:
                unit = grid_scales(layer.weight, 8, False)[0].item() * scales.max().item() / steps
                error = value / unit - (trace.membrane + class_nudges(value.shape[1]).numpy())
            assert np.abs(error).max() <= bound
            x, scales = layer(given, given_scales)


def test_a_twin_whose_float64_error_could_reach_a_margin_is_refused_by_layer():
    """At T=16 a code boundary is 2^-17 membrane units away, and a 64-input layer's float64 bound passes it:
    the exported model could then differ from the converted one, so export refuses."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    network = lower(import_program(export_module(model.eval(), (1, 8, 8))))
    twin = initial_twin(network, digits("test").images[:200], FinetuneOptions(timesteps=16))
    with pytest.raises(SpikesmithError, match="layer '1': its float64 sums may be off by .* membrane units"):
        export_twin(twin)
    bound, margin = float_error_margins(twin)[0]
    assert margin == 2.0 ** -17 and bound > margin


@pytest.fixture(scope="module")
def digits_resnet_twin():
    """A small ResNet on the digits (identity and 1x1-convolution shortcuts), its twin at T=3 fine-tuned one
    epoch, and its exported program."""
    from spikesmith.models import small_resnet

    torch.manual_seed(0)
    train = digits("train")
    network = lower(import_program(export_module(small_resnet(1, (4, 8), 10).eval(), (1, 8, 8))))
    assert any(layer.relays is not None for layer in network.layers)
    options = FinetuneOptions(timesteps=3, epochs=1)
    twin = finetune(network, initial_twin(network, train.images, options), train, options)
    return network, export_twin(twin)


def test_a_fine_tuned_residual_network_converts_with_its_relays_again(digits_resnet_twin):
    """Exported as plain channels with their source's full scale, the relays are found again: the same relay
    channels as the model's, each with weight 1, threshold 2^T and bias 0."""
    network, program = digits_resnet_twin
    tuned = lower(import_program(program))
    assert [layer.relays for layer in tuned.layers] == [layer.relays for layer in network.layers]
    net = convert_graph(import_program(program), None, ConversionOptions(timesteps=3))
    for layer, float_layer in zip(net.layers, tuned.layers):
        relay = float_layer.relay_neurons() >= 0
        if relay.any():
            assert np.all(layer.threshold[relay] == 8) and np.all(layer.bias[relay] == 0)


def test_a_fine_tuned_residual_network_predicts_what_the_golden_model_predicts(digits_resnet_twin):
    _, program = digits_resnet_twin
    test = digits("test")
    net = convert_graph(import_program(program), None, ConversionOptions(timesteps=3))
    with torch.no_grad():
        torch_classes = program.module()(torch.from_numpy(test.images)).argmax(dim=1).numpy()
    assert np.array_equal(golden.run_images(net, test.images).predictions, torch_classes)


class _TwoScales(nn.Module):
    """A spike code with one full scale per neuron, none of them a relay: not one layer's."""

    def __init__(self):
        super().__init__()
        self.register_buffer("full_scales", torch.tensor([1.0] * 4 + [2.0] * 4))

    def forward(self, x):
        return spike_code(x, self.full_scales, 3)


def test_per_neuron_full_scales_that_are_not_relays_are_refused_by_name():
    model = nn.Sequential(nn.Flatten(), _BadCode(1.0), nn.Linear(64, 8), _TwoScales(), nn.Linear(8, 10))
    with pytest.raises(SpikesmithError, match="layer '2'.*full scales differ between its neurons"):
        convert_graph(import_program(export_module(model, (1, 8, 8))), None, ConversionOptions(timesteps=3))


class _BadCode(nn.Module):
    def __init__(self, full_scale: float):
        super().__init__()
        self.full_scale = nn.Parameter(torch.tensor(full_scale))

    def forward(self, x):
        return spike_code(x, self.full_scale, 3)


def test_a_spike_code_without_a_positive_full_scale_is_refused_by_name():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), _BadCode(-1.0), nn.Linear(8, 10))
    with pytest.raises(SpikesmithError, match="spike code '2'.*positive, finite full scale"):
        import_program(export_module(model, (1, 8, 8)))


def _twin_codes(twin, images: np.ndarray) -> list[np.ndarray]:
    """Per firing layer of a baked twin: the ``(N, neurons)`` integer codes its spike codes emit."""
    with torch.no_grad():
        x = twin.input_code(torch.from_numpy(images).flatten(1))
        scales = twin.input_code.full_scale.expand(x.shape[1])
        codes = []
        for layer in twin.layers:
            x, scales = layer(*layer.layer_input(x, scales))
            if scales is not None:
                codes.append(np.rint((x / scales).double().numpy() * (1 << twin.timesteps)).astype(np.int64))
    return codes


@pytest.mark.parametrize("full_scale", [0.01, 0.02, 0.05])
def test_the_golden_model_emits_the_twins_codes_with_rows_on_the_scale_floor(full_scale):
    """Rows whose weights are all below 1/16 of the layer's largest take the floored scale; at 4-bit weights and
    small full scales their thresholds are small, and conversion would read them apart (dozens of codes of
    the 450 images x 16 neurons differ) without the twin's cap on thresholds."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        model[1].weight[3] *= 0.05
        model[1].weight[7] *= 0.04
        model[1].bias[3], model[1].bias[7] = 0.0, 0.01
    network = lower(import_program(export_module(model.eval(), (1, 8, 8))))
    images = digits("test").images
    twin = initial_twin(network, images[:200], FinetuneOptions(timesteps=3, weight_bits=4))
    with torch.no_grad():
        twin.layers[0].code.full_scale.fill_(full_scale)
    net = convert_graph(import_program(export_twin(twin)), None, ConversionOptions(timesteps=3, weight_bits=4))
    assert np.abs(net.layers[0].weight[[3, 7]]).max() < 7              # the two rows sit on the floor
    traced = golden.run_images(net, images, trace=True).trace
    assert np.array_equal(traced[0].codes, _twin_codes(twin, images)[0])


class _Code(nn.Module):
    """A spike code of given full scales and T, as any model may hold one."""

    def __init__(self, full_scales, timesteps: int = 3):
        super().__init__()
        self.register_buffer("full_scales", torch.tensor(full_scales, dtype=torch.float32))
        self.timesteps = timesteps

    def forward(self, x):
        return spike_code(x, self.full_scales, self.timesteps)


@pytest.mark.parametrize("layers,shape,message", [
    ([nn.Flatten(), _Code(1.0), nn.Linear(64, 8), _Code(1.0, 4), nn.Linear(8, 10)], (1, 8, 8), "share one T"),
    ([nn.Flatten(), _Code(1.0), nn.Linear(64, 10), _Code(1.0)], (1, 8, 8), "ends in a spike code"),
    ([nn.Flatten(), _Code([1.0] * 64), nn.Linear(64, 10)], (1, 8, 8), "the input encoding takes one"),
    ([nn.Flatten(), _Code(1.0, 17), nn.Linear(64, 10)], (1, 8, 8), "T from 1 to 16"),
    ([_Code(1.0), nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), _Code([1.0] * 32), nn.Flatten(), nn.Linear(32, 10)],
     (1, 8, 8), "after a max pool"),
    ([nn.Flatten(), _Code(1.0), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)], (1, 8, 8),
     "do not give every threshold"),
])
def test_spike_codes_conversion_cannot_read_are_refused_by_name(layers, shape, message):
    with pytest.raises(SpikesmithError, match=message):
        convert_graph(import_program(export_module(nn.Sequential(*layers), shape)), None,
                      ConversionOptions(timesteps=3))
