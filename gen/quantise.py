"""Quantisation: fold the calibrated scales into integer weights, biases and thresholds.

For layer l with input full scale ``lambda_in`` (lambda_0 for the first layer) and weight
scale ``s_j`` of output neuron j (``weight = s_j * weight_int``), one membrane unit is worth
``u_j = lambda_in * s_j / 2**T`` in ANN units, because the accumulation phase computes
``V = weight_int @ codes`` with codes in units of ``lambda_in / 2**T``. Then

- ``threshold_j = max(1, round(lambda_l / u_j))``,
- ``bias_j = round(b_j / u_j + threshold_j / 2**(T+1))`` for a firing layer: the half-step
  offset turns the floor of the firing phase into round-to-nearest, at no hardware cost;
- ``s_j = max(max_i |W_ji| / (2**(bits-1) - 1), s_layer / 16)`` with per-channel scales (the
  floor keeps near-dead neurons from needing huge thresholds);
- ``bias_j = round(b_j / u)`` for the output layer, which uses one scale for all its neurons
  so that its integer logits compare in the same units.

Rounding is numpy's ``rint`` (half to even) in float64; weights saturate to
``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (symmetric, so negation never overflows).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConversionError
from ..contract.bounds import MAX_WIDTH, layer_bounds
from .calibrate import Calibration
from .ir import FloatNetwork
from ..contract.network import ConvSpec, DenseLayer, FloatShadow, InputEncoding, SpikingNetwork

__all__ = ["WEIGHT_SCALES", "quantise", "weight_scales", "pooled_full_scales"]

WEIGHT_SCALES = ("channel", "layer")

#: A per-channel weight scale is at least this fraction of the layer's scale. A neuron whose
#: weights are all tiny (e.g. decayed to 1e-18) would otherwise get an absurd threshold and bias;
#: with the floor its weights round to zero and its thresholds stay within 16x of the layer's.
MIN_CHANNEL_SCALE_RATIO = 1 / 16


def weight_scales(weight: np.ndarray, bits: int, per_channel: bool, own: np.ndarray | None = None) -> np.ndarray:
    """Per output row, the float value of one integer weight step. ``own``: the rows that set the layer's
    scale (relay rows, whose integer weight is 1 whatever the scale, are left out)."""
    qmax = (1 << (bits - 1)) - 1
    layer_max = float(np.abs(weight if own is None else weight[own]).max(initial=0.0))
    layer_scale = layer_max / qmax if layer_max > 0 else 1.0
    if not per_channel:
        return np.full(weight.shape[0], layer_scale)
    row_max = np.abs(weight).max(axis=1, initial=0.0)
    return np.maximum(row_max / qmax, layer_scale * MIN_CHANNEL_SCALE_RATIO)


def pooled_full_scales(lambda_in: np.ndarray, pool) -> np.ndarray:
    """Per-neuron full scales after a max pool: a window lies in one channel, whose neurons share one."""
    per_channel = lambda_in.reshape(pool.in_shape[0], -1)
    assert np.all(per_channel == per_channel[:, :1]), "full scales are per channel before a max pool"
    return np.repeat(per_channel[:, 0], pool.out_size // pool.in_shape[0])


def _quantise_layer(float_layer, lambda_in: np.ndarray, lambda_layer: float | None, timesteps: int,
                    weight_bits: int, weight_scale: str, keep_convolutions: bool) -> tuple[DenseLayer, np.ndarray]:
    """One integer layer, and the full scale of each of its neurons (relays keep their source's).

    Inputs may have different full scales (relay channels of a residual block): the weights are
    scaled by ``lambda_i / lambda_ref`` per input before quantisation, so that one membrane unit
    of neuron j is ``lambda_ref * s_j / 2**T`` for every input (with one full scale this is exactly
    the plain scheme of the module docstring)."""
    qmax, steps, fires = (1 << (weight_bits - 1)) - 1, float(1 << timesteps), float_layer.relu
    b = float_layer.bias
    reference = float(lambda_in.max())
    column = lambda_in / reference
    per_channel = fires and weight_scale == "channel"
    relays = float_layer.relay_neurons()
    conv = None
    if fires and keep_convolutions and float_layer.geometry is not None:
        geometry, kernel = float_layer.geometry, float_layer.kernel
        channel_column = column.reshape(geometry.in_shape[0], -1)[:, 0]
        scaled = kernel * channel_column[None, :, None, None]
        own = None if float_layer.relays is None else np.asarray(float_layer.relays) < 0
        channel_scale = weight_scales(scaled.reshape(len(kernel), -1), weight_bits, per_channel, own)
        kernel = np.clip(np.rint(scaled / channel_scale[:, None, None, None]), -qmax, qmax).astype(np.int64)
        if float_layer.relays is not None:       # a relay channel passes its source on: weight 1 at the centre
            relay_channels = np.asarray(float_layer.relays) >= 0
            kernel[relay_channels] = np.rint(float_layer.kernel[relay_channels]).astype(np.int64)
        conv = ConvSpec(geometry, kernel)
        weight = None                            # the kernel is the layer (DenseLayer.matrix builds the matrix)
        scale = np.repeat(channel_scale, geometry.pixels)
    else:
        w = float_layer.matrix
        scaled = w * column[None, :]
        scale = weight_scales(scaled, weight_bits, per_channel, None if float_layer.relays is None else relays < 0)
        weight = np.clip(np.rint(scaled / scale[:, None]), -qmax, qmax).astype(np.int64)
        weight[relays >= 0] = np.rint(w[relays >= 0]).astype(np.int64)
    unit = reference * scale / steps  # ANN value of one membrane unit, per neuron
    if fires:
        threshold = np.maximum(1, np.rint(lambda_layer / unit)).astype(np.int64)
        bias = np.rint(b / unit + threshold / (2.0 * steps))
        # A relay: weight 1, threshold 2**T, bias 0 -> its spike train is its source's code (docs/semantics.md).
        threshold[relays >= 0], bias[relays >= 0] = 1 << timesteps, 0
        lambda_out = np.where(relays >= 0, lambda_in[np.maximum(relays, 0)], lambda_layer)
    else:
        threshold, lambda_out = None, None
        bias = np.rint(b / unit)
    if not np.all(np.abs(bias) < 2.0 ** (MAX_WIDTH - 2)):
        largest = np.abs(float_layer.kernel if conv is not None else w).max()
        raise ConversionError(
            f"layer '{float_layer.name}': a bias is {np.abs(b).max():.3g} while the weights are at most "
            f"{largest:.3g}; its integer form would need more than {MAX_WIDTH} bits")
    shadow_lambda = lambda_layer if float_layer.relays is None or lambda_out is None else lambda_out
    shadow = (FloatShadow(None, b.astype(np.float64), shadow_lambda, float_layer.kernel.astype(np.float64))
              if conv is not None else FloatShadow(w.astype(np.float64), b.astype(np.float64), shadow_lambda))
    layer = DenseLayer(
        name=float_layer.name, weight=weight, bias=bias.astype(np.int64), threshold=threshold,
        weight_bits=weight_bits, shadow=shadow, conv=conv, pool=float_layer.pool,
    )
    bounds = layer_bounds(layer, timesteps)
    if bounds.membrane_width > MAX_WIDTH:
        raise ConversionError(
            f"layer '{float_layer.name}' needs a {bounds.membrane_width}-bit membrane, over the "
            f"{MAX_WIDTH}-bit limit; use fewer weight bits or timesteps")
    return layer, lambda_out


def quantise(network: FloatNetwork, calibration: Calibration, timesteps: int, weight_bits: int = 8,
             weight_scale: str = "channel", metadata: dict | None = None,
             keep_convolutions: bool = True) -> SpikingNetwork:
    """Integer layers from the calibrated float network (see the module docstring).

    ``keep_convolutions``: a firing layer that is a convolution stays one (a :class:`ConvSpec`
    with one weight scale per output channel, so every pixel shares the integer kernel);
    otherwise it is a dense layer with one scale per output neuron.
    """
    if not 2 <= weight_bits <= 16:
        raise ConversionError(f"weight bits must be between 2 and 16, not {weight_bits}")
    if not 1 <= timesteps <= 16:
        raise ConversionError(f"timesteps must be between 1 and 16, not {timesteps}")
    if weight_scale not in WEIGHT_SCALES:
        raise ConversionError(f"unknown weight scale {weight_scale!r}; choose one of {', '.join(WEIGHT_SCALES)}")
    layers = []
    thresholds = iter(calibration.activation_thresholds)
    lambda_in = np.full(network.input_size, float(calibration.input_threshold))   # per input neuron
    for float_layer in network.layers:
        if float_layer.pool is not None:
            lambda_in = pooled_full_scales(lambda_in, float_layer.pool)
        layer, lambda_out = _quantise_layer(float_layer, lambda_in, next(thresholds) if float_layer.relu else None,
                                            timesteps, weight_bits, weight_scale, keep_convolutions)
        layers.append(layer)
        if float_layer.relu:
            lambda_in = lambda_out
    return SpikingNetwork(
        timesteps=timesteps,
        input=InputEncoding(tuple(network.input_shape), float(calibration.input_threshold)),
        layers=tuple(layers),
        metadata=dict(metadata or {}),
    )
