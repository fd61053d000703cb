"""The converted spiking network: integer weights, biases and thresholds (numpy only).

This is the contract between conversion (gen/), the golden model (sim/), the hardware
generator (hw/) and the host driver (host/). Its exact semantics are in
``docs/semantics.md``; the file format is in :mod:`spikeforge.gen.netfile`.

Units: a layer's membrane counts ``weight LSB x input code LSB``; input codes and output
codes are ``timesteps``-bit unsigned integers (the MSB-first spike trains).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError

__all__ = ["check_images", "encode_codes", "InputEncoding", "DenseLayer", "SpikingNetwork", "FloatShadow", "signed_width", "unsigned_width"]


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


@dataclass(frozen=True, eq=False)
class FloatShadow:
    """The float parameters a layer was quantised from, for the float SNN evaluation.

    ``activation_threshold`` is the layer's full-scale activation (lambda_l); ``None`` for the
    output layer, which does not fire.
    """
    weight: np.ndarray  # (out, in) float
    bias: np.ndarray    # (out,) float
    activation_threshold: float | None


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A fully connected iLIF layer (see docs/semantics.md).

    - ``weight``: ``(out, in)`` signed integers of ``weight_bits`` bits.
    - ``bias``: ``(out,)`` integers in membrane units, added once after the last accumulation step.
    - ``threshold``: ``(out,)`` integers >= 1 in membrane units, or ``None`` for the output layer.
    """
    name: str
    weight: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray | None
    weight_bits: int
    shadow: FloatShadow | None = None

    kind = "dense"

    @property
    def fires(self) -> bool:
        return self.threshold is not None

    @property
    def in_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        return int(self.weight.shape[0])

    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per output neuron: (sum of positive weights, sum of negative weights), int64."""
        w = self.weight.astype(np.int64)
        return np.where(w > 0, w, 0).sum(axis=1), np.where(w < 0, w, 0).sum(axis=1)

    @property
    def synapses(self) -> int:
        return int(self.weight.size)


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
