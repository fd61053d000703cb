"""The hardware plan: every number the gateware needs, as plain data (the contract between
``spikesmith.gen.sizing``, which makes a plan, and ``spikesmith.hw``, ``spikesmith.sim`` and
``spikesmith.host``, which read one).

The plan holds lanes, blocks, widths and packed ROM contents, so that ``spikesmith.hw`` does
no model arithmetic of its own, and the cycle model that the report prints and the
simulation tests check (docs/core.md, "Timing").

Organisation of one layer with ``n`` neurons on ``L`` lanes: neuron ``j`` sits in lane
``j % L`` of block ``j // L``; ``B = ceil(n / L)`` blocks. Padding lanes of the last block
have zero weights and bias and threshold 1, so they never spike.

A convolution layer (``LayerPlan.conv``) puts its output channels on the lanes instead
(``L`` divides ``C_out``, ``B = C_out / L``): membrane row ``b * P + y * W_out + x`` holds
channels ``b*L .. b*L+L-1`` of output pixel ``(y, x)`` (``P = H_out * W_out``), and only the
kernel is stored (docs/core.md, "Convolution engine").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd

import numpy as np

from .network import ConvGeometry, PoolGeometry, unsigned_width
from .protocol import LOAD_HEAD, unpack_result
from .packing import TABLE_ROWS, ceil_div, pack_row, rom_in_logic
from .streaming import StreamConvPlan, StreamPoolPlan, chunk_notation

__all__ = ["ROW_QUEUE_DEPTH", "STAGED_ROW_LANES", "row_is_staged", "row_queue_depth", "HOP_CYCLES", "rom_in_logic", "ceil_div", "pack_row", "InputPlan", "PoolPlan", "LayerPlan", "CorePlan", "BoardParams"]


#: Rows a row reader (the input encoder's, a fire stage's) may hold ready for its scanner: its read
#: latency (at most 3 cycles) and two, so that it reads a row every cycle while the scanner takes one;
#: one more for a row wider than :data:`STAGED_ROW_LANES`, whose entry waits a cycle in a register
#: (hw/events.py, ``RowReader``).
ROW_QUEUE_DEPTH = 5
#: Rows of more lanes than this are counted in two registered halves on their way into the queue.
STAGED_ROW_LANES = 8
#: Bits of a queued row's event count (0, 1 or 2 and more) beside its spike mask (hw/events.py, ``sends``).
QUEUED_COUNT_BITS = 2

#: Cycles an image's first event spends between two stages beyond their own worst cases: the
#: producer's row read and datapath (at most 3), its queue entry's register (wide rows) and the
#: stream register between the two.
HOP_CYCLES = 5


def row_is_staged(lanes: int) -> bool:
    """A row of ``lanes`` lanes waits a cycle in a register on its way into its queue."""
    return lanes > STAGED_ROW_LANES


def row_queue_depth(lanes: int) -> int:
    """Entries of the row queue of a scanner over rows of ``lanes`` lanes."""
    return ROW_QUEUE_DEPTH + row_is_staged(lanes)


@dataclass(frozen=True)
class InputPlan:
    """The image buffer and the input spike encoder.

    An image arrives as ``words`` beats of ``lanes`` codes (``timesteps`` bits each, unsigned);
    codes beyond ``size`` in the last beat are ignored.
    """
    size: int
    lanes: int
    timesteps: int
    pixels: tuple[int, int, int] | None = None   # (C, H, W): events carry coordinates (a convolution reads them)
    pixel_major: bool = False    # beats carry the codes in (H, W, C) order: a streaming layer reads the image

    def order(self) -> np.ndarray:
        """The image's code index (row-major (C, H, W)) of each position of the beats: itself, or (H, W, C)."""
        if not self.pixel_major:
            return np.arange(self.size)
        c, h, w = self.pixels
        return np.arange(self.size).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)

    @property
    def words(self) -> int:
        return ceil_div(self.size, self.lanes)

    @property
    def addr_width(self) -> int:
        """Bits of an input spike event's address."""
        return unsigned_width(self.size - 1)

    @property
    def memory_bits(self) -> int:
        """Two image banks (ping-pong) and the queue of spike masks, bits."""
        return (2 * self.words * self.lanes * self.timesteps
                + row_queue_depth(self.lanes) * (self.lanes + QUEUED_COUNT_BITS))

    @property
    def load_cycles(self) -> int:
        """Cycles to take one image from the stream (one beat per cycle; the bank is handed over with the last)."""
        return self.words

    def beats(self, codes) -> list[int]:
        """One image's ``size`` input codes packed into ``words`` beats (code ``k`` of a beat at bit ``k*T``)."""
        codes = [int(c) for c in codes]
        if len(codes) != self.size:
            raise ValueError(f"an image has {self.size} input codes, not {len(codes)}")
        codes = [codes[k] for k in self.order()]
        padded = codes + [0] * (self.words * self.lanes - self.size)
        return [pack_row(padded[w * self.lanes:(w + 1) * self.lanes], self.timesteps) for w in range(self.words)]

    def scan_cycles(self, events: int | None = None) -> int:
        """Upper bound on the cycles to emit one image's input spikes (``events``: all of them)."""
        events = self.size * self.timesteps if events is None else events
        return self.timesteps * (self.words + 2) + events


@dataclass(frozen=True)
class PoolPlan:
    """The max-pooling stage between a convolution engine and the layer that reads its pool.

    The producer's fire stage sends one *row beat* per membrane row per step, in its row order
    ``(block, y, x)``: the spike bits of the row's ``lanes`` channels and their earlier bits of
    this image. The stage visits every window the row's pixel lies in and keeps one ``T``-bit
    spike prefix per pooled output, ``lanes`` per row: pooled row ``b * P + oy * W_out + ox``
    (``P = H_out * W_out``) holds channels ``b*L .. b*L+L-1`` of pooled pixel ``(oy, ox)``
    (docs/core.md, "Max pooling").
    """
    geometry: PoolGeometry
    lanes: int
    timesteps: int
    emits_pixels: bool        # the reader is a convolution: events carry (channel, y, x)

    @property
    def blocks(self) -> int:
        return self.geometry.in_shape[0] // self.lanes

    @property
    def pixels(self) -> int:
        """Pooled pixels per channel, ``H_out * W_out``."""
        return self.geometry.out_shape[1] * self.geometry.out_shape[2]

    @property
    def rows(self) -> int:
        """Rows of the prefix memory: ``blocks * H_out * W_out``."""
        return self.blocks * self.pixels

    def window_step(self, axis: int) -> int:
        """How far apart (in pooled coordinates) the windows one input position lies in are:
        ``dilation / gcd(stride, dilation)``."""
        s, d = self.geometry.stride[axis], self.geometry.dilation[axis]
        return d // gcd(s, d)

    def visits(self, axis: int) -> list[tuple[int, int, int]]:
        """Per input row (``axis`` 0) or column (1): ``(first window, count, first-tap bits)``.

        The windows that read the position are ``first + j * window_step`` for ``j < count``;
        bit ``j`` of the third entry is set when the position is that window's first real tap
        (the one the row order reaches first in every step)."""
        g = self.geometry
        size, k, s = g.in_shape[1 + axis], g.kernel[axis], g.stride[axis]
        p, d, outputs = g.padding[axis], g.dilation[axis], g.out_shape[1 + axis]
        taps = {o: [o * s - p + j * d for j in range(k) if 0 <= o * s - p + j * d < size] for o in range(outputs)}
        table = []
        for position in range(size):
            windows = [o for o in range(outputs) if position in taps[o]]
            step = self.window_step(axis)
            assert windows == list(range(windows[0], windows[0] + step * len(windows), step)) if windows else True
            first = sum(1 << j for j, o in enumerate(windows) if taps[o][0] == position)
            table.append((windows[0] if windows else 0, len(windows), first))
        return table

    def beat_cycles(self) -> list[int]:
        """Cycles of one row beat per producer pixel (row-major ``(H, W)``): one per window visit, at least one."""
        rows, cols = self.visits(0), self.visits(1)
        return [max(1, r[1] * c[1]) for r in rows for c in cols]

    def step_cycles(self) -> int:
        """Worst-case cycles of one step: every row beat's visits, one cycle per pooled output
        that spikes (all of them, at most once each), and three around the step's end (its
        marker, the producer's first row of the next step, and that row's first read)."""
        return self.blocks * sum(self.beat_cycles()) + self.geometry.out_size + 3

    def cycles(self) -> int:
        """Worst-case cycles of one image (``T`` steps)."""
        return self.timesteps * self.step_cycles()

    @property
    def output_addr_width(self) -> int:
        """Bits of a pooled event's address (a dense reader's input)."""
        return unsigned_width(self.geometry.out_size - 1)


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
    conv: ConvGeometry | None = None     # a convolution engine: its geometry (lanes = output channels)
    emits_pixels: bool = False           # spike events carry (channel, y, x): the next layer is a convolution
    emits_rows: bool = False             # one row beat per membrane row and step: the next layer reads a max pool
    pool: PoolPlan | None = None         # this layer reads the max pool of its input, through a pooling stage

    @property
    def blocks(self) -> int:
        """Lane groups: of neurons (dense) or of output channels (convolution)."""
        if self.conv is not None:
            return ceil_div(self.conv.out_channels, self.lanes)
        return ceil_div(self.neurons, self.lanes)

    @property
    def rows(self) -> int:
        """Membrane rows: ``blocks`` (dense), ``blocks * H_out * W_out`` (convolution)."""
        return self.blocks * (self.conv.pixels if self.conv is not None else 1)

    def taps(self, axis: int) -> list[tuple[int, int, int]]:
        """Per input row (``axis`` 0) or column (1) of a convolution: ``(membrane offset, weight
        offset, count)`` of its first tap and how many output rows / columns it reaches.

        Offsets in rows of the membrane and weight memories: the first tap ``(k, o)``
        (:meth:`ConvGeometry.taps`) is ``o * W_out`` / ``k * kw * C_in`` on rows and ``o`` /
        ``k * C_in`` on columns; each further tap steps by :meth:`tap_steps`.
        """
        g = self.conv
        c_in, kw, wo = g.in_shape[0], g.kernel[1], g.out_shape[2]
        m_unit, w_unit = (wo, kw * c_in) if axis == 0 else (1, c_in)
        table = []
        for position in range(g.in_shape[1 + axis]):
            taps = g.taps(axis, position)
            k, o = taps[0] if taps else (0, 0)
            table.append((o * m_unit, k * w_unit, len(taps)))
        return table

    def tap_steps(self, axis: int) -> tuple[int, int]:
        """``(membrane step, weight step)`` between consecutive taps on ``axis``: the output
        coordinate falls by one, the kernel offset rises by the stride."""
        g = self.conv
        c_in, kw, wo = g.in_shape[0], g.kernel[1], g.out_shape[2]
        return (wo, g.stride[0] * kw * c_in) if axis == 0 else (1, g.stride[1] * c_in)

    def event_cycles(self) -> list[int]:
        """Accumulate cycles of one input spike event, per input (row-major (C, H, W) for a convolution):
        ``B`` per tap of the kernel it reaches (dense: one tap), 1 if it reaches none."""
        if self.conv is None:
            return [self.blocks] * self.inputs
        rows, cols = self.taps(0), self.taps(1)
        per_pixel = [max(1, self.blocks * r[2] * c[2]) for r in rows for c in cols]
        return per_pixel * self.conv.in_shape[0]

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
        (hw/engines.py: no zero-width addresses); the membranes are two banks; biases and thresholds
        only in tables deeper than ``TABLE_ROWS`` (shallower ones are logic); constant weights only
        where :func:`rom_in_logic` says no."""
        blocks, rows, L = max(2, self.blocks), max(2, self.rows), self.lanes
        shapes = []
        if self.weights_loaded or not rom_in_logic(self.weight_row_width, self.weight_row_count):
            shapes.append(("weights", self.weight_row_width, self.weight_row_count))   # (else logic, as a table)
        if len(self.bias_rows) > TABLE_ROWS:             # (else logic: hw/rows.py, row_table)
            shapes.append(("biases", L * self.bias_width, blocks))
        shapes += [("membranes", L * self.membrane_width, rows)] * 2
        if self.fires and len(self.threshold_rows) > TABLE_ROWS:
            shapes.append(("thresholds", L * self.threshold_width, blocks))
        if self.fires:
            # The row queue: spike masks, or whole row beats (one-bit mask, spikes, history), each with its
            # event count up to two (QUEUED_COUNT_BITS).
            entry = QUEUED_COUNT_BITS + (1 + L + L * self.timesteps if self.emits_rows else L)
            shapes.append(("row queue", entry, row_queue_depth(1 if self.emits_rows else L)))
        if self.emits_rows:
            shapes.append(("spike history", L * self.timesteps, rows))
        if self.pool is not None:
            shapes.append(("pool prefixes", self.pool.lanes * self.timesteps, max(2, self.pool.rows)))
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

        Per image: 1 cycle to claim a free bank, a pass over the ``rows`` that clears it (no
        step doubles the bank: an event's weights are shifted by ``T-1-t``), :meth:`event_cycles`
        per input spike event (dense: B), 1 cycle
        per end-of-step marker, ``rows`` cycles of bias, 3 cycles for the last bias row to pass
        the stage's pipeline (its write is in the cycle the bank is handed to the fire stage). ``events=None``: every input spikes at every step (the worst case, and always
        the case with skipping off); a number of events of a convolution costs the dearest input's.
        """
        R, T = self.rows, self.timesteps
        if events is None:
            event_cost = T * sum(self.event_cycles())
        else:
            event_cost = events * max(self.event_cycles())
        return 1 + R + event_cost + T + R + 3

    @property
    def weight_row_count(self) -> int:
        """Rows of the weight memory as built (at least two)."""
        if self.conv is not None:
            return max(2, self.blocks * self.conv.window_size)
        return max(2, self.blocks * self.inputs)

    @property
    def weight_row_width(self) -> int:
        return self.lanes * self.weight_width

    def readout_cycles(self) -> int:
        """Cycles of the output layer's readout (claim, B block reads, two of read latency, two cycles a
        logit for the argmax, one drain cycle)."""
        return self.blocks + 3 + 2 * self.blocks * self.lanes


@dataclass(frozen=True, eq=False)
class CorePlan:
    """Everything the core generator needs, computed from one :class:`SpikingNetwork`."""
    timesteps: int
    input: InputPlan
    layers: tuple[LayerPlan, ...]
    skip_silent: bool          # emit events only for neurons that spiked (else every neuron, every step)
    fingerprint: str
    stream: tuple[StreamConvPlan | StreamPoolPlan, ...] = ()   # the streaming layers the image goes through first
    reencoder: InputPlan | None = None      # the stream's last codes as spike events for ``layers`` (with ``stream``)

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
        """A result beat of the core -> (label, logits) (:func:`~.protocol.unpack_result`)."""
        return unpack_result(payload, self.label_width, self.logit_width, self.classes)

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
        for stage in self.stream:
            stages[f"{stage.name} stream"] = stage.image_cycles()
        if self.reencoder is not None:
            stages["re-encoder load"] = self.reencoder.load_cycles
        for layer in self.layers:
            if layer.pool is not None:
                # The pooling stage and the accumulate stage it feeds stall each other: their sum bounds both.
                stages[f"{layer.name} pool + accumulate"] = layer.pool.cycles() + layer.accumulate_cycles()
            else:
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
        """Upper bound on the cycles from an image's first beat to its result (empty pipeline):
        every stage's worst case, and per hop between stages the stream register's cycle and the
        producer's read latency (:data:`HOP_CYCLES`), and into a convolution one more: its tap decoder's register."""
        hops = len(self.layers) + sum(layer.pool is not None for layer in self.layers) + len(self.stream)
        tap_decoders = sum(layer.conv is not None for layer in self.layers)
        encoder = self.reencoder or self.input
        stream = sum(stage.image_cycles() + stage.drain_cycles for stage in self.stream)
        stream += self.input.load_cycles if self.stream else 0
        return (stream + encoder.load_cycles + encoder.scan_cycles() + HOP_CYCLES * hops + tap_decoders
                + sum(layer.accumulate_cycles() + (layer.pool.cycles() if layer.pool else 0) for layer in self.layers)
                + self.layers[-1].readout_cycles())

    @property
    def lane_counts(self) -> tuple[int, ...]:
        """Lanes of every layer, in network order: a streaming convolution's output channels a cycle, then the
        other layers' lanes (a streaming max pool has none of its own)."""
        return tuple(stage.lanes for stage in self.stream if isinstance(stage, StreamConvPlan)) + tuple(
            layer.lanes for layer in self.layers)

    @property
    def loaded_flags(self) -> tuple[bool, ...]:
        """Whether each layer (network order, as :attr:`lane_counts`) keeps its weights in RAM written at run time."""
        streamed = sum(isinstance(stage, StreamConvPlan) for stage in self.stream)
        return (False,) * streamed + tuple(layer.weights_loaded for layer in self.layers)

    @property
    def chunk_counts(self) -> tuple[str, ...]:
        """Taps a cycle of every streaming convolution as ``--chunks`` takes them: ``K``, or ``KxS`` at ``S``
        steps a cycle."""
        return tuple(chunk_notation(stage.chunk, stage.op_steps) for stage in self.stream
                     if isinstance(stage, StreamConvPlan))

    @property
    def total_lanes(self) -> int:
        return sum(layer.lanes for layer in self.layers) + sum(stage.lanes for stage in self.stream)

    def memory_bits(self) -> int:
        encoders = self.input.memory_bits if not self.stream else self.reencoder.memory_bits
        stream = sum(width * rows for stage in self.stream for _, width, rows in stage.memories)
        return encoders + stream + sum(sum(layer.memory_bits.values()) for layer in self.layers)

    def report(self) -> dict:
        """The generator's report (machine readable; ``spikesmith generate --json`` prints it)."""
        return {
            "fingerprint": self.fingerprint,
            "timesteps": self.timesteps,
            "skip_silent": self.skip_silent,
            "input": {"size": self.input.size, "lanes": self.input.lanes, "words": self.input.words,
                      "code_width": self.timesteps, "memory_bits": self.input.memory_bits},
            "layers": [{
                "name": layer.name, "engine": "convolution" if layer.conv is not None else "dense",
                "inputs": layer.inputs, "neurons": layer.neurons, "fires": layer.fires, "lanes": layer.lanes, "blocks": layer.blocks,
                "weight_width": layer.weight_width, "bias_width": layer.bias_width,
                "membrane_width": layer.membrane_width, "threshold_width": layer.threshold_width,
                "memory_bits": layer.memory_bits,
                "rows": layer.rows,
                **({"convolution": layer.conv.as_dict()} if layer.conv is not None else {}),
                **({"max_pool": {**layer.pool.geometry.as_dict(), "lanes": layer.pool.lanes,
                                 "cycles_worst": layer.pool.cycles()}} if layer.pool is not None else {}),
                "cycles_per_step_worst": sum(layer.event_cycles()) + 1,
                "accumulate_cycles_worst": layer.accumulate_cycles(),
            } for layer in self.layers],
            "stream": [stage.report() for stage in self.stream],
            "classes": self.classes,
            "logit_width": self.logit_width,
            "total_lanes": self.total_lanes,
            "memory_bits": self.memory_bits(),
            "stage_cycles_worst": self.stage_cycles(),
            "initiation_interval": self.initiation_interval,
            "bottleneck": self.bottleneck,
            "latency_bound": self.latency_bound,
        }


@dataclass(frozen=True, eq=False)
class BoardParams:
    """What the board top needs besides the core plan (made by ``spikesmith.gen.board``).

    ``code_bytes`` and ``logit_bytes`` are the wire sizes of docs/protocol.md.
    """
    plan: CorePlan
    identity: bytes
    divisor: int          # clock cycles per UART bit
    window: int           # images in flight
    code_bytes: int
    logit_bytes: int
    load_bytes: int = 0   # bytes of a weight row in a LOAD; 0: every weight is in the bitstream
    load_rows: int = 0    # most rows a LOAD carries (the board's LOAD buffer rows)

    @property
    def load_payload_bytes(self) -> int:
        """Length of the longest LOAD payload: layer (1), address (2), count (1), ``load_rows`` rows."""
        return LOAD_HEAD + self.load_rows * self.load_bytes

    @property
    def image_bytes(self) -> int:
        return self.plan.input.size * self.code_bytes

    @property
    def result_bytes(self) -> int:
        return 2 + self.plan.classes * self.logit_bytes
