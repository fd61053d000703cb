"""Stream payloads of the core and the block scanner that turns spike masks into events.

Spikes move between layers as **address events**, one per cycle (docs/core.md): for each
firing step the producer sends the address of every neuron that spiked (with skipping off:
of every neuron, with its spike bit), then one end-of-step marker. The consumer needs one
weight column per event, so one event per cycle is the rate it can take anyway, and a
silent neuron costs the consumer nothing.
"""

from __future__ import annotations

from amaranth import C, Cat, Module, Mux, Shape, Signal, Value
from amaranth.lib import data, fifo, stream

from ..contract.network import unsigned_width
from ..contract.plan import QUEUED_COUNT_BITS, STAGED_ROW_LANES, row_is_staged, row_queue_depth

__all__ = ["spike_event_layout", "pixel_event_layout", "spike_row_layout", "result_layout", "image_beat_layout", "weight_load_layout",
           "index_signal", "WrappingCounter", "lowest_set_lane", "count_up_to", "sum_up_to", "scanned_row_layout", "read_tag_layout", "RowReader", "BlockScanner", "ScanCoordinates"]


def index_signal(count: int, **kwargs) -> Signal:
    """An unsigned counter or address for ``0 .. count-1``, at least one bit wide.

    ``Signal(range(1))`` would be zero bits wide, which Verilog cannot declare (``[-1:0]``).
    """
    return Signal(range(max(2, count)), **kwargs)


class WrappingCounter:
    """``value`` counts ``0 .. count-1`` and wraps; ``first`` (``value == 0``) and ``last``
    (``value == count - 1``) are registers beside it, so no compare sits in front of what they drive.

    ``restart`` and ``advance`` add to ``m.d.sync``; the caller puts them under its own conditions.
    """

    def __init__(self, count: int, name: str):
        self.count = count
        self.value = index_signal(count, name=name)
        self.first = Signal(init=1, name=f"{name}_first")
        self.last = Signal(init=(count == 1), name=f"{name}_last")

    def restart(self, m: Module) -> None:
        """Back to 0 next cycle."""
        m.d.sync += [self.value.eq(0), self.first.eq(1), self.last.eq(self.count == 1)]

    def advance(self, m: Module) -> None:
        """One on next cycle, to 0 after ``count - 1``."""
        m.d.sync += [self.value.eq(Mux(self.last, 0, self.value + 1)), self.first.eq(self.last),
                     self.last.eq(Mux(self.last, self.count == 1, self.value == self.count - 2))]


def lowest_set_lane(m: Module, mask, lanes: int) -> Signal:
    """The index of the lowest set bit of ``mask`` (``lanes`` bits), in logic; unspecified when none is set.

    A tree of 2-way choices, ``ceil(log2(lanes))`` deep: each node takes its lower half's index
    when that half has a bit set, else its upper half's, and appends which it took as the next
    index bit. (A chain of priority choices was ``lanes`` deep and set the clock of a 64-lane row.)
    """
    lowest = index_signal(lanes)
    padded = 1 << max(1, (lanes - 1).bit_length())

    def subtree(bits):                         # (any bit set, index of the lowest set bit)
        if len(bits) == 2:
            return bits[0] | bits[1], ~bits[0]
        half = len(bits) // 2
        low_any, low_index = subtree(bits[:half])
        high_any, high_index = subtree(bits[half:])
        return low_any | high_any, Cat(Mux(low_any, low_index, high_index), ~low_any)

    bits = [mask[lane] if lane < lanes else C(0, 1) for lane in range(padded)]
    m.d.comb += lowest.eq(subtree(bits)[1])
    return lowest


def spike_event_layout(addr_width: int) -> data.StructLayout:
    """One spike event: ``addr`` of the neuron, its ``spike`` bit, or ``end`` of a step (addr ignored)."""
    return data.StructLayout({"addr": max(1, addr_width), "spike": 1, "end": 1})


def pixel_event_layout(shape: tuple[int, int, int]) -> data.StructLayout:
    """One spike event into a convolution: the neuron's ``channel``, ``y`` and ``x`` in a ``shape``
    = ``(C, H, W)`` feature map, its ``spike`` bit, or ``end`` of a step (coordinates ignored)."""
    c, h, w = shape
    return data.StructLayout({"channel": unsigned_width(c - 1), "y": unsigned_width(h - 1),
                              "x": unsigned_width(w - 1), "spike": 1, "end": 1})


def spike_row_layout(lanes: int, timesteps: int) -> data.StructLayout:
    """One row beat into a pooling stage: the ``spikes`` of a membrane row's ``lanes`` neurons at
    this step, each lane's ``history`` (its spike bits of the image's earlier steps, bit ``t`` for
    step ``t``, later bits zero), or ``end`` of a step. Rows come in the producer's row order."""
    return data.StructLayout({"spikes": lanes, "history": data.ArrayLayout(timesteps, lanes), "end": 1})


def image_beat_layout(lanes: int, timesteps: int) -> data.ArrayLayout:
    """One beat of the image stream: ``lanes`` unsigned ``timesteps``-bit input codes, code 0 in the LSBs."""
    return data.ArrayLayout(timesteps, lanes)


def result_layout(classes: int, label_width: int, logit_width: int) -> data.StructLayout:
    """One result: the predicted ``label`` (first index of the largest logit) and every integer logit."""
    return data.StructLayout({"label": label_width,
                              "logits": data.ArrayLayout(data.signed(logit_width), classes)})


def weight_load_layout(addr_width: int, data_width: int, layer_width: int = 0) -> data.StructLayout:
    """One weight-row write: ``en`` for one cycle writes ``data`` (a packed row) at row ``addr``.

    At the core's port ``layer`` picks the layer engine; engines take the layout without it.
    """
    fields = {"en": 1, "addr": addr_width, "data": data_width}
    if layer_width:
        fields["layer"] = layer_width
    return data.StructLayout(fields)


def scanned_row_layout(lanes: int, **extra) -> data.StructLayout:
    """One row into a :class:`BlockScanner`: its ``lanes`` spike bits at this step, ``sends`` (how
    many events it sends, counted up to 2: :meth:`BlockScanner.group_counts`) and whatever else
    (``extra``: field name -> shape) the caller wants back while the row's events go out."""
    return data.StructLayout({"spikes": lanes, "sends": QUEUED_COUNT_BITS, **extra})


def count_up_to(bits, cap: int):
    """The number of set bits among ``bits`` (a list of 1-bit values), or ``cap`` if more: a tree of
    small saturating adders, ``ceil(log2(len(bits)))`` deep, no carry chain."""
    return sum_up_to([(bit, 1) for bit in bits], cap)


def sum_up_to(terms, cap: int):
    """The sum of ``terms`` (pairs of a small unsigned value and its largest value), or ``cap`` if
    more: a tree of saturating adders."""
    return _sum_up_to(terms, cap)[0]


def _sum_up_to(terms, cap: int):
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    (left, left_most), (right, right_most) = _sum_up_to(terms[:half], cap), _sum_up_to(terms[half:], cap)
    total, most = left + right, left_most + right_most
    if most <= cap:                            # it cannot pass the cap (a constant compare, which Verilator refuses)
        return total, most
    return Mux(total > cap, cap, total)[:cap.bit_length()], cap


def read_tag_layout(rows: int, timesteps: int) -> data.StructLayout:
    """A row read on its way through a :class:`RowReader`: ``valid``, its ``row`` and ``step``,
    and ``last`` (the image's last read)."""
    return data.StructLayout({"valid": 1, "row": range(max(2, rows)), "step": range(max(2, timesteps)), "last": 1})


class RowReader:
    """Reads a bank's ``rows`` rows ``timesteps`` times per image, one per cycle, into a queue of rows.

    The engine calls :meth:`build` in its ``elaborate``: ``ready`` (in) says a bank is there;
    in a cycle with ``issue`` the engine reads row ``row`` (at step ``step``); ``latency``
    cycles later that read *arrives* (``arrived``, a :func:`read_tag_layout`, valid for that
    cycle; ``tags[k]`` is the read issued ``k + 1`` cycles ago): the engine computes the row's
    queue entry into ``entry`` (and may write the row back), and ``done`` (comb) marks the
    image's last arrival, which frees the bank. :meth:`build` takes the scanner, which counts
    the entry's events into its ``sends`` field: a row of more than :data:`STAGED_ROW_LANES`
    lanes is counted in groups as it arrives, waits a cycle in a register, and the groups'
    counts are added on its way into the queue (the fire stage's compare, the count and the
    queue's write were one path at 64 lanes). Reads are
    issued only while the queue (``depth`` entries) has room for them, so a slow consumer
    stalls the reads, never the arrivals; :attr:`rows_out` is the queue's output, for a
    :class:`BlockScanner`. A new bank is claimed the cycle after ``done``. With ``rewrites`` the
    engine writes each row back when it arrives, so a row is read again no sooner than that
    (a pass shorter than the latency waits; a write-first read sees the write).
    """

    def __init__(self, *, rows: int, timesteps: int, latency: int, entry: data.StructLayout, rewrites: bool = False):
        self.lanes = Shape.cast(entry.members["spikes"]).width
        self.staged = row_is_staged(self.lanes)
        self.rows, self.timesteps, self.latency = rows, timesteps, latency
        self.depth = row_queue_depth(self.lanes)
        self.rewrites = rewrites
        assert self.depth >= latency + 2 + self.staged, "a shallower queue cannot keep up one row per cycle"
        self.ready, self.issue, self.done = Signal(), Signal(), Signal()
        self._row_counter, self._step_counter = WrappingCounter(rows, "row"), WrappingCounter(timesteps, "step")
        self.row, self.step = self._row_counter.value, self._step_counter.value
        self.tags = [Signal(read_tag_layout(rows, timesteps), name=f"read_tag{k}") for k in range(latency)]
        self.arrived = self.tags[-1]
        self.entry = Signal(entry)
        self.rows_out = stream.Signature(entry).create()

    def build(self, m: Module, scanner: "BlockScanner") -> None:
        m.submodules.row_queue = queue = fifo.SyncFIFO(width=len(self.entry.as_value()), depth=self.depth)
        arrived, written = self.tags[-1], Signal.like(self.entry)
        groups = scanner.group_counts(self.entry.spikes, arrived.row)
        if self.staged:
            bits = QUEUED_COUNT_BITS
            staged, staged_groups, stored = Signal.like(self.entry), Signal(bits * len(groups)), Signal()
            m.d.sync += [staged.eq(self.entry), staged_groups.eq(Cat(*groups)), stored.eq(arrived.valid)]
            groups = [staged_groups.word_select(k, bits) for k in range(len(groups))]
        else:
            staged, stored = self.entry, arrived.valid
        m.d.comb += [written.eq(staged), written.sends.eq(scanner.sends(groups))]
        reading, finishing = Signal(), Signal()       # an image's reads are being issued / still arriving
        tags = self.tags
        # Queue entries neither taken nor promised to a read in flight: a read takes one, a row leaving the
        # queue gives one back (a register, so no sum of the queue's level and the reads in flight).
        credits = Signal(range(self.depth + 1), init=self.depth)
        m.d.sync += credits.eq(credits - self.issue + (queue.r_en & queue.r_rdy))
        # The last row and step in registers beside their counters (their compares fed the issue and
        # `finishing`: 2 of the 5 LUTs of the iCE40's slowest path for 64-row layers).
        row, step = self._row_counter, self._step_counter
        # A row still on its way back (only a pass shorter than the latency can read it again that soon).
        unwritten = [tag.valid & (tag.row == self.row) for tag in tags[:-1]] if self.rewrites and self.rows < self.latency else []
        m.d.comb += [self.issue.eq(reading & (credits != 0) & ~Cat(unwritten).any()),
                     self.done.eq(tags[-1].valid & tags[-1].last),
                     queue.w_data.eq(written), queue.w_en.eq(stored),
                     self.rows_out.valid.eq(queue.r_rdy), self.rows_out.payload.eq(queue.r_data),
                     queue.r_en.eq(self.rows_out.ready)]
        m.d.sync += [tags[0].valid.eq(self.issue), tags[0].row.eq(self.row), tags[0].step.eq(self.step),
                     tags[0].last.eq(row.last & step.last)]
        m.d.sync += [later.eq(earlier) for earlier, later in zip(tags, tags[1:])]
        with m.If(self.ready & ~reading & ~finishing):
            m.d.sync += reading.eq(1)
            row.restart(m)
            step.restart(m)
        with m.If(self.issue):
            row.advance(m)
            with m.If(row.last):
                step.advance(m)
                with m.If(step.last):
                    m.d.sync += [reading.eq(0), finishing.eq(1)]
        with m.If(self.done):
            m.d.sync += finishing.eq(0)


class BlockScanner:
    """Turns a stream of rows, ``blocks`` per step and ``timesteps`` steps per image, into events.

    Not a component of its own: the engine calls :meth:`build` inside its ``elaborate`` and
    gives it the stream of rows (:func:`scanned_row_layout`, ``row_layout``) from its
    :class:`RowReader`. The scanner *loads* a row (``load``, one cycle: ``rows.ready``) when
    the previous row's events are out or going out this cycle, so a row with ``k`` events
    takes ``max(1, k)`` cycles; after a step's last row it sends the end-of-step marker and, in
    the same cycle, loads the next step's first row. ``loaded`` holds the row whose events are
    on offer. (The bank is freed by the row reader, not by the scanner.)
    """

    #: A queued row's events are counted up to this (none, one, more: ``QUEUED_COUNT_BITS`` bits).
    SENDS_CAP = 2

    def __init__(self, *, blocks: int, lanes: int, neurons: int, timesteps: int, skip_silent: bool,
                 row_layout: data.StructLayout | None = None):
        self.blocks, self.lanes, self.neurons = blocks, lanes, neurons
        self.timesteps, self.skip_silent = timesteps, skip_silent
        self.loaded = Signal(row_layout or scanned_row_layout(lanes))
        self.step = index_signal(timesteps)
        self.row = index_signal(blocks)          # the row the next load takes
        self.load = Signal()
        self.lowest = index_signal(lanes)        # the lane of the event on offer

    def _lanes_sent(self, spikes, last_row):
        """The lanes of a row that send an event: its spiking ones (every one without skipping), but
        none of the last row's beyond the layer's neurons."""
        tail = self.neurons - (self.blocks - 1) * self.lanes
        valid_lanes = Mux(last_row, (1 << tail) - 1, (1 << self.lanes) - 1)
        return spikes & valid_lanes if self.skip_silent else valid_lanes

    def group_counts(self, spikes, row) -> list:
        """The events of row ``row`` of a step with spike bits ``spikes``, counted up to 2 in groups of
        :data:`STAGED_ROW_LANES` lanes: their sum up to 2 is the queued row's ``sends``, so that the
        scanner knows at once whether a loaded row is empty or sends one event, without counting a
        wide row in the cycle it loads."""
        sent = self._lanes_sent(spikes, row == self.blocks - 1)
        return [count_up_to([sent[lane] for lane in range(first, min(first + STAGED_ROW_LANES, self.lanes))],
                            self.SENDS_CAP) for first in range(0, self.lanes, STAGED_ROW_LANES)]

    def sends(self, groups) -> Value:
        """The queued row's ``sends``: its :meth:`group_counts` added up to 2."""
        return sum_up_to([(group, self.SENDS_CAP) for group in groups], self.SENDS_CAP)

    def build(self, m: Module, rows, events) -> None:
        """Add the scanner's logic to ``m``: ``rows`` in, the stream interface ``events`` out."""
        lanes, blocks = self.lanes, self.blocks
        loaded_all = Signal()                      # every row of this step is loaded
        pending = Signal(lanes)                    # lanes of the loaded row still to send
        # Registered with `pending`: none left / at most one left. With them, whether a row loads
        # this cycle comes from registers, not from counting `pending`.
        idle, single = Signal(init=1), Signal(init=1)
        base = index_signal(blocks * lanes)       # address of lane 0 of the loaded row
        row_base = index_signal(blocks * lanes + 1)

        lowest = self.lowest
        m.d.comb += lowest.eq(lowest_set_lane(m, pending, lanes))
        emitting = ~idle
        others = pending & (pending - 1)           # x & (x-1) clears the lowest set bit
        # Skipping sends spiking lanes only; else the lowest pending lane's bit, without a lane multiplexer.
        spike = 1 if self.skip_silent else (self.loaded.spikes & (pending ^ others)).any()
        m.d.comb += [
            events.valid.eq(emitting | loaded_all),
            events.payload.spike.eq(spike),
            events.payload.end.eq(~emitting),
        ]
        if "addr" in events.payload.shape().members:   # pixel events get their coordinates from ScanCoordinates
            # Rows start at multiples of ``lanes``: with a power of two the low bits are the lane's (no carry chain).
            power_of_two = lanes & (lanes - 1) == 0
            m.d.comb += events.payload.addr.eq(base | lowest if power_of_two else base + lowest)
        sent = events.valid & events.ready
        marker_sent = sent & ~emitting
        event_sent = sent & emitting
        # A row loads when the last one's events are out, or with the step's marker (the next step's first row).
        m.d.comb += [self.load.eq(rows.valid & (~loaded_all | marker_sent) & (idle | (event_sent & single))),
                     rows.ready.eq(self.load)]

        last_row = self.row == blocks - 1
        first_base = Mux(marker_sent, 0, row_base)
        with m.If(self.load):
            m.d.sync += [pending.eq(self._lanes_sent(rows.payload.spikes, last_row)),
                         idle.eq(rows.payload.sends == 0), single.eq(rows.payload.sends <= 1),
                         self.loaded.eq(rows.payload), base.eq(first_base),
                         row_base.eq(first_base + lanes), self.row.eq(Mux(last_row, 0, self.row + 1)),
                         loaded_all.eq(last_row)]
        with m.Elif(event_sent):
            two_or_fewer = count_up_to([pending[lane] for lane in range(lanes)], 3) <= 2
            m.d.sync += [pending.eq(others), idle.eq(single), single.eq(two_or_fewer)]
        with m.If(~self.load & marker_sent):
            m.d.sync += [loaded_all.eq(0), row_base.eq(0)]
        with m.If(marker_sent):
            with m.If(self.step == self.timesteps - 1):
                m.d.sync += self.step.eq(0)
            with m.Else():
                m.d.sync += self.step.eq(self.step + 1)


class ScanCoordinates:
    """Feature-map coordinates of a walk over rows, kept by counters (no division).

    Rows are in ``(group, y, x)`` order: ``x`` advances by ``x_step`` per row up to ``width``,
    then ``y`` up to ``height``, then ``group`` (and ``group_base`` by ``group_stride``). For a
    convolution engine a row is one pixel of one block of channels (``x_step = 1``, group =
    block, ``group_base`` = its first channel); for the input encoder a row is a word of
    ``x_step`` pixels of one channel. :meth:`build` steps them past a row: ``group``/``y``/``x``
    are the coordinates of the row the walk takes next, ``loaded_*`` those of the row it took last.
    """

    def __init__(self, *, groups: int, height: int, width: int, x_step: int = 1, group_stride: int = 1):
        self.groups, self.height, self.width, self.x_step = groups, height, width, x_step
        self.group_stride = group_stride
        self.group, self.y, self.x = index_signal(groups), index_signal(height), index_signal(width)
        self.group_base = index_signal(groups * group_stride)
        self.loaded_group_base = index_signal(groups * group_stride)
        self.loaded_y, self.loaded_x = index_signal(height), index_signal(width)

    def build(self, m: Module, advance, last_row) -> None:
        """Step past the current row in cycles with ``advance``; back to the first after ``last_row``."""
        end_of_line = self.x == self.width - self.x_step
        end_of_map = end_of_line & (self.y == self.height - 1)
        with m.If(advance & last_row):
            m.d.sync += [self.group.eq(0), self.group_base.eq(0), self.y.eq(0), self.x.eq(0)]
        with m.Elif(advance):
            m.d.sync += self.x.eq(Mux(end_of_line, 0, self.x + self.x_step))
            with m.If(end_of_line):
                m.d.sync += self.y.eq(Mux(end_of_map, 0, self.y + 1))
            with m.If(end_of_map):
                m.d.sync += [self.group.eq(self.group + 1), self.group_base.eq(self.group_base + self.group_stride)]
        with m.If(advance):
            m.d.sync += [self.loaded_group_base.eq(self.group_base), self.loaded_y.eq(self.y), self.loaded_x.eq(self.x)]
