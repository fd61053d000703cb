"""The integer golden model: the reference every hardware output must match bit for bit.

Vectorised over a batch. It computes the closed forms of docs/semantics.md, which
tests/test_golden.py proves equal to the step-by-step scalar model (sim/reference.py):

- accumulation of T steps ``V <- 2 V + W s[t]`` ends at ``V = W @ c`` (c: input codes), then
  ``V <- V + B``;
- firing of T steps from ``clamp(V, 0, Theta)`` emits the code
  ``min(floor(2**T * clamp(V, 0, Theta) / Theta), 2**T - 1)``, MSB first;
- the output layer does not fire: its ``V`` are the integer logits; the class is the first argmax;
- a layer with a max pool reads the largest code of each window of its input codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract.network import DenseLayer, SpikingNetwork, check_images, convolve, max_pool

__all__ = ["LayerTrace", "GoldenResult", "accumulate", "fire", "run", "run_images", "spike_trains"]

_EXACT_FLOAT = 1 << 53  # integers below this add exactly in float64, in any order


@dataclass(frozen=True, eq=False)
class LayerTrace:
    """One layer's values for a batch: ``membrane`` after accumulation and bias (before the
    clamp), and the output ``codes`` of a firing layer (``None`` for the output layer)."""
    name: str
    membrane: np.ndarray  # (N, out) int64
    codes: np.ndarray | None  # (N, out) int64, T-bit

    def spikes(self, timesteps: int) -> np.ndarray:
        """``(N, T, out)`` bool spike trains; step 0 carries the MSB."""
        return spike_trains(self.codes, timesteps)


@dataclass(frozen=True, eq=False)
class GoldenResult:
    logits: np.ndarray       # (N, classes) int64
    predictions: np.ndarray  # (N,) int64
    input_codes: np.ndarray  # (N, inputs) int64
    trace: tuple[LayerTrace, ...] | None = None


def spike_trains(codes: np.ndarray, timesteps: int) -> np.ndarray:
    """``(N, n)`` T-bit codes -> ``(N, T, n)`` bools, MSB first (step t carries bit T-1-t)."""
    shifts = np.arange(timesteps - 1, -1, -1, dtype=np.int64)
    return ((codes[:, None, :] >> shifts[None, :, None]) & 1).astype(bool)


def accumulate(layer: DenseLayer, codes: np.ndarray, timesteps: int) -> np.ndarray:
    """``codes @ W.T + B`` exactly, int64. Uses float64 BLAS when every sum is below 2**53; a
    convolution convolves its kernel (never its dense matrix)."""
    if layer.conv is not None:
        kernel, geometry = layer.conv.kernel, layer.conv.geometry
        bound = int(np.abs(kernel).reshape(len(kernel), -1).sum(axis=1).max(initial=0)) * ((1 << timesteps) - 1)
        if bound < _EXACT_FLOAT:
            product = np.rint(convolve(codes.astype(np.float64), geometry, kernel.astype(np.float64)))
            return product.astype(np.int64) + layer.bias[None, :]
        return convolve(codes.astype(np.int64), geometry, kernel.astype(np.int64)) + layer.bias[None, :]
    weight = layer.weight
    bound = int(np.abs(weight).sum(axis=1).max(initial=0)) * ((1 << timesteps) - 1)
    if bound < _EXACT_FLOAT:
        product = np.rint(codes.astype(np.float64) @ weight.T.astype(np.float64)).astype(np.int64)
    else:
        product = codes.astype(np.int64) @ weight.T.astype(np.int64)
    return product + layer.bias[None, :]


def fire(membrane: np.ndarray, threshold: np.ndarray, timesteps: int) -> np.ndarray:
    """Output codes of the T firing steps of iLIF neurons with soft reset (closed form)."""
    clamped = np.clip(membrane, 0, threshold[None, :])
    return np.minimum((clamped << timesteps) // threshold[None, :], (1 << timesteps) - 1)


def run(net: SpikingNetwork, input_codes: np.ndarray, trace: bool = False) -> GoldenResult:
    """Run the network on ``(N, inputs)`` int64 input codes."""
    codes = np.asarray(input_codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != net.input.size:
        raise ValueError(f"input codes must be (N, {net.input.size}), not {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > net.max_code):
        raise ValueError(f"input codes must lie in [0, {net.max_code}]")
    traces = []
    x = codes
    membrane = np.zeros((len(codes), 0), dtype=np.int64)
    for layer in net.layers:
        if layer.pool is not None:
            x = max_pool(x, layer.pool)            # the largest code of each window
        membrane = accumulate(layer, x, net.timesteps)
        if layer.fires:
            x = fire(membrane, layer.threshold, net.timesteps)
            traces.append(LayerTrace(layer.name, membrane, x))
        else:
            traces.append(LayerTrace(layer.name, membrane, None))
    logits = membrane
    return GoldenResult(logits, np.argmax(logits, axis=1).astype(np.int64), codes,
                        tuple(traces) if trace else None)


def run_images(net: SpikingNetwork, images: np.ndarray, trace: bool = False) -> GoldenResult:
    """Encode float images (``(N, *input shape)``) and run them."""
    x = check_images(images, net.input.shape, "images")
    return run(net, net.input.encode(x, net.timesteps), trace)
