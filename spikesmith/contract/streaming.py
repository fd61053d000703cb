"""The plan of a convolution on the streaming engine (docs/core.md, "Streaming convolution engine").

Values travel between streaming layers as **code beats**: each beat carries the whole ``T``-bit codes
(docs/semantics.md, "Codes and spike trains") of ``lanes`` channels of one pixel, MSB = step 0. A layer's
output is its pixels in raster order ``(y, x)`` and, within a pixel, its channel blocks ``b = 0 .. B-1``
(beat ``b`` holds channels ``b*L .. b*L + L - 1``, channel ``b*L`` in the LSBs). A neuron fires its whole
spike train at once (its code), which the contract allows: a neuron's firing reads its own membrane only.

The engine keeps the last ``kh + sh`` rows of its input's codes (the *line buffer*), builds each output
pixel's window of ``kh * kw * C_in`` codes in registers, and accumulates the window chunk by chunk: a
*chunk* is ``K`` consecutive taps in the order ``(ky, kx, ci)``; one operation covers ``S`` steps (a power of
two: the *step group* ``g`` is steps ``g*S - pad .. g*S - pad + S - 1``, ``pad = G*S - T`` with ``G = ceil(T/S)``
groups, steps below 0 have no bits) and adds, in each of ``L`` lanes, the weights of the chunk's taps whose
code has bit ``T-1-t`` set, shifted left by ``T-1-t``, for every step ``t`` of the group. With skipping on an
operation whose ``K * S`` bits are all zero is not issued. A chunk whose weights are all zero in every lane of
a block (a pruned kernel; a residual relay's taps off its centre) has no operations in that block at all: the
block's *live chunks* (:func:`live_chunks`) are fixed by the kernel, so the timing stays data-independent
with skipping off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .network import ConvGeometry, PoolGeometry, signed_width, unsigned_width
from .packing import TABLE_LATENCY, TABLE_ROWS, ceil_div, pack_row, rom_in_logic

__all__ = ["StreamWindow", "StreamConvPlan", "StreamPoolPlan", "ADDER_LEVELS_PER_STAGE", "chunk_slots",
           "step_groups", "chunk_notation", "parse_chunk", "live_chunks", "nonzero_taps", "store_aligned",
           "plan_stream_conv"]

#: Levels of the chunk's adder tree between two registers.
ADDER_LEVELS_PER_STAGE = 2


def step_groups(timesteps: int, op_steps: int) -> int:
    """Operations a chunk takes per block: ``ceil(T / S)`` step groups of ``S`` steps."""
    return ceil_div(timesteps, op_steps)


def chunk_notation(chunk: int, steps: int) -> str:
    """``K`` taps a cycle at one step, ``KxS`` at ``S`` steps a cycle (``--chunks``, report.json)."""
    return f"{chunk}x{steps}" if steps > 1 else str(chunk)


def parse_chunk(value) -> tuple[int, int]:
    """``(K, S)`` from ``K`` (an int or its digits) or ``"KxS"`` (:func:`chunk_notation`); ``ValueError`` with
    the reason otherwise."""
    text = str(value).strip().lower()
    parts = text.split("x")
    if len(parts) > 2 or not all(part.isdigit() and len(part) <= 6 for part in parts):
        raise ValueError(f"a chunk is K (taps a cycle) or KxS (K taps at S steps a cycle), not {value!r}")
    chunk, steps = int(parts[0]), int(parts[1]) if len(parts) == 2 else 1
    if chunk < 1 or steps < 1 or steps & (steps - 1):
        raise ValueError(f"a chunk's K is at least 1 and its S a power of two, not {value!r}")
    return chunk, steps


def chunk_slots(chunks: int) -> int:
    """Chunks rounded up to a power of two: an operation's index is ``t * slots + chunk`` (bits, no multiplier)."""
    return 1 << max(0, (chunks - 1).bit_length())


def store_aligned(channels: int, chunk: int) -> bool:
    """Whether a window of ``channels``-code entries can be a memory of chunk rows: ``chunk`` divides
    ``channels`` a power-of-two number of times (an entry is a row of whole chunks, selected by the chunk's low
    bits) or ``channels`` divides ``chunk`` (a chunk is a row of whole entries)."""
    if chunk > channels:
        return chunk % channels == 0
    per_row = channels // chunk
    return channels % chunk == 0 and per_row & (per_row - 1) == 0


def live_chunks(nonzero_taps: np.ndarray, lanes: int, chunk: int) -> np.ndarray:
    """``(blocks, chunks)`` booleans: chunk ``c`` (taps ``c*K .. c*K + K - 1`` in the order ``(ky, kx, ci)``) has
    a nonzero weight in some lane of block ``b`` of ``lanes`` output channels. ``nonzero_taps``: ``(C_out, taps)``
    booleans, a kernel's nonzero weights in that order (:func:`nonzero_taps`)."""
    c_out, taps = nonzero_taps.shape
    chunks = ceil_div(taps, chunk)
    padded = np.zeros((c_out, chunks * chunk), dtype=bool)
    padded[:, :taps] = nonzero_taps
    return padded.reshape(c_out // lanes, lanes, chunks, chunk).any(axis=(1, 3))


def nonzero_taps(kernel: np.ndarray, window_in_ram: bool = False) -> np.ndarray:
    """A kernel ``(C_out, C_in, kh, kw)``'s nonzero weights as ``(C_out, kh * kw * C_in)``, taps ``(ky, kx, ci)``
    (in a window store ``(kx, ky, ci)``)."""
    kernel = np.asarray(kernel)
    order = (0, 3, 2, 1) if window_in_ram else (0, 2, 3, 1)
    return kernel.transpose(*order).reshape(kernel.shape[0], -1) != 0


@dataclass(frozen=True)
class StreamWindow:
    """Where a streaming layer's windows lie in its input (a convolution's or a max pool's), and how its line
    buffer and window loader are built: ``(C, H, W)`` codes of ``T`` bits in, a beat of ``input_lanes`` codes
    of one pixel, pixels in raster order; output pixel ``(oy, ox)`` reads input rows
    ``oy * sh - ph + ky * dh`` and columns ``ox * sw - pw + kx * dw`` (zeros outside the input)."""
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_rows: int
    out_columns: int
    timesteps: int
    input_lanes: int
    in_ram: bool = False   # the window is written into a memory (every read waits for the hand-over), not registers

    def __post_init__(self):
        assert self.in_shape[0] % self.input_lanes == 0

    @property
    def span(self) -> tuple[int, int]:
        """Rows and columns a window covers: ``(k - 1) * d + 1``."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def entry_bits(self) -> int:
        """A line-buffer entry: one pixel's ``C`` codes."""
        return self.in_shape[0] * self.timesteps

    @property
    def input_groups(self) -> int:
        """Input beats per input pixel: ``C / input_lanes``."""
        return self.in_shape[0] // self.input_lanes

    @property
    def input_beats(self) -> int:
        """Input beats per image (the line buffer takes one a cycle)."""
        return self.in_shape[1] * self.in_shape[2] * self.input_groups

    @property
    def line_rows(self) -> int:
        """Input rows the line buffer holds: ``2 * span + sh``: one output row's rows, the next one's ``sh``
        new rows, and (at an image's end) the next image's first rows while the last output row is computed,
        so a fast producer never waits and the loader never waits for a row at an image's start."""
        return 2 * self.span[0] + self.stride[0]

    @property
    def depth(self) -> int:
        """Entries of the line buffer: ``line_rows * W``."""
        return self.line_rows * self.in_shape[2]

    @property
    def taps(self) -> int:
        """Codes in a window: ``kh * kw * C``."""
        return self.kernel[0] * self.kernel[1] * self.in_shape[0]

    @property
    def reuses_columns(self) -> bool:
        """Whether a pixel's window keeps the previous pixel's columns (no column dilation, in registers) and reads
        only new ones."""
        return self.dilation[1] == 1 and not self.in_ram

    def pixel_columns(self, first_of_row: bool) -> int:
        """Columns the loader reads for a pixel: all ``kw`` at a row's start (and always with column dilation),
        else the ``min(kw, sw)`` new ones."""
        kw = self.kernel[1]
        return kw if first_of_row or not self.reuses_columns else min(kw, self.stride[1])

    def released_rows(self, out_row: int) -> int:
        """Rows the loader releases before output row ``out_row`` (its first row's distance from the previous one's)."""
        sh, ph = self.stride[0], self.padding[0]
        return 0 if out_row == 0 else max(0, out_row * sh - ph) - max(0, (out_row - 1) * sh - ph)

    def handovers(self, busy: int, images: int = 3) -> list[int]:
        """The cycle of every window hand-over over ``images`` images, counted from the first read, when the
        consumer needs ``busy`` cycles a window and the input and output never wait: the loader issues a read a
        cycle (``kh`` a column; the read that completes a pixel's first column, or with the window in a memory
        every read, only after the previous window was handed over), a window is handed over when complete and
        the consumer is idle, and between rows the loader releases rows a cycle each (docs/core.md, "Streaming
        convolution engine")."""
        kh = self.kernel[0]
        height = self.in_shape[1]
        times, free, start, handover = [], 0, 0, -1
        for _ in range(images):
            for oy in range(self.out_rows):
                for ox in range(self.out_columns):
                    if self.in_ram:                                       # all reads wait for the buffer
                        completing = max(start, handover + 1) + kh - 1
                    else:
                        completing = max(start + kh - 1, handover + 1)    # the read that shifts the window
                    last = completing + (self.pixel_columns(ox == 0) - 1) * kh   # the last read
                    handover = max(last + 2, free)
                    free = handover + busy
                    times.append(handover)
                    start = last + 1
                if oy + 1 < self.out_rows:
                    start = last + 2 + self.released_rows(oy + 1)
                else:
                    start = last + 3 + (height - max(0, oy * self.stride[0] - self.padding[0]))
        return times

    def image_cycles(self, busy: int) -> int:
        """Cycles between two images in steady state when the consumer needs ``busy`` cycles a window: the
        hand-overs, or the input's beats where they take longer (exact when nothing else waits)."""
        times = self.handovers(busy, 3)
        pixels = len(times) // 3
        return max(times[2 * pixels] - times[pixels], self.input_beats)


@dataclass(frozen=True, eq=False)
class StreamConvPlan:
    """A convolution layer on the streaming engine: geometry, parallelism, widths and packed tables.

    Widths in bits. ``weight_rows[b * chunks + c]`` packs, lane-major, the ``L * K`` weights
    ``W[b*L + lane, tap c*K + k]`` (taps past the kernel: 0), ``weight_width`` bits each;
    ``bias_rows[b]`` and ``threshold_rows[b]`` the block's ``L`` biases and thresholds. An operation covers
    ``op_steps`` steps (``S``, a power of two): its adder tree has ``K * S`` inputs per lane.
    """
    index: int
    name: str
    geometry: ConvGeometry
    timesteps: int
    lanes: int             # L: output channels per block (divides C_out)
    input_lanes: int       # codes per input beat (divides C_in)
    chunk: int             # K: taps per operation
    weight_width: int      # signed
    bias_width: int        # signed
    membrane_width: int    # signed: every partial sum of a neuron lies within its bounds
    threshold_width: int   # unsigned
    sum_width: int         # signed: a chunk's masked sum over one step group, each step at its relative weight
    weight_rows: tuple[int, ...] = field(repr=False)
    bias_rows: tuple[int, ...] = field(repr=False)
    threshold_rows: tuple[int, ...] = field(repr=False)
    skip_silent: bool = True
    op_steps: int = 1      # S: steps an operation covers (a power of two, at most the next one above T)
    window_in_ram: bool = False   # the window is a memory of chunk rows (K divides C_in, or C_in divides K)

    def __post_init__(self):
        c_in, c_out = self.geometry.in_shape[0], self.geometry.out_channels
        assert c_out % self.lanes == 0 and c_in % self.input_lanes == 0 and 1 <= self.chunk <= self.taps
        assert len(self.weight_rows) == self.blocks * self.chunks
        assert not self.window_in_ram or store_aligned(c_in, self.chunk)
        assert self.op_steps & (self.op_steps - 1) == 0 and 1 <= self.op_steps < 2 * self.timesteps

    @cached_property
    def window(self) -> StreamWindow:
        g = self.geometry
        return StreamWindow(g.in_shape, g.kernel, g.stride, g.padding, (1, 1), g.out_shape[1], g.out_shape[2],
                            self.timesteps, self.input_lanes, self.window_in_ram)

    # -- the window in a memory (``window_in_ram``) -----------------------------------------------------------

    @property
    def entries_per_row(self) -> int:
        """Input pixels (entries of ``C_in`` codes) in a store row: ``K / C_in`` when a chunk spans several, else 1."""
        c_in = self.geometry.in_shape[0]
        return self.chunk // c_in if self.chunk > c_in else 1

    @property
    def chunks_per_row(self) -> int:
        """Chunks in a store row: ``C_in / K`` when an entry holds several, else 1."""
        c_in = self.geometry.in_shape[0]
        return c_in // self.chunk if self.chunk <= c_in else 1

    @property
    def store_width(self) -> int:
        """Bits of a store row: one entry (``C_in * T``), or a chunk of ``K / C_in`` entries (``K * T``)."""
        return max(self.chunk, self.geometry.in_shape[0]) * self.timesteps

    @property
    def store_rows(self) -> int:
        """Rows of one window in the store: an entry a row (``kh * kw``), or a chunk a row (``chunks``); a
        power of two, so that the buffer is the address's top bit."""
        kh, kw = self.geometry.kernel
        rows = kh * kw if self.chunk <= self.geometry.in_shape[0] else self.chunks
        return 1 << max(0, (rows - 1).bit_length())

    @property
    def taps(self) -> int:
        """Window size ``kh * kw * C_in``."""
        return self.window.taps

    @property
    def chunks(self) -> int:
        return ceil_div(self.taps, self.chunk)

    @property
    def slots(self) -> int:
        return chunk_slots(self.chunks)

    @property
    def groups(self) -> int:
        """Step groups ``G = ceil(T / S)``: a block's operations per chunk."""
        return step_groups(self.timesteps, self.op_steps)

    @cached_property
    def live_masks(self) -> tuple[int, ...]:
        """Per block, bit ``c`` set when chunk ``c`` has a nonzero weight in some lane (its weight row is not
        zero): the chunks the block's operations visit (:func:`live_chunks`). A block of zero weights visits
        chunk 0 all the same: ``G + 1`` cycles a block keep the fire unit's pace (it takes at least two)."""
        return tuple(sum(1 << c for c in range(self.chunks) if self.weight_rows[b * self.chunks + c]) or 1
                     for b in range(self.blocks))

    @property
    def dead_chunks(self) -> bool:
        """Whether some block has a chunk of zero weights (the sequencer then masks each block's chunks)."""
        return any(mask != (1 << self.chunks) - 1 for mask in self.live_masks)

    @property
    def pad(self) -> int:
        """Steps without bits before step 0 in the first group: ``G * S - T``."""
        return self.groups * self.op_steps - self.timesteps

    @property
    def fire_steps(self) -> int:
        """Compare-subtract steps the fire unit chains a cycle: the fewest (a power of two) whose ``ceil(T / F)
        + 1`` cycles a block are no more than the sequencer's on its shortest block (:meth:`block_cycles`; a long
        chain costs Fmax)."""
        steps = 1
        while step_groups(self.timesteps, steps) + 1 > min(self.block_cycles()):
            steps *= 2
        return steps

    @property
    def fire_groups(self) -> int:
        """Cycles the fire unit steps a block: ``ceil(T / fire_steps)``."""
        return step_groups(self.timesteps, self.fire_steps)

    @property
    def blocks(self) -> int:
        return self.geometry.out_channels // self.lanes

    @property
    def adder_stages(self) -> int:
        """Registered stages of the chunk's adder tree (``ceil(log2(K * S))`` levels, two a stage)."""
        levels = max(0, (self.chunk * self.op_steps - 1).bit_length())
        return ceil_div(levels, ADDER_LEVELS_PER_STAGE)

    @property
    def memories(self) -> list[tuple[str, int, int]]:
        """Memories as built, ``(kind, width, rows)``: the line buffer, the queue of finished blocks, and the
        tables too large to be logic (hw/rows.py, ``row_table``)."""
        L = self.lanes
        shapes = [("line buffer", self.window.entry_bits, max(2, self.window.depth)),
                  ("finished queue", L * (self.membrane_width + self.threshold_width), self.finished_queue)]
        if self.window_in_ram:
            shapes.append(("window store", self.store_width, 2 * self.store_rows))
        if not self.weights_in_logic:
            shapes.append(("weights", self.weight_row_bits, len(self.weight_rows)))
        if self.blocks > TABLE_ROWS:
            shapes += [("biases", L * self.bias_width, self.blocks), ("thresholds", L * self.threshold_width,
                                                                     self.blocks)]
        return shapes

    @property
    def weight_row_bits(self) -> int:
        """A weight row: ``L * K`` weights."""
        return self.lanes * self.chunk * self.weight_width

    @property
    def weights_in_logic(self) -> bool:
        """Whether the weights are logic (hw/rows.py, ``row_table``; up to 16 rows or 1 Kbit), else a ROM.
        (Tables of up to 64 rows as logic saved a CIFAR ResNet-8 a third of its block RAM, but the CIFAR VGG
        built so failed an internal assertion of yosys's ABC pass: not again before a build shows why.)"""
        return rom_in_logic(self.weight_row_bits, len(self.weight_rows))

    @property
    def window_bits(self) -> int:
        """Flip-flops of the two windows (the one accumulated and the one being loaded); none in a memory."""
        return 0 if self.window_in_ram else 2 * self.taps * self.timesteps

    @property
    def finished_queue(self) -> int:
        """Finished blocks that may wait for the fire unit: enough that, with skipping off, the sequencer never
        holds a bias for want of room (a block's bias reaches the queue :attr:`pipeline_depth` cycles after its
        issue, and is taken a cycle later at the earliest)."""
        return max(2, ceil_div(self.pipeline_depth + 3, min(self.block_cycles())))

    # -- the cycle model (worst case: every bit of every code set; exact with skipping off) ------------------

    @property
    def pipeline_depth(self) -> int:
        """Cycles from an operation's issue to its membrane update: the operation register, the tap
        select, the tables' second cycle, the adder tree's stages, the shift register."""
        return 1 + TABLE_LATENCY + self.adder_stages + 1

    def block_cycles(self) -> tuple[int, ...]:
        """Cycles the sequencer spends on each block of ``L`` channels of a pixel at worst: ``G`` operations per
        live chunk and the bias (the fire unit's ``fire_groups + 1`` cycles a block are never more)."""
        return tuple(self.groups * mask.bit_count() + 1 for mask in self.live_masks)

    def image_cycles(self) -> int:
        """Cycles between two images in steady state at worst (exact with skipping off, when the producer
        offers a beat every cycle and the output never waits)."""
        return self.window.image_cycles(sum(self.block_cycles()) + 1)

    @property
    def drain_cycles(self) -> int:
        """After its input's last beat, at most this many cycles beyond :meth:`image_cycles` until the last code
        leaves: the datapath's pipeline, the queue of finished blocks and the fire unit."""
        return self.pipeline_depth + (self.fire_groups + 2) * (self.finished_queue + 1) + 4

    def report(self) -> dict:
        return {"name": self.name, "engine": "streaming convolution", "convolution": self.geometry.as_dict(),
                "lanes": self.lanes, "chunk": self.chunk, "chunks": self.chunks, "op_steps": self.op_steps,
                "live_chunks": sum(mask.bit_count() for mask in self.live_masks),
                "fire_steps": self.fire_steps,
                "blocks": self.blocks,
                "input_lanes": self.input_lanes, "weight_width": self.weight_width,
                "membrane_width": self.membrane_width, "sum_width": self.sum_width,
                "memory_bits": {kind: width * rows for kind, width, rows in self.memories},
                "window_flip_flops": self.window_bits, "cycles_per_image_worst": self.image_cycles()}


@dataclass(frozen=True, eq=False)
class StreamPoolPlan:
    """A max pool on the streaming engine: the window of each pooled pixel built like a convolution's, then
    each channel's largest code (zero padding never wins: codes are >= 0), ``lanes`` channels a beat."""
    index: int
    name: str
    geometry: PoolGeometry
    timesteps: int
    lanes: int             # channels per output beat (divides C)
    input_lanes: int       # codes per input beat (divides C)

    def __post_init__(self):
        assert self.geometry.in_shape[0] % self.lanes == 0

    @cached_property
    def window(self) -> StreamWindow:
        g = self.geometry
        _, rows, columns = g.out_shape
        return StreamWindow(g.in_shape, g.kernel, g.stride, g.padding, g.dilation, rows, columns, self.timesteps,
                            self.input_lanes)

    @property
    def blocks(self) -> int:
        return self.geometry.in_shape[0] // self.lanes

    @property
    def memories(self) -> list[tuple[str, int, int]]:
        return [("line buffer", self.window.entry_bits, max(2, self.window.depth))]

    def image_cycles(self) -> int:
        """Cycles between two images in steady state (exact when nothing else waits): a beat a cycle per block."""
        return self.window.image_cycles(self.blocks + 1)

    @property
    def drain_cycles(self) -> int:
        return self.blocks + 4

    def report(self) -> dict:
        return {"name": self.name, "engine": "streaming max pool", "max_pool": self.geometry.as_dict(),
                "lanes": self.lanes, "input_lanes": self.input_lanes,
                "memory_bits": {kind: width * rows for kind, width, rows in self.memories},
                "cycles_per_image_worst": self.image_cycles()}


def plan_stream_conv(index: int, name: str, geometry: ConvGeometry, kernel: np.ndarray, bias: np.ndarray,
                     threshold: np.ndarray, timesteps: int, lanes: int, input_lanes: int, chunk: int,
                     membrane_width: int, skip_silent: bool = True, op_steps: int = 1,
                     window_in_ram: bool = False) -> StreamConvPlan:
    """Pack one convolution's integer ``kernel`` ``(C_out, C_in, kh, kw)``, per-channel ``bias`` and
    ``threshold`` into a :class:`StreamConvPlan`. ``membrane_width`` comes from the layer's bounds
    (spikesmith/contract/bounds.py)."""
    group_scale = (1 << op_steps) - 1                                # a group's steps at weights 2^(S-1) .. 1
    kernel = np.asarray(kernel, dtype=np.int64)
    c_out = geometry.out_channels
    # taps (ky, kx, ci) row-major; in a window store (kx, ky, ci), the order the loader reads the entries
    taps = kernel.transpose(0, 3, 2, 1) if window_in_ram else kernel.transpose(0, 2, 3, 1)
    taps = taps.reshape(c_out, -1)
    chunks = ceil_div(taps.shape[1], chunk)
    padded = np.zeros((c_out, chunks * chunk), dtype=np.int64)
    padded[:, :taps.shape[1]] = taps
    blocks = c_out // lanes
    positive = np.where(padded > 0, padded, 0).reshape(c_out, chunks, chunk).sum(axis=2)
    negative = np.where(padded < 0, padded, 0).reshape(c_out, chunks, chunk).sum(axis=2)
    weight_width = max(2, signed_width(int(kernel.min(initial=0)), int(kernel.max(initial=0))))
    bias = np.asarray(bias, dtype=np.int64)
    threshold = np.asarray(threshold, dtype=np.int64)
    weight_rows = [pack_row(padded[b * lanes:(b + 1) * lanes, c * chunk:(c + 1) * chunk].reshape(-1), weight_width)
                   for b in range(blocks) for c in range(chunks)]
    bias_width = max(2, signed_width(int(bias.min(initial=0)), int(bias.max(initial=0))))
    threshold_width = unsigned_width(int(threshold.max(initial=1)))
    return StreamConvPlan(
        index=index, name=name, geometry=geometry, timesteps=timesteps, lanes=lanes, input_lanes=input_lanes,
        chunk=chunk, weight_width=weight_width, bias_width=bias_width, membrane_width=membrane_width,
        threshold_width=threshold_width,
        sum_width=max(2, signed_width(int(negative.min(initial=0)) * group_scale,
                                      int(positive.max(initial=0)) * group_scale)),
        weight_rows=tuple(weight_rows),
        bias_rows=tuple(pack_row(bias[b * lanes:(b + 1) * lanes], bias_width) for b in range(blocks)),
        threshold_rows=tuple(pack_row(threshold[b * lanes:(b + 1) * lanes], threshold_width) for b in range(blocks)),
        skip_silent=skip_silent, op_steps=op_steps, window_in_ram=window_in_ram)
