"""The converted spiking network: integer weights, biases and thresholds (numpy only).

This is the contract between conversion (gen/), the golden model (sim/), the hardware
generator (hw/) and the host driver (host/). Its exact semantics are in
``docs/semantics.md``; the file format is in :mod:`spikesmith.gen.netfile`.

Units: a layer's membrane counts ``weight LSB x input code LSB``; input codes and output
codes are ``timesteps``-bit unsigned integers (the MSB-first spike trains).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import DatasetError

__all__ = ["fingerprint", "stored_arrays", "check_images", "encode_codes", "InputEncoding", "ConvGeometry", "ConvSpec", "PoolGeometry", "max_pool", "convolve", "DenseLayer",
           "SpikingNetwork",
           "FloatShadow", "signed_width", "unsigned_width"]


def signed_width(lo: int, hi: int) -> int:
    """Bits of the smallest two's-complement type holding every integer in ``[lo, hi]``."""
    lo, hi = int(lo), int(hi)
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def unsigned_width(hi: int) -> int:
    """Bits of the smallest unsigned type holding ``[0, hi]`` (at least 1)."""
    return max(1, int(hi).bit_length())


def check_images(images: np.ndarray, input_shape: tuple[int, ...], what: str = "images") -> np.ndarray:
    """Images as float64 ``(N, size)``; a clear error if they do not fit the network input.

    Any per-image shape with the right number of values is accepted and flattened row-major
    (as ``torch.nn.Flatten`` does), so 1x8x8 images feed a 64-input network.
    """
    images = np.asarray(images)
    size = int(np.prod(input_shape))
    per_image = images.shape[1:]
    if images.ndim < 2 or int(np.prod(per_image)) != size:
        got = "x".join(map(str, per_image)) or "scalar"
        want = "x".join(map(str, input_shape))
        raise DatasetError(
            f"{what} have shape {got} ({int(np.prod(per_image)) if images.ndim >= 2 else 1} values) "
            f"but the network takes {want} ({size} values)")
    if not np.all(np.isfinite(images)):
        raise DatasetError(f"{what} contain NaN or infinite values")
    return images.reshape(len(images), size).astype(np.float64)


def encode_codes(a: np.ndarray, threshold: float, timesteps: int) -> np.ndarray:
    """``clip(floor(a / threshold * 2**T + 1/2), 0, 2**T - 1)`` computed in float64, as int64 codes.

    The one definition of input encoding (docs/semantics.md): the golden model, the
    calibration search and the host driver all call it.
    """
    with np.errstate(over="ignore"):     # a finite pixel beyond float64 becomes +-inf: clipped to M or 0
        scaled = np.asarray(a, dtype=np.float64) / np.float64(threshold) * np.float64(1 << timesteps)
    return np.clip(np.floor(scaled + 0.5), 0, (1 << timesteps) - 1).astype(np.int64)


@dataclass(frozen=True)
class InputEncoding:
    """How an image becomes input codes: ``c = clip(floor(x / threshold * 2**T + 1/2), 0, 2**T - 1)``.

    ``x`` is the float image the model was trained on (here: pixels scaled to [0, 1]);
    ``threshold`` is the input full scale chosen by calibration.
    """
    shape: tuple[int, ...]
    threshold: float

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def encode(self, images: np.ndarray, timesteps: int) -> np.ndarray:
        """``(N, *shape)`` float images -> ``(N, size)`` int64 input codes."""
        images = np.asarray(images)
        return encode_codes(images.reshape(len(images), -1), self.threshold, timesteps)


@dataclass(frozen=True)
class ConvGeometry:
    """Where a 2-D convolution (groups 1, dilation 1, zero padding) reads and writes.

    Input ``in_shape = (C_in, H, W)`` and output ``(out_channels, H_out, W_out)`` values are
    row-major (C, H, W), as ``torch.nn.Flatten`` orders them. Output pixel ``(oy, ox)`` reads
    input rows ``oy * stride[0] - padding[0] + ky`` for ``ky < kernel[0]`` (columns alike).
    """
    in_shape: tuple[int, int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        _, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_shape[0], *self.kernel)

    @property
    def pixels(self) -> int:
        """Output pixels per channel, ``H_out * W_out``."""
        return self.out_shape[1] * self.out_shape[2]

    @property
    def window_size(self) -> int:
        """Inputs one output neuron reads: ``kh * kw * C_in``."""
        return self.kernel[0] * self.kernel[1] * self.in_shape[0]

    def taps(self, axis: int, position: int) -> list[tuple[int, int]]:
        """``(kernel offset, output coordinate)`` of every output an input at ``position`` on ``axis``
        (0: rows, 1: columns) reaches, kernel offsets ascending."""
        k, s, p = self.kernel[axis], self.stride[axis], self.padding[axis]
        size = self.out_shape[1 + axis]
        return [(o, (position + p - o) // s) for o in range(k)
                if (position + p - o) % s == 0 and 0 <= (position + p - o) // s < size]

    def dense(self, kernel: np.ndarray) -> np.ndarray:
        """The ``(C_out*H_out*W_out, C_in*H*W)`` matrix of the convolution with ``kernel`` (its dtype)."""
        kernel = np.asarray(kernel)
        c_in, h, w = self.in_shape
        c_out, ho, wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        matrix = np.zeros((c_out, ho, wo, c_in, h, w), dtype=kernel.dtype)
        for y in range(ho):
            for x in range(wo):
                for dy in range(kh):
                    iy = y * sh - ph + dy
                    if not 0 <= iy < h:
                        continue
                    for dx in range(kw):
                        ix = x * sw - pw + dx
                        if 0 <= ix < w:
                            matrix[:, y, x, :, iy, ix] = kernel[:, :, dy, dx]
        return matrix.reshape(c_out * ho * wo, c_in * h * w)

    def kernel_of(self, matrix: np.ndarray) -> np.ndarray:
        """The kernel whose :meth:`dense` matrix is ``matrix`` (entries no output ever reads are 0)."""
        c_out, ho, wo = self.out_shape
        c_in, h, w = self.in_shape
        grid = np.asarray(matrix).reshape(c_out, ho, wo, c_in, h, w)
        kernel = np.zeros(self.kernel_shape, dtype=grid.dtype)
        for dy in range(self.kernel[0]):
            rows = [(y, y * self.stride[0] - self.padding[0] + dy) for y in range(ho)]
            rows = [(y, iy) for y, iy in rows if 0 <= iy < h]
            for dx in range(self.kernel[1]):
                cols = [(x, x * self.stride[1] - self.padding[1] + dx) for x in range(wo)]
                cols = [(x, ix) for x, ix in cols if 0 <= ix < w]
                if rows and cols:
                    (y, iy), (x, ix) = rows[0], cols[0]
                    kernel[:, :, dy, dx] = grid[:, y, x, :, iy, ix]
        return kernel

    def as_dict(self) -> dict:
        return {"in_shape": list(self.in_shape), "out_channels": self.out_channels, "kernel": list(self.kernel),
                "stride": list(self.stride), "padding": list(self.padding)}

    @classmethod
    def from_dict(cls, d: dict) -> "ConvGeometry":
        pair = lambda v: (int(v[0]), int(v[1]))  # noqa: E731
        return cls(tuple(int(v) for v in d["in_shape"]), int(d["out_channels"]), pair(d["kernel"]),
                   pair(d["stride"]), pair(d["padding"]))


#: Images per chunk of :func:`convolve` (its im2col buffer is ``chunk * C_in*kh*kw * H_out*W_out`` values).
CONVOLVE_CHUNK = 64


def convolve(x: np.ndarray, geometry: ConvGeometry, kernel: np.ndarray) -> np.ndarray:
    """``(N, C_in*H*W)`` -> ``(N, C_out*H_out*W_out)``: the convolution, equal to
    ``x @ geometry.dense(kernel).T`` without building that matrix (im2col, ``CONVOLVE_CHUNK`` images
    at a time). Exact for integer ``x`` and ``kernel`` (int64 arithmetic); float64 otherwise."""
    x = np.asarray(x)
    kernel = np.asarray(kernel)
    exact = x.dtype.kind in "iub" and kernel.dtype.kind in "iub"
    dtype = np.int64 if exact else np.float64
    c, h, w = geometry.in_shape
    c_out, ho, wo = geometry.out_shape
    (kh, kw), (sh, sw), (ph, pw) = geometry.kernel, geometry.stride, geometry.padding
    matrix = kernel.reshape(c_out, c * kh * kw).astype(dtype)
    out = np.empty((len(x), c_out * ho * wo), dtype=dtype)
    for start in range(0, len(x), CONVOLVE_CHUNK):
        part = x[start:start + CONVOLVE_CHUNK].reshape(-1, c, h, w).astype(dtype)
        padded = np.zeros((len(part), c, h + 2 * ph, w + 2 * pw), dtype=dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = part
        columns = np.empty((len(part), c, kh, kw, ho, wo), dtype=dtype)
        for dy in range(kh):
            for dx in range(kw):
                columns[:, :, dy, dx] = padded[:, :, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
        product = matrix @ columns.reshape(len(part), c * kh * kw, ho * wo)
        out[start:start + len(part)] = product.reshape(len(part), -1)
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """Max pooling of row-major ``(C, H, W)`` codes, as ``torch.nn.MaxPool2d``: windows of
    ``kernel`` (taps ``dilation`` apart) every ``stride``, ``padding`` on each side, torch's
    output size (``ceil_mode``: a last, partial window if it starts inside the input or its left
    padding). Padding never wins a max: codes are >= 0, so it reads as code 0."""
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def _outputs(self, axis: int) -> int:
        size, k, s = self.in_shape[1 + axis], self.kernel[axis], self.stride[axis]
        p, d = self.padding[axis], self.dilation[axis]
        span = d * (k - 1) + 1
        if self.ceil_mode:
            n = -(-(size + 2 * p - span) // s) + 1
            return n - 1 if (n - 1) * s >= size + p else n
        return (size + 2 * p - span) // s + 1

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.in_shape[0], self._outputs(0), self._outputs(1))

    @property
    def in_size(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape))

    def windows(self) -> np.ndarray:
        """``(out_size, kh*kw)`` int64: the flat input index of each tap of each output's window,
        ``in_size`` for a tap in the padding or past the edge (the caller's code-0 column)."""
        c, h, w = self.in_shape
        _, ho, wo = self.out_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        iy = np.arange(ho)[:, None] * sh - ph + np.arange(kh)[None, :] * dh          # (ho, kh)
        ix = np.arange(wo)[:, None] * sw - pw + np.arange(kw)[None, :] * dw          # (wo, kw)
        rows = np.where((iy >= 0) & (iy < h), iy, -1)[:, None, :, None]
        cols = np.where((ix >= 0) & (ix < w), ix, -1)[None, :, None, :]
        inside = (rows >= 0) & (cols >= 0)                                         # (ho, wo, kh, kw)
        flat = rows * w + cols
        channel = np.arange(c)[:, None, None, None, None] * (h * w)
        index = np.where(inside[None], channel + flat[None], c * h * w)
        return index.reshape(c * ho * wo, kh * kw).astype(np.int64)

    def as_dict(self) -> dict:
        return {"in_shape": list(self.in_shape), "kernel": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "ceil_mode": bool(self.ceil_mode)}

    @classmethod
    def from_dict(cls, d: dict) -> "PoolGeometry":
        pair = lambda v: (int(v[0]), int(v[1]))  # noqa: E731
        return cls(tuple(int(v) for v in d["in_shape"]), pair(d["kernel"]), pair(d["stride"]), pair(d["padding"]),
                   pair(d["dilation"]), bool(d["ceil_mode"]))

    def valid(self) -> bool:
        """Torch's own limits: positive sizes, padding at most half the kernel, an output pixel."""
        return (len(self.in_shape) == 3 and min(*self.in_shape, *self.kernel, *self.stride, *self.dilation) >= 1
                and all(0 <= p <= k // 2 for p, k in zip(self.padding, self.kernel))
                and min(self.out_shape) >= 1)


def max_pool(codes: np.ndarray, geometry: PoolGeometry) -> np.ndarray:
    """``(N, in_size)`` codes -> ``(N, out_size)``: the largest code of each window (docs/semantics.md)."""
    padded = np.concatenate([codes, np.zeros((len(codes), 1), dtype=codes.dtype)], axis=1)
    return padded[:, geometry.windows()].max(axis=2)


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """A layer's convolutional structure: its ``geometry`` and integer ``kernel``
    ``(C_out, C_in, kh, kw)``. The layer's dense ``weight`` is ``geometry.dense(kernel)``,
    and its biases and thresholds are equal over the pixels of each channel."""
    geometry: ConvGeometry
    kernel: np.ndarray


@dataclass(frozen=True, eq=False)
class FloatShadow:
    """The float parameters a layer was quantised from, for the float SNN evaluation.

    ``activation_threshold`` is the layer's full-scale activation (lambda_l), or one per neuron
    when relay channels (residual shortcuts) pass on codes of another full scale; ``None`` for
    the output layer, which does not fire.
    """
    weight: np.ndarray | None  # (out, in) float; None for a convolution (its ``kernel``)
    bias: np.ndarray    # (out,) float
    activation_threshold: float | np.ndarray | None   # per neuron when the layer has relay channels
    kernel: np.ndarray | None = None   # a convolution's float kernel (the layer's geometry)

    @property
    def full_scale(self) -> float | None:
        """The layer's full-scale activation (the largest, if per neuron); ``None`` for the output layer."""
        return None if self.activation_threshold is None else float(np.max(self.activation_threshold))


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A fully connected iLIF layer (see docs/semantics.md).

    - ``weight``: ``(out, in)`` signed integers of ``weight_bits`` bits.
    - ``bias``: ``(out,)`` integers in membrane units, added once after the last accumulation step.
    - ``threshold``: ``(out,)`` integers >= 1 in membrane units, or ``None`` for the output layer.
    - ``conv``: for a convolution, its kernel and geometry (``weight`` is then ``None`` or the
      kernel's dense matrix; :attr:`matrix` builds it when asked, the golden model convolves
      instead, and the hardware keeps only the kernel); ``None`` for a fully connected layer.
    - ``pool``: the layer reads the max-pooled codes of its input (``pool.in_size`` codes in,
      ``in_size == pool.out_size`` after the pool); ``None``: it reads its input as it is.
    """
    name: str
    weight: np.ndarray | None
    bias: np.ndarray
    threshold: np.ndarray | None
    weight_bits: int
    shadow: FloatShadow | None = None
    conv: ConvSpec | None = None
    pool: PoolGeometry | None = None

    def __post_init__(self):
        assert self.weight is not None or self.conv is not None, "a dense layer needs its weight matrix"

    @cached_property
    def matrix(self) -> np.ndarray:
        """``(out, in)`` int64: the weight matrix (a convolution's built from its kernel: large)."""
        if self.weight is not None:
            return self.weight
        return self.conv.geometry.dense(self.conv.kernel.astype(np.int64))

    @property
    def kind(self) -> str:
        return "dense" if self.conv is None else "conv"

    @property
    def fires(self) -> bool:
        return self.threshold is not None

    @property
    def in_size(self) -> int:
        if self.conv is not None:
            return int(np.prod(self.conv.geometry.in_shape))
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        if self.conv is not None:
            return int(np.prod(self.conv.geometry.out_shape))
        return int(self.weight.shape[0])

    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per output neuron: (sum of positive weights, sum of negative weights), int64. A
        convolution's: its kernel's over the taps inside the input (the convolution of ones)."""
        if self.conv is not None:
            kernel, ones = self.conv.kernel.astype(np.int64), np.ones((1, self.in_size), dtype=np.int64)
            geometry = self.conv.geometry
            return (convolve(ones, geometry, np.where(kernel > 0, kernel, 0))[0],
                    convolve(ones, geometry, np.where(kernel < 0, kernel, 0))[0])
        w = self.weight.astype(np.int64)
        return np.where(w > 0, w, 0).sum(axis=1), np.where(w < 0, w, 0).sum(axis=1)

    @property
    def weight_range(self) -> tuple[int, int]:
        """The smallest and largest integer weight (0 included)."""
        w = self.conv.kernel if self.conv is not None else self.weight
        return int(w.min(initial=0)), int(w.max(initial=0))

    @property
    def synapses(self) -> int:
        """Connections: ``in * out`` for a dense layer; a convolution's kernel taps that land inside its input."""
        if self.conv is not None:
            geometry = self.conv.geometry
            ones = np.ones((1, self.in_size), dtype=np.int64)
            return int(convolve(ones, geometry, np.ones(geometry.kernel_shape, dtype=np.int64)).sum())
        return self.in_size * self.out_size


@dataclass(frozen=True, eq=False)
class SpikingNetwork:
    """A converted network: input encoding, ``timesteps`` T, and a chain of layers (last = output)."""
    timesteps: int
    input: InputEncoding
    layers: tuple[DenseLayer, ...]
    metadata: dict = field(default_factory=dict)

    @property
    def classes(self) -> int:
        return self.layers[-1].out_size

    @property
    def max_code(self) -> int:
        return (1 << self.timesteps) - 1

    def describe(self) -> str:
        sizes = [str(self.input.size)] + [str(layer.out_size) for layer in self.layers]
        return "-".join(sizes)


def fingerprint(net: SpikingNetwork) -> str:
    """SHA-256 of everything the hardware and the input encoder depend on.

    Covers T, the input encoding and every integer weight, bias and threshold; not the float
    shadow or the free-form metadata. Board tops report it so the driver can refuse a board
    that runs another network.
    """
    h = hashlib.sha256()
    header = {"timesteps": net.timesteps, "input_shape": list(net.input.shape),
              "input_threshold": float(net.input.threshold).hex(),
              "layers": [[layer.kind, layer.in_size, layer.out_size, layer.weight_bits, layer.fires]
                         + ([layer.conv.geometry.as_dict()] if layer.conv is not None else [])
                         + ([{"max_pool": layer.pool.as_dict()}] if layer.pool is not None else [])
                         for layer in net.layers]}
    h.update(json.dumps(header, sort_keys=True).encode())
    for layer in net.layers:
        for array in stored_arrays(layer)[:3]:
            if array is not None:
                h.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


def stored_arrays(layer):
    """``(weight, bias, threshold, float weight, float bias)`` as stored: a convolution stores its
    kernel and one bias and threshold per channel, a dense layer its matrix and per-neuron arrays."""
    threshold = layer.threshold
    shadow = layer.shadow
    if layer.conv is None:
        return (layer.weight, layer.bias, threshold,
                None if shadow is None else shadow.weight, None if shadow is None else shadow.bias)
    geometry, step = layer.conv.geometry, layer.conv.geometry.pixels
    return (layer.conv.kernel, layer.bias[::step], None if threshold is None else threshold[::step],
            None if shadow is None else (shadow.kernel if shadow.kernel is not None else geometry.kernel_of(shadow.weight)),
            None if shadow is None else shadow.bias[::step])
