"""Shape ops anywhere in the graph: exact when they keep the row-major order, refused by name otherwise."""

import numpy as np
import pytest
import torch
from torch import nn

from spikesmith.errors import UnsupportedModelError
from spikesmith.gen.importer import import_module
from spikesmith.gen.passes import lower
from spikesmith.gen.shapes import keeps_order, permutation


class Lambda(nn.Module):
    """A model step written as a function (how users write reshapes in ``forward``)."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def lowered_matches_torch(model: nn.Module, shape: tuple[int, ...], seed: int = 0):
    """The lowered float network computes the model's logits (float64 vs float32 tolerance)."""
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    network = lower(import_module(model, shape))
    images = np.random.default_rng(seed).uniform(0, 1, (5, *shape)).astype(np.float32)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(images)).numpy()
    got = network.forward(images)[-1]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-4), np.abs(got - want).max()
    return network


def test_a_flat_image_reshaped_inside_the_model_feeds_a_convolution():
    """Images kept flat (784-style) and viewed as 1xHxW in forward: the first layer stays a convolution."""
    model = nn.Sequential(Lambda(lambda x: x.view(x.size(0), 1, 4, 4)), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3))
    network = lowered_matches_torch(model, (16,))
    assert network.layers[0].geometry is not None and network.input_shape == (1, 4, 4)


def test_view_reshape_and_flatten_of_a_feature_map():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), Lambda(lambda x: x.reshape(x.shape[0], -1)),
                          nn.Linear(8, 6), nn.ReLU(), Lambda(lambda x: torch.flatten(x.view(-1, 2, 3), 1)),
                          nn.Linear(6, 2))
    lowered_matches_torch(model, (1, 4, 4))


def test_unflatten_before_a_convolution():
    """Linear, then unflatten to channels: the convolution after it reads a dense layer's values."""
    model = nn.Sequential(nn.Linear(8, 18), nn.ReLU(), nn.Unflatten(1, (2, 3, 3)), nn.Conv2d(2, 3, 2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12, 2))
    network = lowered_matches_torch(model, (8,))
    assert [layer.geometry is not None for layer in network.layers] == [False, True, False]


def test_squeeze_unsqueeze_contiguous_and_a_size_one_transpose():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(),
                          Lambda(lambda x: x.unsqueeze(1).contiguous()),          # (N, 1, 5)
                          Lambda(lambda x: x.transpose(1, 2)),                    # (N, 5, 1): only a size-1 axis moves
                          Lambda(lambda x: x.squeeze(2)), nn.Linear(5, 3))
    lowered_matches_torch(model, (1, 4, 4))


def test_a_reshape_between_a_layer_and_its_relu():
    model = nn.Sequential(nn.Linear(6, 8), Lambda(lambda x: x.view(-1, 2, 4)), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 2))
    lowered_matches_torch(model, (6,))


@pytest.mark.parametrize("step, message", [
    (lambda x: x.transpose(1, 2), r"transpose.int to axes \[0, 2, 1\]\) reorders the values"),
    (lambda x: x.permute(0, 2, 1), r"permute.default to axes \[0, 2, 1\]\) reorders the values"),
    (lambda x: x.squeeze(), "name the axes"),
    (lambda x: x.squeeze(0), "squeezes axis 0, the batch axis"),
    (lambda x: x.unsqueeze(0), "inserts an axis before the batch axis"),
    (lambda x: x.reshape(-1), "merges or moves the batch axis"),
    (lambda x: x.reshape(3, 2), "merges or moves the batch axis"),
    (lambda x: torch.cat([x, x], 1), r"concatenation .*torch.cat"),
])
def test_ops_that_reorder_or_touch_the_batch_axis_are_refused_by_name(step, message):
    # (the sum after the step only lets torch.export trace any shape; the import stops at the step)
    model = nn.Sequential(Lambda(lambda x: x.view(x.size(0), 2, 3)), Lambda(step), Lambda(lambda y: y.sum(-1)))
    with pytest.raises(UnsupportedModelError, match=message):
        lower(import_module(model, (6,)))


@pytest.mark.parametrize("shape, order, kept", [
    ((1, 2, 3), (0, 1, 2), True), ((1, 2, 3), (1, 0, 2), True), ((2, 1, 3), (1, 0, 2), True),
    ((2, 3), (1, 0), False), ((1, 2, 1, 3), (0, 3, 2, 1), False), ((1, 2, 1, 3), (2, 0, 1, 3), True),
])
def test_keeps_order_means_the_non_singleton_axes_stay_in_order(shape, order, kept):
    assert keeps_order(shape, order) is kept
    values = np.arange(int(np.prod(shape))).reshape(shape)
    assert bool((np.transpose(values, order).reshape(-1) == values.reshape(-1)).all()) is kept


def test_permutations_of_the_axis_ops():
    assert permutation("transpose.int", [1, -1], 4) == (0, 3, 2, 1)
    assert permutation("permute.default", [[0, -1, 1]], 3) == (0, 2, 1)
    assert permutation("t.default", [], 2) == (1, 0)


@pytest.mark.parametrize("pool", [
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveAvgPool2d((None, 1)),
    Lambda(lambda x: x.mean((2, 3))), Lambda(lambda x: x.mean((-1, -2), keepdim=True)),
])
def test_global_average_pooling_folds_into_the_next_layer(pool):
    """AdaptiveAvgPool2d to a size that divides the input and a mean over H and W are average pools."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 4, 6))                                    # materialise the lazy layer
    network = lowered_matches_torch(model, (1, 4, 6))
    assert len(network.layers) == 2, "the pool joins the Linear after it"


def test_adaptive_pooling_to_a_size_that_does_not_divide_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                          nn.Linear(27, 2))
    with pytest.raises(UnsupportedModelError, match="'2' from 4x6 to 3x3: .*divides the input size"):
        lower(import_module(model, (1, 4, 6)))


def test_reshapes_leave_the_converted_integer_network_unchanged():
    """The same weights with and without shape ops in forward convert to the same integers."""
    from spikesmith.gen.convert import ConversionOptions, convert_module
    from spikesmith.gen.netfile import fingerprint

    torch.manual_seed(3)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 5),
                          nn.ReLU(), nn.Linear(5, 3))
    reshaping = nn.Sequential(Lambda(lambda x: x.view(x.size(0), 16).reshape(-1, 1, 4, 4)), plain[0], plain[1],
                              Lambda(lambda x: x.unsqueeze(1).squeeze(1).contiguous()), plain[2],
                              Lambda(lambda x: x.flatten(2)), nn.Flatten(), plain[4],
                              Lambda(lambda x: x.view(-1, 1, 5).transpose(1, 0 + 1).reshape(-1, 5)), plain[5], plain[6])
    calib = np.random.default_rng(3).uniform(0, 1, (30, 1, 4, 4)).astype(np.float32)
    nets = [convert_module(model, calib, ConversionOptions(timesteps=5)) for model in (plain, reshaping)]
    assert fingerprint(nets[0]) == fingerprint(nets[1])
