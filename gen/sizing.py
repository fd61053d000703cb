"""Hardware sizing: from a converted network to the plan the Amaranth core is built from.

The plan holds every number the gateware needs (lanes, blocks, widths, packed ROM contents)
so that ``spikeforge.hw`` does no model arithmetic of its own, and the cycle model that the
report prints and the simulation tests check (docs/core.md, "Timing").

Organisation of one layer with ``n`` neurons on ``L`` lanes: neuron ``j`` sits in lane
``j % L`` of block ``j // L``; ``B = ceil(n / L)`` blocks. Padding lanes of the last block
have zero weights and bias and threshold 1, so they never spike.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from ..errors import SpikeforgeError
from .bounds import layer_bounds
from .netfile import fingerprint
from .network import SpikingNetwork, unsigned_width

__all__ = ["SizingError", "ceil_div", "InputPlan", "LayerPlan", "CorePlan", "plan_core", "choose_lanes",
           "DEFAULT_LANE_BUDGET", "pack_row"]

#: Total neuron lanes of all layers when the user gives neither ``lanes`` nor a budget.
DEFAULT_LANE_BUDGET = 64
#: Input codes per beat of the image stream when the user does not say.
DEFAULT_INPUT_LANES = 8


class SizingError(SpikeforgeError):
    """The requested lanes or budget cannot build this network."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_row(values, width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one row, element 0 in the LSBs."""
    mask = (1 << width) - 1
    row = 0
    for k, v in enumerate(values):
        row |= (int(v) & mask) << (k * width)
    return row


@dataclass(frozen=True)
class InputPlan:
    """The image buffer and the input spike encoder.

    An image arrives as ``words`` beats of ``lanes`` codes (``timesteps`` bits each, unsigned);
    codes beyond ``size`` in the last beat are ignored.
    """
    size: int
    lanes: int
    timesteps: int

    @property
    def words(self) -> int:
        return ceil_div(self.size, self.lanes)

    @property
    def addr_width(self) -> int:
        """Bits of an input spike event's address."""
        return unsigned_width(self.size - 1)

    @property
    def memory_bits(self) -> int:
        """Two image banks (ping-pong), bits."""
        return 2 * self.words * self.lanes * self.timesteps

    @property
    def load_cycles(self) -> int:
        """Cycles to take one image from the stream (one beat per cycle; the bank is handed over with the last)."""
        return self.words

    def beats(self, codes) -> list[int]:
        """One image's ``size`` input codes packed into ``words`` beats (code ``k`` of a beat at bit ``k*T``)."""
        codes = [int(c) for c in codes]
        if len(codes) != self.size:
            raise ValueError(f"an image has {self.size} input codes, not {len(codes)}")
        padded = codes + [0] * (self.words * self.lanes - self.size)
        return [pack_row(padded[w * self.lanes:(w + 1) * self.lanes], self.timesteps) for w in range(self.words)]

    def scan_cycles(self, events: int | None = None) -> int:
        """Upper bound on the cycles to emit one image's input spikes (``events``: all of them)."""
        events = self.size * self.timesteps if events is None else events
        return self.timesteps * (self.words + 2) + events


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """One layer engine: accumulate stage + fire stage (or readout for the output layer).

    Widths in bits. ROM rows are packed with :func:`pack_row`, lane 0 in the LSBs:
    ``weight_rows[b * inputs + i]`` holds ``W[b*L + lane][i]``; ``bias_rows[b]`` and
    ``threshold_rows[b]`` hold the block's biases and thresholds.
    """
    index: int
    name: str
    inputs: int
    neurons: int
    lanes: int
    timesteps: int
    fires: bool
    weight_width: int      # signed
    bias_width: int        # signed
    membrane_width: int    # signed, from gen/bounds.py
    threshold_width: int   # unsigned (0 for the output layer)
    weight_rows: tuple[int, ...] = field(repr=False)
    bias_rows: tuple[int, ...] = field(repr=False)
    threshold_rows: tuple[int, ...] = field(repr=False)
    weights_loaded: bool = False   # weights written at run time (SPRAM), not initialised by the bitstream

    @property
    def blocks(self) -> int:
        return ceil_div(self.neurons, self.lanes)

    @property
    def input_addr_width(self) -> int:
        """Bits of an input spike event's address (a neuron of the previous layer)."""
        return unsigned_width(self.inputs - 1)

    @property
    def output_addr_width(self) -> int:
        """Bits of this layer's own spike event addresses (= the next layer's ``input_addr_width``)."""
        return unsigned_width(self.neurons - 1)

    @property
    def memories(self) -> list[tuple[str, int, int]]:
        """Every memory of the engine as built, ``(kind, width, rows)``: at least two rows each
        (hw/engines.py: no zero-width addresses); the membranes are two banks."""
        rows, L = max(2, self.blocks), self.lanes
        shapes = [("weights", self.weight_row_width, self.weight_row_count),
                  ("biases", L * self.bias_width, rows)]
        shapes += [("membranes", L * self.membrane_width, rows)] * 2
        if self.fires:
            shapes.append(("thresholds", L * self.threshold_width, rows))
        return shapes

    @property
    def memory_bits(self) -> dict[str, int]:
        """Bits of each kind of memory as built (:attr:`memories`)."""
        bits: dict[str, int] = {}
        for kind, width, rows in self.memories:
            bits[kind] = bits.get(kind, 0) + width * rows
        return bits

    def accumulate_cycles(self, events: int | None = None) -> int:
        """Cycles of the accumulate stage for one image with ``events`` input spikes in all.

        Per image: 1 cycle to claim a free bank, T doubling passes of B cycles (the first
        clears the bank), B cycles per input spike event, 1 cycle per end-of-step marker,
        B cycles of bias, 1 cycle to hand the bank to the fire stage. ``events=None``: every
        input spikes at every step (the worst case, and always the case with skipping off).
        """
        events = self.inputs * self.timesteps if events is None else events
        B, T = self.blocks, self.timesteps
        return 1 + T * B + events * B + T + B + 1

    @property
    def weight_row_count(self) -> int:
        """Rows of the weight memory as built (at least two)."""
        return max(2, self.blocks * self.inputs)

    @property
    def weight_row_width(self) -> int:
        return self.lanes * self.weight_width

    def readout_cycles(self) -> int:
        """Cycles of the output layer's readout (claim, B block reads, one drain cycle)."""
        return self.blocks + 2


@dataclass(frozen=True, eq=False)
class CorePlan:
    """Everything the core generator needs, computed from one :class:`SpikingNetwork`."""
    timesteps: int
    input: InputPlan
    layers: tuple[LayerPlan, ...]
    skip_silent: bool          # emit events only for neurons that spiked (else every neuron, every step)
    fingerprint: str

    @property
    def classes(self) -> int:
        return self.layers[-1].neurons

    @property
    def logit_width(self) -> int:
        return self.layers[-1].membrane_width

    @property
    def label_width(self) -> int:
        return unsigned_width(self.classes - 1)

    def unpack_result(self, payload: int) -> tuple[int, list[int]]:
        """A result beat -> (label, logits): label in the LSBs, then the logits, two's complement."""
        label = payload & ((1 << self.label_width) - 1)
        payload >>= self.label_width
        width, logits = self.logit_width, []
        for _ in range(self.classes):
            value = payload & ((1 << width) - 1)
            logits.append(value - (1 << width) if value >> (width - 1) else value)
            payload >>= width
        return label, logits

    @property
    def loaded_layers(self) -> tuple[LayerPlan, ...]:
        """Layers whose weights are written at run time (docs/protocol.md, LOAD)."""
        return tuple(layer for layer in self.layers if layer.weights_loaded)

    @property
    def load_addr_width(self) -> int:
        """Bits of a weight row address in a LOAD (0 when no layer loads its weights)."""
        return max((unsigned_width(layer.weight_row_count - 1) for layer in self.loaded_layers), default=0)

    @property
    def load_data_width(self) -> int:
        """Bits of the widest loaded weight row (0 when no layer loads its weights)."""
        return max((layer.weight_row_width for layer in self.loaded_layers), default=0)

    @property
    def load_bytes(self) -> int:
        """Bytes of a LOAD's row field on the wire (docs/protocol.md); 0 when no layer loads its weights."""
        return (self.load_data_width + 7) // 8

    def weight_loads(self):
        """``(layer index, row address, packed row)`` of every run-time weight row, in load order."""
        for layer in self.loaded_layers:
            for address, row in enumerate(layer.weight_rows):
                yield layer.index, address, row

    def stage_cycles(self) -> dict[str, int]:
        """Worst-case cycles per image of every stage (each image's every input spiking)."""
        stages = {"input load": self.input.load_cycles}
        for layer in self.layers:
            stages[f"{layer.name} accumulate"] = layer.accumulate_cycles()
        stages["readout"] = self.layers[-1].readout_cycles()
        return stages

    @property
    def initiation_interval(self) -> int:
        """Cycles between images in steady state, worst case (= exact with skipping off)."""
        return max(self.stage_cycles().values())

    @property
    def bottleneck(self) -> str:
        stages = self.stage_cycles()
        return max(stages, key=stages.get)

    @property
    def latency_bound(self) -> int:
        """Upper bound on the cycles from an image's first beat to its result (empty pipeline)."""
        return (self.input.load_cycles + self.input.scan_cycles()
                + sum(layer.accumulate_cycles() for layer in self.layers)
                + self.layers[-1].readout_cycles())

    @property
    def total_lanes(self) -> int:
        return sum(layer.lanes for layer in self.layers)

    def memory_bits(self) -> int:
        return self.input.memory_bits + sum(sum(layer.memory_bits.values()) for layer in self.layers)

    def report(self) -> dict:
        """The generator's report (machine readable; ``spikeforge generate --json`` prints it)."""
        return {
            "fingerprint": self.fingerprint,
            "timesteps": self.timesteps,
            "skip_silent": self.skip_silent,
            "input": {"size": self.input.size, "lanes": self.input.lanes, "words": self.input.words,
                      "code_width": self.timesteps, "memory_bits": self.input.memory_bits},
            "layers": [{
                "name": layer.name, "inputs": layer.inputs, "neurons": layer.neurons, "fires": layer.fires,
                "lanes": layer.lanes, "blocks": layer.blocks,
                "weight_width": layer.weight_width, "bias_width": layer.bias_width,
                "membrane_width": layer.membrane_width, "threshold_width": layer.threshold_width,
                "memory_bits": layer.memory_bits,
                "cycles_per_step_worst": layer.blocks * (layer.inputs + 1) + 1,
                "accumulate_cycles_worst": layer.accumulate_cycles(),
            } for layer in self.layers],
            "classes": self.classes,
            "logit_width": self.logit_width,
            "total_lanes": self.total_lanes,
            "memory_bits": self.memory_bits(),
            "stage_cycles_worst": self.stage_cycles(),
            "initiation_interval": self.initiation_interval,
            "bottleneck": self.bottleneck,
            "latency_bound": self.latency_bound,
        }


def _lane_options(neurons: int) -> list[int]:
    """Lane counts worth having: the smallest L for each distinct block count ceil(n / L)."""
    return sorted({ceil_div(neurons, ceil_div(neurons, L)) for L in range(1, neurons + 1)})


def choose_lanes(net: SpikingNetwork, budget: int = DEFAULT_LANE_BUDGET) -> list[int]:
    """Lanes per layer that balance the worst-case accumulate cycles under a total-lane budget.

    Greedy: every layer starts at one lane; the slowest layer takes its next lane option
    (fewer blocks) while the budget allows. The slowest layer then sets the initiation interval.
    """
    if budget < len(net.layers):
        raise SizingError(f"a lane budget of {budget} is below one lane per layer ({len(net.layers)} layers)")
    options = [_lane_options(layer.out_size) for layer in net.layers]
    choice = [0] * len(net.layers)
    T = net.timesteps

    def cost(k: int, lanes: int) -> int:
        layer = net.layers[k]
        blocks = ceil_div(layer.out_size, lanes)
        return T * blocks * (layer.in_size + 1) + blocks

    while True:
        lanes = [options[k][choice[k]] for k in range(len(choice))]
        slowest = max(range(len(choice)), key=lambda k: cost(k, lanes[k]))
        # Only the slowest layer sets the interval: when it cannot grow, more lanes elsewhere buy nothing.
        if choice[slowest] + 1 == len(options[slowest]):
            return lanes
        if sum(lanes) + options[slowest][choice[slowest] + 1] - lanes[slowest] > budget:
            return lanes
        choice[slowest] += 1


def plan_core(net: SpikingNetwork, lanes: list[int] | None = None, budget: int = DEFAULT_LANE_BUDGET,
              input_lanes: int | None = None, skip_silent: bool = True,
              loaded_weights: Collection[int] = ()) -> CorePlan:
    """Size the core for ``net``: explicit ``lanes`` per layer, or chosen under ``budget``.

    ``loaded_weights``: indices of layers whose weights are written at run time (SPRAM).
    """
    if lanes is None:
        lanes = choose_lanes(net, budget)
    lanes = [int(x) for x in lanes]
    if len(lanes) != len(net.layers):
        raise SizingError(f"--lanes gives {len(lanes)} values but the network has {len(net.layers)} layers")
    for layer, count in zip(net.layers, lanes):
        if not 1 <= count <= layer.out_size:
            raise SizingError(f"layer {layer.name}: {count} lanes, but it has {layer.out_size} neurons "
                              f"(lanes must be 1..{layer.out_size})")
    for index in loaded_weights:
        if not 0 <= index < len(net.layers):
            raise SizingError(f"--spram names layer {index}; the network's layers are 0..{len(net.layers) - 1}")
    if input_lanes is None:
        input_lanes = min(DEFAULT_INPUT_LANES, net.input.size)
    if not 1 <= input_lanes <= net.input.size:
        raise SizingError(f"input lanes must be 1..{net.input.size}, not {input_lanes}")
    T = net.timesteps
    plans = []
    for index, (layer, L) in enumerate(zip(net.layers, lanes)):
        bounds = layer_bounds(layer, T)
        blocks = ceil_div(layer.out_size, L)
        padded = blocks * L
        weight = np.zeros((padded, layer.in_size), dtype=np.int64)
        weight[:layer.out_size] = layer.weight
        bias = np.zeros(padded, dtype=np.int64)
        bias[:layer.out_size] = layer.bias
        threshold = np.ones(padded, dtype=np.int64)
        if layer.fires:
            threshold[:layer.out_size] = layer.threshold
        weight_width = max(2, bounds.weight_width)
        bias_width = max(2, bounds.bias_width)
        weight_rows = tuple(pack_row(weight[b * L:(b + 1) * L, i], weight_width)
                            for b in range(blocks) for i in range(layer.in_size))
        bias_rows = tuple(pack_row(bias[b * L:(b + 1) * L], bias_width) for b in range(blocks))
        threshold_width = bounds.threshold_width
        threshold_rows = (tuple(pack_row(threshold[b * L:(b + 1) * L], threshold_width) for b in range(blocks))
                          if layer.fires else ())
        plans.append(LayerPlan(
            index=index, name=layer.name, inputs=layer.in_size, neurons=layer.out_size, lanes=L,
            timesteps=T, fires=layer.fires, weight_width=weight_width, bias_width=bias_width,
            membrane_width=bounds.membrane_width, threshold_width=threshold_width,
            weight_rows=weight_rows, bias_rows=bias_rows, threshold_rows=threshold_rows,
            weights_loaded=index in loaded_weights))
    return CorePlan(timesteps=T, input=InputPlan(net.input.size, input_lanes, T), layers=tuple(plans),
                    skip_silent=skip_silent, fingerprint=fingerprint(net))
