"""Worst-case value bounds and the register widths derived from them.

No input can overflow a width computed here (docs/semantics.md, "Bounds"):

- accumulation, after any prefix of the spike events of a step:
  ``V in [N_j * (2**T - 1), P_j * (2**T - 1)]`` where P_j / N_j are the sums of the
  positive / negative weights of neuron j;
- after the bias: ``[N_j * M + min(B_j, 0), P_j * M + max(B_j, 0)]`` with ``M = 2**T - 1``;
- firing: ``V in [0, Theta_j]`` after the clamp, ``2 V <= 2 Theta_j`` before the subtraction.

tests/test_bounds.py checks these bounds against every intermediate value of the scalar
reference model on random networks and inputs, and that they are reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .network import DenseLayer, SpikingNetwork, signed_width, unsigned_width

__all__ = ["LayerBounds", "layer_bounds", "network_bounds", "MAX_WIDTH"]

#: Widest register the golden model (int64) and the generator accept, in bits.
MAX_WIDTH = 48


@dataclass(frozen=True, eq=False)
class LayerBounds:
    """Ranges (inclusive, integers) and widths (bits) of one layer's values."""
    name: str
    neuron_lo: np.ndarray       # (out,) lowest membrane value of each neuron, any phase
    neuron_hi: np.ndarray       # (out,) highest membrane value of each neuron, any phase
    membrane_lo: int
    membrane_hi: int
    membrane_width: int         # signed bits of the membrane register
    weight_width: int           # signed bits of the stored weights
    bias_width: int             # signed bits of the stored biases
    threshold_width: int        # unsigned bits of the stored thresholds (0 for the output layer)
    logit_width: int            # signed bits of an output logit (0 for firing layers)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "membrane_lo": self.membrane_lo, "membrane_hi": self.membrane_hi,
            "membrane_width": self.membrane_width, "weight_width": self.weight_width,
            "bias_width": self.bias_width, "threshold_width": self.threshold_width,
            "logit_width": self.logit_width,
        }


def layer_bounds(layer: DenseLayer, timesteps: int) -> LayerBounds:
    max_code = (1 << timesteps) - 1
    pos, neg = layer.weight_sums()
    bias = layer.bias.astype(np.int64)
    # Python ints: the products can exceed int64 for absurd inputs, and we must say so, not wrap.
    lo = [int(n) * max_code + min(int(b), 0) for n, b in zip(neg, bias)]
    hi = [int(p) * max_code + max(int(b), 0) for p, b in zip(pos, bias)]
    if layer.fires:
        theta = [int(t) for t in layer.threshold]
        lo = [min(v, 0) for v in lo]
        hi = [max(v, 2 * t) for v, t in zip(hi, theta)]
        threshold_width = unsigned_width(max(theta))
    else:
        lo = [min(v, 0) for v in lo]
        hi = [max(v, 0) for v in hi]
        threshold_width = 0
    membrane_lo, membrane_hi = min(lo), max(hi)
    membrane_width = signed_width(membrane_lo, membrane_hi)
    weight_lo, weight_hi = layer.weight_range
    return LayerBounds(
        name=layer.name,
        neuron_lo=np.array(lo, dtype=object), neuron_hi=np.array(hi, dtype=object),
        membrane_lo=membrane_lo, membrane_hi=membrane_hi, membrane_width=membrane_width,
        weight_width=signed_width(weight_lo, weight_hi),
        bias_width=signed_width(int(bias.min(initial=0)), int(bias.max(initial=0))),
        threshold_width=threshold_width,
        logit_width=0 if layer.fires else membrane_width,
    )


def network_bounds(net: SpikingNetwork) -> list[LayerBounds]:
    return [layer_bounds(layer, net.timesteps) for layer in net.layers]
