"""Float evaluations of a converted network, to tell error sources apart.

- :func:`ann_logits`: the original ANN (float weights after batch-norm folding, plain ReLU).
- :func:`snn_float_logits`: the same float weights with the spiking quantisation of
  activations (T-bit codes of lambda-scaled activations, round to nearest, clipped):
  the conversion error alone.
- the integer golden model (:mod:`spikesmith.sim.golden`) adds weight quantisation.
"""

from __future__ import annotations

import numpy as np

from ..errors import NetFileError
from ..contract.network import SpikingNetwork, check_images, convolve, encode_codes, max_pool

__all__ = ["ann_logits", "snn_float_logits"]


def _shadows(net: SpikingNetwork):
    if any(layer.shadow is None for layer in net.layers):
        raise NetFileError("this network file carries no float parameters; float evaluation is not possible")
    return [layer.shadow for layer in net.layers]


def _affine(layer, shadow, a: np.ndarray) -> np.ndarray:
    """The float layer: a convolution by its kernel, a dense layer by its matrix."""
    if shadow.kernel is not None:
        return convolve(a, layer.conv.geometry, shadow.kernel) + shadow.bias
    return a @ shadow.weight.T + shadow.bias


def ann_logits(net: SpikingNetwork, images: np.ndarray) -> np.ndarray:
    a = check_images(images, net.input.shape)
    for layer, shadow in zip(net.layers, _shadows(net)):
        a = a if layer.pool is None else max_pool(a, layer.pool)
        a = _affine(layer, shadow, a)
        if layer.fires:
            a = np.maximum(a, 0.0)
    return a


def snn_float_logits(net: SpikingNetwork, images: np.ndarray) -> np.ndarray:
    steps = 1 << net.timesteps
    x = check_images(images, net.input.shape)
    a = encode_codes(x, net.input.threshold, net.timesteps) * (net.input.threshold / steps)
    for layer, shadow in zip(net.layers, _shadows(net)):
        a = a if layer.pool is None else max_pool(a, layer.pool)
        a = _affine(layer, shadow, a)
        if layer.fires:
            lam = shadow.activation_threshold
            a = encode_codes(a, lam, net.timesteps) * (lam / steps)
    return a
