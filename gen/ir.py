"""The float IR: what the importer reads out of a torch model, before conversion.

A :class:`Graph` is a list of typed ops in topological order. Each op names the ops
it reads (``inputs``), so branching graphs (residual adds) fit the same form; the
passes in :mod:`spikesmith.gen.passes` rewrite a graph into a :class:`FloatNetwork`,
a chain of affine layers with ReLU, which calibration and quantisation consume.

Shapes are per sample (no batch dimension). Arrays are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Union

import numpy as np

from ..contract.network import ConvGeometry, PoolGeometry, convolve, max_pool

__all__ = [
    "Input", "Dense", "Conv2d", "AvgPool2d", "MaxPool2d", "BatchNorm", "ReLU", "SpikeCode", "Reshape", "Identity", "Add",
    "Op",
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
    ``(C_out, C_in, kh, kw)``; ``weight`` is then ``None`` (or ``geometry.dense(kernel)``), and
    :attr:`matrix` builds the matrix only where a pass needs it (merging two linear maps).
    """
    name: str
    weight: np.ndarray | None
    bias: np.ndarray
    inputs: tuple[str, ...] = ()
    source: str = "Linear"
    geometry: ConvGeometry | None = None
    kernel: np.ndarray | None = None
    relays: tuple[int, ...] | None = None   # per output channel (feature): the input it relays, or -1

    @cached_property
    def matrix(self) -> np.ndarray:
        """``(out, in)`` float64: the weight matrix (a convolution's built from its kernel: large)."""
        return self.weight if self.weight is not None else self.geometry.dense(self.kernel)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.geometry.in_shape)) if self.weight is None else self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return int(np.prod(self.geometry.out_shape)) if self.weight is None else self.weight.shape[0]


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
class SpikeCode:
    """A ReLU that emits T-bit codes of a given full scale (``spikesmith::spike_code``,
    :mod:`spikesmith.gen.spikecode`): after a layer, its firing with threshold ``full_scale``;
    on the image, the input encoding. ``full_scale`` is one value, or one per value (``(n,)``, the
    relays of a fine-tuned residual network: :func:`spikesmith.gen.passes.relays_from_full_scales`)."""
    name: str
    full_scale: float | np.ndarray
    timesteps: int
    inputs: tuple[str, ...] = ()
    source: str = "SpikeCode"


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


Op = Union[Input, Dense, Conv2d, AvgPool2d, MaxPool2d, BatchNorm, ReLU, SpikeCode, Reshape, Identity, Add]


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
    """One affine layer of the float network: ``z = W @ a + b``, ReLU unless it is the output.

    A convolution has ``geometry`` and ``kernel`` and may leave ``weight`` ``None``: :meth:`apply`
    convolves, :attr:`matrix` builds the dense matrix where one is needed."""
    name: str
    weight: np.ndarray | None  # (out, in) float64
    bias: np.ndarray    # (out,) float64
    relu: bool
    source: str = "Linear"
    geometry: ConvGeometry | None = None   # a convolution: its geometry and float kernel
    kernel: np.ndarray | None = None
    pool: PoolGeometry | None = None       # the layer reads the max pool of its input
    # Relay channels (residual shortcuts, gen/passes.relay_residuals): per output channel (a
    # convolution) or neuron, the input channel or neuron whose code it passes on unchanged, or -1.
    relays: tuple[int, ...] | None = None
    full_scale: float | np.ndarray | None = None   # lambda given by the model (a spike code), not calibrated

    @cached_property
    def matrix(self) -> np.ndarray:
        return self.weight if self.weight is not None else self.geometry.dense(self.kernel)

    @property
    def out_features(self) -> int:
        return int(np.prod(self.geometry.out_shape)) if self.weight is None else self.weight.shape[0]

    def apply(self, a: np.ndarray) -> np.ndarray:
        """``a @ W.T + b`` for ``(N, in)`` values; a convolution by convolving its kernel."""
        if self.weight is None:
            return convolve(a, self.geometry, self.kernel) + self.bias
        return a @ self.weight.T + self.bias

    def relay_neurons(self) -> np.ndarray:
        """``(out,)`` int: per output neuron, the input neuron it relays (its source channel at the
        kernel's centre tap), or -1. Relay neurons take their input's threshold, not the layer's."""
        if self.relays is None:
            return np.full(self.out_features, -1)
        if self.geometry is None:
            return np.asarray(self.relays, dtype=np.int64)
        g = self.geometry
        (_, h, w), (_, ho, wo) = g.in_shape, g.out_shape
        y = np.arange(ho) * g.stride[0] - g.padding[0] + g.kernel[0] // 2
        x = np.arange(wo) * g.stride[1] - g.padding[1] + g.kernel[1] // 2
        pixel = (y[:, None] * w + x[None, :]).ravel()
        channel = np.asarray(self.relays, dtype=np.int64)
        source = channel[:, None] * (h * w) + pixel[None, :]
        return np.where(channel[:, None] >= 0, source, -1).ravel()


@dataclass(frozen=True, eq=False)
class FloatNetwork:
    """A chain of affine layers with ReLU between them; the last layer gives the logits.

    A model whose activations are spike codes gives its full scales (``input_full_scale``, each
    layer's ``full_scale``) and their ``timesteps``; conversion then uses them as they are."""
    input_shape: tuple[int, ...]
    layers: tuple[FloatLayer, ...]
    input_full_scale: float | None = None
    timesteps: int | None = None

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
            a = layer.apply(a)
            if layer.relu:
                a = np.maximum(a, 0.0)
            outs.append(a)
        return outs
