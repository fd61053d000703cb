"""Data-based threshold normalisation on a calibration set.

Each firing layer l gets a full-scale activation ``lambda_l`` (its threshold in ANN units):
the spike train of T steps encodes ``clip(round(a / lambda_l * 2**T), 0, 2**T - 1)``, so the
value it decodes to is that code times ``lambda_l / 2**T``. Modes:

- ``search`` (default, as SpikeConverter does): among the max, a ladder of percentiles and
  fractions of the max of the layer's calibration activations, the lambda with the
  smallest mean squared conversion error ``mean((a - decode(a))**2)``;
- ``max``: the largest activation (no clipping, coarsest steps);
- ``percentile``: the given percentile of the activations (robust to outliers).

The input image gets the same treatment (``lambda_0``), so it is coded as a T-bit spike train too.
A model whose activations are spike codes (``spikesmith finetune``) gives its lambdas: no search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError
from .ir import FloatNetwork
from ..contract.network import encode_codes

__all__ = ["THRESHOLD_MODES", "Calibration", "encode_codes", "decode", "conversion_error",
           "choose_threshold", "calibrate"]

THRESHOLD_MODES = ("search", "max", "percentile")

#: Percentiles tried by the ``search`` mode, besides fractions of the max.
SEARCH_PERCENTILES = (90.0, 95.0, 98.0, 99.0, 99.5, 99.7, 99.9, 99.95, 99.99, 99.999)
#: Fractions of the max tried by the ``search`` mode.
SEARCH_FRACTIONS = tuple(np.round(np.linspace(0.2, 1.0, 33), 4))
#: Most activation values one layer's search looks at (a seeded subsample beyond that).
SEARCH_SAMPLE = 2_000_000


def decode(a: np.ndarray, threshold: float, timesteps: int) -> np.ndarray:
    """The value the T-step spike train of activation ``a`` stands for."""
    return encode_codes(a, threshold, timesteps) * (threshold / (1 << timesteps))


def conversion_error(a: np.ndarray, threshold: float, timesteps: int) -> float:
    """Mean squared gap between activations and what their spike trains decode to."""
    return float(np.mean((a - decode(a, threshold, timesteps)) ** 2))


def choose_threshold(a: np.ndarray, timesteps: int, mode: str = "search",
                     percentile: float = 99.99) -> float:
    """Full-scale activation lambda for the activations ``a`` (any shape, >= 0)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    top = float(a.max(initial=0.0))
    if top <= 0.0:
        return 1.0  # a silent layer: any positive threshold codes it exactly
    if mode == "max":
        return top
    if mode == "percentile":
        value = float(np.percentile(a, percentile))
        return value if value > 0 else top
    if mode != "search":
        raise ConversionError(f"unknown threshold mode {mode!r}; choose one of {', '.join(THRESHOLD_MODES)}")
    if a.size > SEARCH_SAMPLE:
        a = np.random.default_rng(0).choice(a, SEARCH_SAMPLE, replace=False)
    candidates = {top}
    candidates.update(float(v) for v in np.percentile(a, SEARCH_PERCENTILES))
    candidates.update(top * float(f) for f in SEARCH_FRACTIONS)
    candidates = sorted(c for c in candidates if c > 0)
    errors = [conversion_error(a, c, timesteps) for c in candidates]
    return candidates[int(np.argmin(errors))]


@dataclass(frozen=True)
class Calibration:
    """Thresholds in ANN units: ``input_threshold`` for the image, one per firing layer."""
    input_threshold: float
    activation_thresholds: tuple[float, ...]
    images: int


def calibrate(network: FloatNetwork, images: np.ndarray, timesteps: int, mode: str = "search",
              percentile: float = 99.99) -> Calibration:
    """Choose lambda_0 (input) and lambda_l for every hidden layer from the ANN activations.

    A full scale the model gives (a spike code, ``spikesmith finetune``) is used as it is; a model
    that gives them all needs no images (``images`` may be None)."""
    firing = [layer for layer in network.layers if layer.relu]
    given = all(layer.full_scale for layer in firing)      # every layer's full scale from the model
    if images is None:
        if network.input_full_scale and given:
            return Calibration(network.input_full_scale, tuple(layer.full_scale for layer in firing), 0)
        raise ConversionError("the model's spike codes do not give every threshold (some activations are plain "
                              "ReLUs): give calibration data (--calib)")
    if len(images) == 0:
        raise ConversionError("the calibration set is empty; give at least one image")
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    if x.min() < 0:
        raise ConversionError(
            f"calibration images have negative values (min {x.min():.3g}); spike codes need "
            f"non-negative inputs, e.g. pixels scaled to [0, 1] without mean subtraction")
    input_threshold = network.input_full_scale or choose_threshold(x, timesteps, mode, percentile)
    if given:
        return Calibration(input_threshold, tuple(layer.full_scale for layer in firing), len(x))
    activations = network.forward(x)
    # A relay neuron (residual shortcut) keeps its source's threshold: only the layer's own neurons count.
    hidden = tuple(layer.full_scale or choose_threshold(a[:, layer.relay_neurons() < 0], timesteps, mode, percentile)
                   for a, layer in zip(activations, network.layers) if layer.relu)
    return Calibration(input_threshold, hidden, len(x))
