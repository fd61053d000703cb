"""Passes over the float IR: each is a pure function ``Graph -> Graph`` (or to the next IR).

The order used by :func:`lower` is::

    check_finite -> drop_identities -> fold_batchnorm -> relay_residuals -> lower_convolutions
        -> merge_linear -> to_float_network -> relays_from_full_scales

``relay_residuals`` (:mod:`spikesmith.gen.residual`) turns residual blocks into a chain.

Convolutions and average pooling become Dense layers with the equivalent (Toeplitz)
matrix over the row-major ``(C, H, W)`` values, keeping their geometry and kernel, and a
linear map with no ReLU after it is multiplied into the next one (a pool into the
convolution or Linear layer after it; two convolutions stay one where that is exact).
Quantisation then keeps each firing convolution as a kernel for the convolution engine
(docs/semantics.md, "Convolutional networks").

Each pass raises :class:`~spikesmith.errors.UnsupportedModelError` or
:class:`~spikesmith.errors.ConversionError` with a one-line message naming the layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .ir import (AvgPool2d, BatchNorm, Conv2d, Dense, FloatLayer, FloatNetwork, Graph, Identity, MaxPool2d, ReLU, Reshape,
                 SpikeCode)
from ..contract.network import ConvGeometry
from .quantise import pooled_full_scales
from .residual import relay_residuals

__all__ = ["check_finite", "drop_identities", "fold_batchnorm", "lower_convolutions", "merge_linear",
           "to_float_network", "relays_from_full_scales", "lower", "conv_geometry", "compose_convolutions"]


def _rewire(ops, removed: str, replacement: str):
    """Make every op that read ``removed`` read ``replacement`` instead."""
    return [dataclasses.replace(op, inputs=tuple(replacement if i == removed else i for i in op.inputs))
            for op in ops]


def check_finite(graph: Graph) -> Graph:
    """Refuse NaN or infinite parameters: they would poison thresholds and integer weights."""
    for op in graph.ops:
        for field in ("weight", "bias", "scale", "shift"):
            value = getattr(op, field, None)
            if value is None:
                continue
            bad = ~np.isfinite(value)
            if bad.any():
                n_nan = int(np.isnan(value).sum())
                n_inf = int(bad.sum()) - n_nan
                raise ConversionError(
                    f"layer {graph.describe(op)} has non-finite {field} values "
                    f"({n_nan} NaN, {n_inf} inf); fix or retrain the model before converting")
    return graph


def drop_identities(graph: Graph) -> Graph:
    """Remove ops that do nothing at inference (Dropout, Identity, clone)."""
    ops = list(graph.ops)
    output = graph.output
    for op in graph.ops:
        if isinstance(op, Identity):
            (source,) = op.inputs
            ops = _rewire([o for o in ops if o.name != op.name], op.name, source)
            if output == op.name:
                output = source
    return Graph(tuple(ops), output)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold each BatchNorm into the Dense layer that feeds it (and only it).

    ``BN(W x + b) = (scale * W) x + (scale * b + shift)`` per output feature.
    """
    ops = list(graph.ops)
    output = graph.output
    for bn in graph.ops:
        if not isinstance(bn, BatchNorm):
            continue
        (source_name,) = bn.inputs
        current = {op.name: op for op in ops}
        source = current[source_name]
        users = [op for op in ops if source_name in op.inputs]
        if not isinstance(source, (Dense, Conv2d)) or len(users) != 1 or source_name == output:
            raise UnsupportedModelError(
                f"{bn.source} '{bn.name}' does not directly follow a Linear or Conv2d layer; "
                f"spikesmith folds batch norm into the layer before it")
        outputs = source.out_features if isinstance(source, Dense) else source.out_channels
        if outputs != bn.scale.shape[0]:
            raise UnsupportedModelError(
                f"{bn.source} '{bn.name}' has {bn.scale.shape[0]} features but follows "
                f"'{source.name}' with {outputs} outputs")
        scale = bn.scale.reshape((-1,) + (1,) * (source.weight.ndim - 1))
        folded = dataclasses.replace(
            source,
            weight=source.weight * scale,
            bias=source.bias * bn.scale + bn.shift,
        )
        ops = [folded if op.name == source_name else op for op in ops if op.name != bn.name]
        ops = _rewire(ops, bn.name, source_name)
        if output == bn.name:
            output = source_name
    return Graph(tuple(ops), output)


SUPPORTED = ("Linear, Conv2d (groups 1), AvgPool2d, MaxPool2d, AdaptiveAvgPool2d (to a size dividing the input), "
             "mean over H and W, ReLU, spike codes (spikesmith finetune), Dropout, Identity, residual blocks "
             "relu(F(x) + S(x)), "
             "BatchNorm1d/2d (after a Linear or Conv2d layer), and shape ops that keep the row-major order "
             "(Flatten, view, reshape, flatten, unflatten, squeeze, unsqueeze, contiguous)")


def conv_geometry(op: Conv2d | AvgPool2d, shape: tuple[int, int, int]) -> tuple[ConvGeometry, np.ndarray]:
    """The geometry and float kernel of a convolution, or of an average pool as the convolution
    with ``1 / (kh * kw)`` on the diagonal of its channels (zero padding counted, torch's default)."""
    if isinstance(op, Conv2d):
        kernel = np.asarray(op.weight, dtype=np.float64)
        return ConvGeometry(tuple(shape), op.out_channels, tuple(kernel.shape[2:]), tuple(op.stride),
                            tuple(op.padding)), kernel
    c = shape[0]
    (kh, kw) = op.kernel
    kernel = np.zeros((c, c, kh, kw))
    kernel[np.arange(c), np.arange(c)] = 1.0 / (kh * kw)
    return ConvGeometry(tuple(shape), c, tuple(op.kernel), tuple(op.stride), tuple(op.padding)), kernel


def compose_convolutions(first: Dense, second: Dense, weight: np.ndarray, bias: np.ndarray):
    """``(geometry, kernel)`` of one convolution equal to ``second`` after ``first`` (no ReLU between),
    or ``None`` when no convolution is (e.g. ``first``'s bias meets ``second``'s zero padding, or a
    pool's floor mode drops input rows the composed window would read).

    ``weight``, ``bias``: the product ``second.weight @ first.weight`` and its bias, the exact
    dense map; the composed convolution is kept only if its matrix equals it.
    """
    a, b = first.geometry, second.geometry
    if a is None or b is None:
        return None
    kernel_a, kernel_b = first.kernel, second.kernel
    ka, sa, pa = np.array(a.kernel), np.array(a.stride), np.array(a.padding)
    size = ka + (np.array(b.kernel) - 1) * sa
    geometry = ConvGeometry(a.in_shape, b.out_channels, tuple(int(v) for v in size),
                            tuple(int(v) for v in sa * np.array(b.stride)),
                            tuple(int(v) for v in pa + np.array(b.padding) * sa))
    if geometry.out_shape != b.out_shape:
        return None
    kernel = np.zeros(geometry.kernel_shape)
    for by in range(b.kernel[0]):
        for bx in range(b.kernel[1]):
            y, x = by * a.stride[0], bx * a.stride[1]
            kernel[:, :, y:y + a.kernel[0], x:x + a.kernel[1]] += np.einsum(
                "om,miyx->oiyx", kernel_b[:, :, by, bx], kernel_a)
    scale = max(float(np.abs(weight).max(initial=0.0)), 1e-300)
    per_channel = bias.reshape(b.out_channels, -1)
    if not (np.allclose(geometry.dense(kernel), weight, rtol=0, atol=1e-9 * scale)
            and np.allclose(per_channel, per_channel[:, :1], rtol=1e-12, atol=1e-12)):
        return None
    return geometry, kernel


def _chain(graph: Graph) -> list:
    """The ops from the input to the output of a graph without branches."""
    chain, name = [], graph.input.name
    while True:
        users = graph.consumers(name)
        if not users:
            return chain
        if len(users) > 1:
            raise UnsupportedModelError(
                f"the value of {graph.describe(graph.op(name))} is used by {len(users)} layers; spikesmith "
                f"converts branches only as residual blocks, y = relu(F(x) + S(x))")
        (user,) = users
        if len(user.inputs) != 1:
            raise UnsupportedModelError(f"layer {graph.describe(user)} takes several inputs; not supported yet")
        chain.append(user)
        name = user.name


def lower_convolutions(graph: Graph) -> Graph:
    """Replace each Conv2d and AvgPool2d by the Dense layer with its matrix (shapes from the input on).

    The Dense layer keeps the convolution's geometry and float kernel, so later passes and
    quantisation can keep it a convolution (the hardware's convolution engine stores only the kernel).
    """
    shape = graph.input.shape        # the values' (C, H, W) geometry
    flat = len(shape) == 1           # the IR value is a vector (a Dense output, or flattened)
    ops = [graph.input]
    for op in _chain(graph):
        if isinstance(op, (Conv2d, AvgPool2d)):
            if len(shape) != 3:
                raise UnsupportedModelError(f"{graph.describe(op)} needs (C, H, W) values, not {shape}")
            geometry, kernel = conv_geometry(op, shape)
            bias = np.repeat(op.bias if isinstance(op, Conv2d) else np.zeros(geometry.out_channels),
                             geometry.pixels)
            if not flat:              # the image itself: flatten it, row-major as the matrix expects
                ops.append(Reshape(f"{op.name}.flatten", (int(np.prod(shape)),), inputs=op.inputs, source="Flatten"))
                op = dataclasses.replace(op, inputs=(ops[-1].name,))
            ops.append(Dense(op.name, None, bias, inputs=op.inputs, source=op.source, geometry=geometry,
                             kernel=kernel, relays=getattr(op, "relays", None)))
            shape, flat = op.output_shape(shape), True
            continue
        if isinstance(op, MaxPool2d):
            if len(shape) != 3:
                raise UnsupportedModelError(f"{graph.describe(op)} needs (C, H, W) values, not {shape}")
            op = dataclasses.replace(op, geometry=op.pool_geometry(shape))
            ops.append(op)
            shape = op.geometry.out_shape
            continue
        if isinstance(op, Dense) and len(shape) > 1:
            raise UnsupportedModelError(
                f"Linear '{op.name}' is applied to the last axis of a {'x'.join(map(str, shape))} "
                f"tensor; flatten it first (torch.nn.Flatten)")
        ops.append(op)
        if isinstance(op, Reshape):
            shape = op.shape          # the same values in the same order: a vector stays a vector
        elif isinstance(op, Dense):
            shape, flat = (op.out_features,), True
    return Graph(tuple(ops), graph.output)


def merge_linear(graph: Graph) -> Graph:
    """Multiply a Dense layer not followed by a ReLU into the next Dense layer (a Reshape between is a no-op).

    ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``: a pooling layer joins the layer after it.
    Two convolutions (a pool and the convolution after it) stay one convolution where that is
    exact (:func:`compose_convolutions`); otherwise the product is a plain dense layer.
    """
    chain = _chain(graph)
    if not chain or chain[-1].name != graph.output:
        raise UnsupportedModelError("the model output is not the end of its layer chain")
    kept: list = []
    pending: Dense | None = None
    for op in chain:
        if isinstance(op, Reshape) and pending is not None:
            continue                                  # a Dense layer's values are already flat
        if isinstance(op, Dense) and pending is not None:
            weight, bias = op.matrix @ pending.matrix, op.matrix @ pending.bias + op.bias
            composed = compose_convolutions(pending, op, weight, bias)
            geometry, kernel = composed if composed is not None else (None, None)
            pending = Dense(op.name, weight, bias, source=f"{pending.source}+{op.source}", geometry=geometry,
                            kernel=kernel)
            continue
        if pending is not None:
            kept.append(pending)
            pending = None
        if isinstance(op, Dense):
            pending = op
        else:
            kept.append(op)
    if pending is not None:
        kept.append(pending)
    ops, previous = [graph.input], graph.input.name
    for op in kept:
        ops.append(dataclasses.replace(op, inputs=(previous,)))
        previous = op.name
    return Graph(tuple(ops), previous)


def to_float_network(graph: Graph) -> FloatNetwork:
    """Read a chain ``[Reshape] [MaxPool] Dense ReLU [MaxPool] ... Dense`` into a :class:`FloatNetwork`.

    Every hidden Dense layer must be followed by a ReLU (it becomes a firing iLIF layer);
    the last Dense layer gives the logits. A ReLU after the last layer is dropped: the
    output layer reports its integer logits and argmax is unchanged wherever a logit is
    positive. Reshapes are no-ops anywhere. A max pool belongs to the layer after it, which
    reads the pooled values; one between a layer and its ReLU moves after the ReLU (a max
    commutes with the ReLU).

    A spike code (:class:`SpikeCode`) is a ReLU whose full scale and T the model gives: the
    layer keeps them (no calibration), and one before the first layer is the input encoding's.
    """
    inp = graph.input
    chain = _chain(graph)
    if (chain[-1].name if chain else inp.name) != graph.output:
        raise UnsupportedModelError("the model output is not the end of its layer chain")
    shape = inp.shape
    layers: list[FloatLayer] = []
    codes = _SpikeCodes()
    pending: Dense | None = None
    pool_in = pending_pool = pool_after = None     # pools read by the next layer, by the pending one, after it
    for op in chain:
        if isinstance(op, Reshape):
            shape = op.shape              # a no-op on the flat values (also between a layer and its ReLU)
        elif isinstance(op, MaxPool2d):
            if (pool_after if pending is not None else pool_in) is not None:
                raise UnsupportedModelError(f"{graph.describe(op)} follows another max pool; merge them into one")
            pool_after, pool_in = (op.geometry, pool_in) if pending is not None else (pool_after, op.geometry)
            shape = op.geometry.out_shape
        elif isinstance(op, Dense):
            if pending is not None:
                raise UnsupportedModelError(
                    f"Linear '{pending.name}' is followed by Linear '{op.name}' without a ReLU between them; "
                    f"every hidden layer must be a ReLU layer")
            # A Dense op reads its input flat: lower_convolutions refused a Linear on the last axis of a map.
            if int(np.prod(shape)) != op.in_features:
                raise UnsupportedModelError(
                    f"Linear '{op.name}' takes {op.in_features} inputs but receives {int(np.prod(shape))} values")
            pending, pending_pool, pool_in = op, pool_in, None
            shape, codes.last_was_code = (op.out_features,), False
        elif isinstance(op, SpikeCode) and pending is None and not layers:
            codes.input(op, graph)
        elif isinstance(op, (ReLU, SpikeCode)):
            if pending is None:
                raise UnsupportedModelError(f"{op.source} {graph.describe(op)} does not follow a Linear layer")
            if isinstance(op, SpikeCode) and not isinstance(op.full_scale, float) and pool_after is not None:
                raise UnsupportedModelError(f"spike code {graph.describe(op)} has one full scale per value after a "
                                            f"max pool; give it one full scale, or place it before the pool")
            layers.append(FloatLayer(pending.name, pending.weight, pending.bias, relu=True, source=pending.source,
                                     geometry=pending.geometry, kernel=pending.kernel, pool=pending_pool,
                                     relays=pending.relays, full_scale=codes.layer(op, graph)))
            pending, pool_in, pool_after = None, pool_after, None
        else:
            raise UnsupportedModelError(
                f"unsupported layer {graph.describe(op)} at this point; supported: {SUPPORTED}")
    if pending is None and codes.last_was_code:
        raise UnsupportedModelError("the model ends in a spike code; its last Linear layer must give the logits")
    network = _float_network(inp, layers, pending, pending_pool, pool_in or pool_after)
    return dataclasses.replace(network, input_full_scale=codes.input_full_scale, timesteps=codes.timesteps)


class _SpikeCodes:
    """The full scales and T a model's spike codes give (:class:`SpikeCode` ops), checked as they are read."""

    def __init__(self):
        self.input_full_scale: float | None = None
        self.timesteps: int | None = None
        self.last_was_code = False

    def _timesteps(self, op: SpikeCode, graph: Graph) -> None:
        if self.timesteps is not None and op.timesteps != self.timesteps:
            raise UnsupportedModelError(f"spike code {graph.describe(op)} has T={op.timesteps}, an earlier one "
                                        f"T={self.timesteps}; a model's spike codes share one T")
        self.timesteps = op.timesteps

    def input(self, op: SpikeCode, graph: Graph) -> None:
        if self.input_full_scale is not None:
            raise UnsupportedModelError(f"spike code {graph.describe(op)} follows another spike code")
        if not isinstance(op.full_scale, float):
            raise UnsupportedModelError(f"spike code {graph.describe(op)} of the image has several full scales; "
                                        f"the input encoding takes one")
        self._timesteps(op, graph)
        self.input_full_scale = op.full_scale

    def layer(self, op: ReLU | SpikeCode, graph: Graph) -> float | None:
        """The layer's given full scale (None for a ReLU, which calibration sizes)."""
        self.last_was_code = isinstance(op, SpikeCode)
        if not self.last_was_code:
            return None
        self._timesteps(op, graph)
        return op.full_scale


def _float_network(inp, layers: list[FloatLayer], pending: Dense | None, pending_pool, trailing_pool) -> FloatNetwork:
    """The output layer (the pending Dense, or the last ReLU layer without its ReLU) and the input shape."""
    if trailing_pool is not None:
        raise UnsupportedModelError("a max pool after the output layer: the model must end in its logits layer")
    if pending is not None:
        layers.append(FloatLayer(pending.name, pending.matrix, pending.bias, relu=False, source=pending.source,
                                 pool=pending_pool))
    elif layers:
        last = layers[-1]
        layers[-1] = FloatLayer(last.name, last.matrix, last.bias, relu=False, source=last.source, pool=last.pool)
    if not layers:
        raise UnsupportedModelError(f"the model has no Linear layer; supported: {SUPPORTED}")
    input_shape = tuple(inp.shape)
    if layers[0].geometry is not None and layers[0].pool is None:
        input_shape = layers[0].geometry.in_shape     # images kept flat and reshaped in the model: the same values
    return FloatNetwork(input_shape=input_shape, layers=tuple(layers))


def _relay_rows(layer: FloatLayer) -> np.ndarray:
    """Per output row (a convolution's channel, else neuron): the input channel or neuron it passes on
    unchanged (weight 1 at the kernel's centre tap, 0 elsewhere, bias 0), or -1."""
    if layer.geometry is not None:
        rows, bias = layer.kernel, layer.bias.reshape(len(layer.kernel), -1)
        g = layer.geometry
        centre = (g.kernel[0] // 2, g.kernel[1] // 2)
        if g.kernel[0] % 2 == 0 or g.kernel[1] % 2 == 0 or tuple(g.padding) != centre:
            return np.full(len(rows), -1)        # no centre tap that reads the pixel it writes
        flat = rows.reshape(len(rows), rows.shape[1], -1)
        tap = centre[0] * g.kernel[1] + centre[1]
    else:
        flat, bias, tap = layer.matrix[:, :, None], layer.bias[:, None], 0
    ones = (flat == 1.0).reshape(len(flat), -1)
    single = (ones.sum(axis=1) == 1) & ((flat != 0).reshape(len(flat), -1).sum(axis=1) == 1) & np.all(bias == 0, axis=1)
    source = ones.argmax(axis=1)
    return np.where(single & (source % flat.shape[2] == tap), source // flat.shape[2], -1)


def _recognised_relays(layer: FloatLayer, input_full_scales: np.ndarray) -> FloatLayer:
    """``layer`` with one full scale per neuron: the neurons that pass an input's code on unchanged at
    that input's full scale become relays, the others must share one full scale (the layer's)."""
    scales = np.asarray(layer.full_scale, dtype=np.float64).ravel()
    candidates = dataclasses.replace(layer, relays=tuple(int(r) for r in _relay_rows(layer)))
    neurons = candidates.relay_neurons()
    relay = (neurons >= 0) & (scales == input_full_scales[np.maximum(neurons, 0)])
    rows = relay.reshape(len(candidates.relays), -1).all(axis=1) if layer.geometry is not None else relay
    relay_rows = np.where(rows, np.asarray(candidates.relays), -1)
    own = np.repeat(relay_rows < 0, len(relay) // len(relay_rows))
    if not own.any() or np.unique(scales[own]).size != 1:
        raise UnsupportedModelError(
            f"layer '{layer.name}': its spike code's full scales differ between its neurons; spikesmith converts "
            f"one full scale per layer (and relays of a residual shortcut, which keep their source's)")
    relays = tuple(int(r) for r in relay_rows) if (relay_rows >= 0).any() else layer.relays
    return dataclasses.replace(layer, relays=relays, full_scale=float(scales[own][0]))


def relays_from_full_scales(network: FloatNetwork) -> FloatNetwork:
    """A layer whose spike code gives one full scale per neuron (``spikesmith finetune`` of a residual
    network exports its relays as plain channels): find its relays again (:func:`_recognised_relays`), so
    conversion gives them weight 1, threshold ``2^T`` and bias 0 (docs/semantics.md, "Residual blocks")."""
    if not any(isinstance(layer.full_scale, np.ndarray) for layer in network.layers):
        return network
    if network.input_full_scale is None or any(layer.full_scale is None for layer in network.layers if layer.relu):
        raise UnsupportedModelError("a spike code with one full scale per neuron needs spike codes throughout (on "
                                    "the image and after every layer), not plain ReLUs")
    scales, layers = np.full(network.input_size, network.input_full_scale), []
    for layer in network.layers:
        if layer.pool is not None:
            scales = pooled_full_scales(scales, layer.pool)
        if isinstance(layer.full_scale, np.ndarray):
            if layer.full_scale.size != layer.out_features:
                raise UnsupportedModelError(f"layer '{layer.name}' has {layer.out_features} neurons but its spike code "
                                            f"{layer.full_scale.size} full scales")
            layer = _recognised_relays(layer, scales)
        layers.append(layer)
        if layer.relu:
            neurons = layer.relay_neurons()
            scales = np.where(neurons >= 0, scales[np.maximum(neurons, 0)], layer.full_scale)
    return dataclasses.replace(network, layers=tuple(layers))


def lower(graph: Graph) -> FloatNetwork:
    """Run the float-IR passes in order."""
    folded = relay_residuals(fold_batchnorm(drop_identities(check_finite(graph))))
    return relays_from_full_scales(to_float_network(merge_linear(lower_convolutions(folded))))
