"""Seeded random integer networks (dense and convolutional): the stimulus of the tests and the soak.

Weights are uniform in the signed range of ``weight_bits``, biases within a quarter of a
layer's largest possible input sum, thresholds a random share (``threshold_scale``) of it, so
the networks spike neither never nor always. Nothing here is trained: these networks exist to
exercise every width, lane count and time step count bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..contract.network import (ConvGeometry, ConvSpec, DenseLayer, InputEncoding, PoolGeometry, SpikingNetwork,
                                convolve)

__all__ = ["make_network", "make_conv_network", "make_pooled_network", "random_codes"]


def make_network(rng: np.random.Generator, sizes: list[int], timesteps: int, weight_bits: int = 8,
                 negative_bias: float = 0.0, threshold_scale: float = 1.0) -> SpikingNetwork:
    """A random integer network with the given layer sizes (sizes[0] = inputs)."""
    qmax = (1 << (weight_bits - 1)) - 1
    layers = []
    max_code = (1 << timesteps) - 1
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = rng.integers(-qmax, qmax + 1, size=(n_out, n_in))
        if negative_bias:
            weight = np.where(rng.random(weight.shape) < negative_bias, -np.abs(weight), weight)
        scale = max(1, int(np.abs(weight).sum(axis=1).max()) * max_code)
        bias = rng.integers(-scale // 4 - 1, scale // 4 + 1, size=n_out)
        fires = i < len(sizes) - 2
        threshold = None
        if fires:
            threshold = np.maximum(1, (rng.random(n_out) * scale * threshold_scale / 2).astype(np.int64))
        layers.append(DenseLayer(f"l{i}", weight.astype(np.int64), bias.astype(np.int64),
                                 threshold, weight_bits))
    return SpikingNetwork(timesteps, InputEncoding((sizes[0],), 1.0), tuple(layers))


def make_conv_network(rng: np.random.Generator, in_shape: tuple[int, int, int], convs, classes: int,
                      timesteps: int, weight_bits: int = 8, threshold_scale: float = 0.3,
                      pools=None) -> SpikingNetwork:
    """A random integer network of convolution layers ``convs`` = [(C_out, (kh, kw), (sh, sw), (ph, pw)), ...]
    on ``in_shape`` images, then a dense output layer of ``classes`` neurons. ``pools[i]``, if given and
    not ``None``, is ``(kernel, stride, padding, dilation, ceil_mode)`` of a max pool after convolution ``i``."""
    qmax = (1 << (weight_bits - 1)) - 1
    max_code = (1 << timesteps) - 1
    layers, shape, pool = [], tuple(in_shape), None
    pools = list(pools or []) + [None] * (len(convs) - len(pools or []))
    for i, (c_out, kernel, stride, padding) in enumerate(convs):
        geometry = ConvGeometry(shape, c_out, tuple(kernel), tuple(stride), tuple(padding))
        kernel_values = rng.integers(-qmax, qmax + 1, size=geometry.kernel_shape)
        ones = np.ones((1, int(np.prod(shape))), dtype=np.int64)
        scale = max(1, int(convolve(ones, geometry, np.abs(kernel_values)).max()) * max_code)   # largest |row| sum
        bias = np.repeat(rng.integers(-scale // 4 - 1, scale // 4 + 1, size=c_out), geometry.pixels)
        threshold = np.repeat(np.maximum(1, (rng.random(c_out) * scale * threshold_scale).astype(np.int64)),
                              geometry.pixels)
        layers.append(DenseLayer(f"conv{i}", None, bias.astype(np.int64), threshold, weight_bits,
                                 conv=ConvSpec(geometry, kernel_values.astype(np.int64)), pool=pool))
        shape, pool = geometry.out_shape, None
        if pools[i] is not None:
            pool = PoolGeometry(shape, *(tuple(v) for v in pools[i][:4]), bool(pools[i][4]))
            shape = pool.out_shape
    size = int(np.prod(shape))
    weight = rng.integers(-qmax, qmax + 1, size=(classes, size))
    layers.append(DenseLayer("out", weight.astype(np.int64), rng.integers(-50, 50, size=classes).astype(np.int64),
                             None, weight_bits, pool=pool))
    return SpikingNetwork(timesteps, InputEncoding(tuple(in_shape), 1.0), tuple(layers))


def random_codes(net: SpikingNetwork, count: int, seed: int, sparse: bool = True) -> np.ndarray:
    """``count`` images of random input codes: every 17th silent, every 23rd (from the 5th) saturating and, with
    ``sparse``, every other one with the same random half of its inputs silent."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, net.max_code + 1, size=(count, net.input.size))
    if sparse:
        codes[::2, rng.random(net.input.size) < 0.5] = 0
    codes[::17] = 0
    codes[5::23] = net.max_code
    return codes


def _random_pool(rng: np.random.Generator, shape: tuple[int, int, int]):
    """A max pool torch accepts on ``shape``: kernel 1-3, stride 1-3, padding <= kernel/2, dilation 1-2,
    ``ceil_mode`` either way; ``None`` when the draw has no output pixel."""
    kernel = tuple(int(k) for k in rng.integers(1, 4, size=2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, size=2)) if rng.random() < 0.3 else (1, 1)
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2)) if rng.random() < 0.5 else kernel
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    spec = (kernel, stride, padding, dilation, bool(rng.random() < 0.3))
    geometry = PoolGeometry(shape, kernel, stride, padding, dilation, spec[4])
    return spec if geometry.valid() else None


def make_pooled_network(rng: np.random.Generator, timesteps: int, weight_bits: int = 6):
    """A random convolution network with max pools: ``(network, lanes)``.

    One or two convolutions (each followed by a random max pool, the first always), the second
    reading pooled pixels, then a dense output layer reading pooled addresses or pixels; lanes are
    random divisors of each convolution's channels.
    """
    while True:
        shape = (int(rng.integers(1, 3)), int(rng.integers(4, 9)), int(rng.integers(4, 9)))
        convs, pools, current = [], [], shape
        for index in range(int(rng.integers(1, 3))):
            kernel = tuple(int(rng.integers(1, min(3, current[1 + a]) + 1)) for a in range(2))
            geometry = ConvGeometry(current, int(rng.choice([2, 3, 4, 6])), kernel, (1, 1),
                                    tuple(int(rng.integers(0, k)) for k in kernel))
            convs.append((geometry.out_channels, kernel, (1, 1), geometry.padding))
            pool = _random_pool(rng, geometry.out_shape) if index == 0 or rng.random() < 0.5 else None
            pools.append(pool)
            current = PoolGeometry(geometry.out_shape, *pool[:4], pool[4]).out_shape if pool else geometry.out_shape
            if min(current[1:]) < 2:
                break
        if pools[0] is None:
            continue
        net = make_conv_network(rng, shape, convs, int(rng.integers(2, 5)), timesteps, weight_bits, pools=pools)
        lanes = [int(rng.choice([d for d in range(1, c[0] + 1) if c[0] % d == 0])) for c in convs]
        return net, lanes + [int(rng.integers(1, 4))]

