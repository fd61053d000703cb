"""A plain, step-by-step scalar transcription of docs/semantics.md.

Slow on purpose: Python ints, one neuron, one step and one spike event at a time (doubling
first, then the spike events of the step in input order, bias once at the phase boundary).
It records the extremes of every value a membrane register takes, in this order and in the
hardware's (each event adds its weight times ``2**(T-1-t)``, no doubling: the same sum,
docs/core.md), so tests can check the width bounds of :mod:`spikesmith.contract.bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..contract.network import PoolGeometry, SpikingNetwork

__all__ = ["ReferenceResult", "run_reference", "max_pool_spikes"]


@dataclass
class ReferenceResult:
    logits: list[int]
    prediction: int
    codes: list[list[int]]                  # output codes of each firing layer
    spikes: list[list[list[int]]]           # [layer][step][neuron] 0/1 spikes of firing layers
    extremes: list[tuple[int, int]] = field(default_factory=list)  # (min, max) membrane value per layer


def max_pool_spikes(spikes: list[list[int]], geometry: PoolGeometry) -> list[list[int]]:
    """Max pooling of MSB-first spike trains, step by step: the race of docs/semantics.md.

    ``spikes[t][i]``: input ``i``'s spike at step ``t``. Every window starts with all its
    inputs in the race (padding taps are never in it). At each step the output spikes if an
    input still in the race spikes; if one does, those that stayed silent drop out.
    """
    windows = [[int(i) for i in row if i < geometry.in_size] for row in geometry.windows()]
    racing = [list(window) for window in windows]
    out = []
    for step in spikes:
        row = []
        for k, racers in enumerate(racing):
            spiking = [i for i in racers if step[i]]
            row.append(1 if spiking else 0)
            if spiking:
                racing[k] = spiking
        out.append(row)
    return out


def run_reference(net: SpikingNetwork, input_codes: list[int]) -> ReferenceResult:
    T = net.timesteps
    # Step t of the input spike train carries bit T-1-t of each input code (MSB first).
    spikes_in = [[(int(c) >> (T - 1 - t)) & 1 for c in input_codes] for t in range(T)]
    all_codes, all_spikes, extremes = [], [], []
    logits: list[int] = []
    for layer in net.layers:
        if layer.pool is not None:
            spikes_in = max_pool_spikes(spikes_in, layer.pool)
        weight = [[int(w) for w in row] for row in layer.matrix]
        bias = [int(b) for b in layer.bias]
        lo = hi = 0
        membrane = [0] * layer.out_size
        shifted = [0] * layer.out_size          # the hardware's partial sums
        # Accumulation phase: T steps of V <- 2V + sum of the weights of the inputs that spiked.
        for t in range(T):
            for j in range(layer.out_size):
                v = 2 * membrane[j]
                lo, hi = min(lo, v), max(hi, v)
                for i, s in enumerate(spikes_in[t]):
                    if s:
                        v += weight[j][i]
                        shifted[j] += weight[j][i] << (T - 1 - t)
                        lo, hi = min(lo, v, shifted[j]), max(hi, v, shifted[j])
                membrane[j] = v
        assert shifted == membrane, "adding W * 2**(T-1-t) per event leaves the doubled sum"
        # Phase boundary: the bias enters once.
        for j in range(layer.out_size):
            membrane[j] += bias[j]
            lo, hi = min(lo, membrane[j]), max(hi, membrane[j])
        if not layer.fires:
            logits = membrane
            extremes.append((lo, hi))
            break
        # Firing phase: clamp to [0, theta], then T steps of V <- 2V; spike and subtract theta if V >= theta.
        theta = [int(x) for x in layer.threshold]
        membrane = [min(max(v, 0), th) for v, th in zip(membrane, theta)]
        out_spikes = []
        for t in range(T):
            step = []
            for j in range(layer.out_size):
                v = 2 * membrane[j]
                lo, hi = min(lo, v), max(hi, v)
                if v >= theta[j]:
                    v -= theta[j]
                    step.append(1)
                else:
                    step.append(0)
                membrane[j] = v
            out_spikes.append(step)
        codes = [sum(out_spikes[t][j] << (T - 1 - t) for t in range(T)) for j in range(layer.out_size)]
        all_codes.append(codes)
        all_spikes.append(out_spikes)
        extremes.append((lo, hi))
        spikes_in = out_spikes
    prediction = max(range(len(logits)), key=lambda k: (logits[k], -k))
    return ReferenceResult(logits, prediction, all_codes, all_spikes, extremes)
