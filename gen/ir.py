"""The float IR: what the importer reads out of a torch model, before conversion.

A :class:`Graph` is a list of typed ops in topological order. Each op names the ops
it reads (``inputs``), so branching graphs (residual adds) fit the same form; the
passes in :mod:`spikesmith.gen.passes` rewrite a graph into a :class:`FloatNetwork`,
a chain of affine layers with ReLU, which calibration and quantisation consume.

Shapes are per sample (no batch dimension). Arrays are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ..contract.network import ConvGeometry, PoolGeometry, max_pool

__all__ = [
    "Input", "Dense", "Conv2d", "AvgPool2d", "MaxPool2d", "BatchNorm", "ReLU", "Reshape", "Identity", "Add", "Op",
    "Graph",
    "FloatLayer", "FloatNetwork",
]


@dataclass(frozen=True, eq=False)
class Input:
    """The network input: one image of ``shape`` (e.g. ``(1, 8, 8)`` or ``(64,)``)."""
    name: str
    shape: tuple[int, ...]
    inputs: tuple[str, ...] = ()
    source: str = "input"


@dataclass(frozen=True, eq=False)
class Dense:
    """``y = x @ weight.T + bias``; weight ``(out, in)``, bias ``(out,)``.

    A lowered convolution (or pool) keeps its ``geometry`` and float ``kernel``
    ``(C_out, C_in, kh, kw)``; ``weight`` is then ``geometry.dense(kernel)``.
    """
    name: str
    weight: np.ndarray
    bias: np.ndarray
    inputs: tuple[str, ...] = ()
    source: str = "Linear"
    geometry: ConvGeometry | None = None
    kernel: np.ndarray | None = None
    relays: tuple[int, ...] | None = None   # per output channel (feature): the input it relays, or -1

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D convolution on ``(C, H, W)`` values: weight ``(out, in, kh, kw)``, bias ``(out,)``, groups 1."""
    name: str
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    inputs: tuple[str, ...] = ()
    source: str = "Conv2d"
    relays: tuple[int, ...] | None = None   # per output channel: the input channel it relays, or -1

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        _, h, w = shape
        kh, kw = self.weight.shape[2:]
        return (self.out_channels, (h + 2 * self.padding[0] - kh) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - kw) // self.stride[1] + 1)


@dataclass(frozen=True, eq=False)
class AvgPool2d:
    """Average pooling on ``(C, H, W)``: ``kernel`` windows every ``stride``, zero ``padding`` counted."""
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    inputs: tuple[str, ...] = ()
    source: str = "AvgPool2d"

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = shape
        return (c, (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1)


@dataclass(frozen=True, eq=False)
class MaxPool2d:
    """Max pooling on ``(C, H, W)`` values, as ``torch.nn.MaxPool2d``; ``geometry`` once the input
    shape is known (``lower_convolutions``)."""
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    inputs: tuple[str, ...] = ()
    source: str = "MaxPool2d"
    geometry: PoolGeometry | None = None

    def pool_geometry(self, shape: tuple[int, int, int]) -> PoolGeometry:
        return PoolGeometry(tuple(shape), self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)


@dataclass(frozen=True, eq=False)
class BatchNorm:
    """Inference-mode batch norm as a per-feature affine map ``y = x * scale + shift``."""
    name: str
    scale: np.ndarray
    shift: np.ndarray
    inputs: tuple[str, ...] = ()
    source: str = "BatchNorm1d"


@dataclass(frozen=True, eq=False)
class ReLU:
    name: str
    inputs: tuple[str, ...] = ()
    source: str = "ReLU"


@dataclass(frozen=True, eq=False)
class Reshape:
    """The same values in the same row-major order, seen as per-sample ``shape``: ``Flatten``,
    ``view``, ``reshape``, ``unflatten``, ``squeeze``, ``unsqueeze``, order-keeping ``permute``."""
    name: str
    shape: tuple[int, ...]
    inputs: tuple[str, ...] = ()
    source: str = "Flatten"


@dataclass(frozen=True, eq=False)
class Identity:
    """An op with no effect at inference (Dropout, Identity, clone)."""
    name: str
    inputs: tuple[str, ...] = ()
    source: str = "Identity"


@dataclass(frozen=True, eq=False)
class Add:
    """The sum of two values of the same shape (a residual block's join); ``inputs`` names both."""
    name: str
    inputs: tuple[str, ...] = ()
    source: str = "add"


Op = Union[Input, Dense, Conv2d, AvgPool2d, MaxPool2d, BatchNorm, ReLU, Reshape, Identity, Add]


@dataclass(frozen=True, eq=False)
class Graph:
    """Ops in topological order; ``output`` names the op whose value is the model output."""
    ops: tuple[Op, ...]
    output: str

    def op(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def consumers(self, name: str) -> list[Op]:
        return [op for op in self.ops if name in op.inputs]

    @property
    def input(self) -> Input:
        inputs = [op for op in self.ops if isinstance(op, Input)]
        assert len(inputs) == 1, "a graph has exactly one Input"
        return inputs[0]

    def describe(self, op: Op) -> str:
        """How an error message names an op: ``'fc1' (Linear)``."""
        return f"'{op.name}' ({op.source})"


@dataclass(frozen=True, eq=False)
class FloatLayer:
    """One affine layer of the float network: ``z = W @ a + b``, ReLU unless it is the output."""
    name: str
    weight: np.ndarray  # (out, in) float64
    bias: np.ndarray    # (out,) float64
    relu: bool
    source: str = "Linear"
    geometry: ConvGeometry | None = None   # a convolution: its geometry and float kernel
    kernel: np.ndarray | None = None
    pool: PoolGeometry | None = None       # the layer reads the max pool of its input
    # Relay channels (residual shortcuts, gen/passes.relay_residuals): per output channel (a
    # convolution) or neuron, the input channel or neuron whose code it passes on unchanged, or -1.
    relays: tuple[int, ...] | None = None

    def relay_neurons(self) -> np.ndarray:
        """``(out,)`` int: per output neuron, the input neuron it relays (same pixel's source channel
        after the stride), or -1. Relay neurons take their input's threshold, not the layer's."""
        out = self.weight.shape[0]
        if self.relays is None:
            return np.full(out, -1)
        if self.geometry is None:
            return np.asarray(self.relays, dtype=np.int64)
        pixels = self.geometry.pixels
        channel = np.repeat(np.asarray(self.relays, dtype=np.int64), pixels)
        # A relay channel's weight row is one-hot at its source: that input neuron.
        source = np.argmax(self.weight != 0, axis=1)
        return np.where(channel >= 0, source, -1)


@dataclass(frozen=True, eq=False)
class FloatNetwork:
    """A chain of affine layers with ReLU between them; the last layer gives the logits."""
    input_shape: tuple[int, ...]
    layers: tuple[FloatLayer, ...]

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    def forward(self, images: np.ndarray) -> list[np.ndarray]:
        """Activations of every layer (post-ReLU for hidden layers, logits last) for ``(N, *input_shape)`` images."""
        a = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        outs = []
        for layer in self.layers:
            if layer.pool is not None:
                a = max_pool(a, layer.pool)            # values >= 0 (images, ReLU outputs): padding never wins
            a = a @ layer.weight.T + layer.bias
            if layer.relu:
                a = np.maximum(a, 0.0)
            outs.append(a)
        return outs
