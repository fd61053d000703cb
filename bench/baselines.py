"""The conversion most SNN libraries use, for comparison: rate-coded IF neurons with soft reset.

Rueckauer et al. (2017) style, on the same float ANN spikesmith converts: data-based
normalisation (layer ``l``'s weights scaled by ``lambda_{l-1} / lambda_l``, biases by
``1 / lambda_l``, threshold 1, ``lambda`` the 99.99th percentile of the layer's ReLU
activations on the calibration set), the analog image as a constant input current every
step, integrate-and-fire with reset by subtraction, the output layer's membrane summed over
the ``T`` steps (no firing) and its argmax the class. Float64, no quantisation: the most
favourable setting for the baseline.
"""

from __future__ import annotations

import numpy as np


def normalised_layers(network, calib_images: np.ndarray, percentile: float = 99.99):
    """``[(W', b')]`` of ``network`` (a spikesmith FloatNetwork) after data-based normalisation."""
    x = np.asarray(calib_images, dtype=np.float64).reshape(len(calib_images), -1)
    activations = network.forward(x)
    layers, previous = [], 1.0
    for layer, a in zip(network.layers, activations):
        scale = max(float(np.percentile(a, percentile)), 1e-9) if layer.relu else 1.0
        layers.append((layer.matrix * previous / scale, layer.bias / scale, layer.relu))
        previous = scale if layer.relu else previous
    return layers


def rate_if_logits(layers, images: np.ndarray, timesteps: int, batch: int = 512) -> np.ndarray:
    """Summed output membrane after ``timesteps`` steps of rate-coded IF, soft reset: (N, classes)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    out = []
    for start in range(0, len(x), batch):
        current = x[start:start + batch]
        membranes = [np.zeros((len(current), w.shape[0])) for w, _, _ in layers]
        total = np.zeros((len(current), layers[-1][0].shape[0]))
        for _ in range(timesteps):
            spikes = current
            for k, (w, b, fires) in enumerate(layers):
                drive = spikes @ w.T + b
                if not fires:
                    total += drive
                    break
                membranes[k] += drive
                spikes = (membranes[k] >= 1.0).astype(np.float64)
                membranes[k] -= spikes
        out.append(total)
    return np.concatenate(out)


def rate_if_accuracy(network, calib_images, images, labels, timesteps: int) -> float:
    logits = rate_if_logits(normalised_layers(network, calib_images), images, timesteps)
    return float(np.mean(logits.argmax(axis=1) == labels))
