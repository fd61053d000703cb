"""Stage 1 of a layer engine: ``T`` steps of ``V <- 2V + sum W*s``, then ``V <- V + B``.

Per image: claim an empty bank and clear it (a pass over the membrane rows); per step
``t = 0..T-1`` the step's input events until its end marker, each adding its weights shifted
left by ``T-1-t`` (the doublings of the steps after it: no doubling pass); then a pass that
adds the biases, and the hand-over of the bank to the fire stage (docs/core.md, "One layer engine").

Four-deep pipeline: *issue* picks an operation and a row and reads the weight and bias rows;
*read* registers them and reads the membrane row; *shift* chooses each lane's addend (the
weight shifted, the bias, or 0) and registers it; *execute* updates the row lane by lane
(:class:`~.ilif.ILIFAccumulate`) and writes it back, three cycles after its issue. A row
issued again before its write lands reads the new value by forwarding (:mod:`.membranes`).
No path has more than one carry chain or follows a block RAM's output with logic. A dense
stage (:class:`DenseAccumulate`) and a convolution stage (:class:`~.conv.ConvAccumulate`)
differ only in how they walk the rows and what an event costs: their :class:`RowWalk`.
"""

from __future__ import annotations

from typing import Protocol

from amaranth import Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.network import unsigned_width
from ..contract.plan import LayerPlan
from .events import WrappingCounter, index_signal, pixel_event_layout, spike_event_layout, weight_load_layout
from .fanout import FANOUT_LANES, fanout_copies
from .ilif import AccumulateOp, ILIFAccumulate, accumulate_addend
from .membranes import MembranePort
from .rows import lanes_view, row_table, weight_store

__all__ = ["accumulate_issue_layout", "RowWalk", "AccumulateStage", "DenseAccumulate", "input_event_layout",
           "weight_load_port"]


def input_event_layout(plan: LayerPlan) -> data.StructLayout:
    """A layer's incoming events: coordinates for a convolution, addresses for a dense layer."""
    if plan.conv is not None:
        return pixel_event_layout(plan.conv.in_shape)
    return spike_event_layout(plan.input_addr_width)


def weight_load_port(plan: LayerPlan) -> dict:
    """``weights_load`` for a stage whose weights are written at run time; none otherwise."""
    if not plan.weights_loaded:
        return {}
    return {"weights_load": In(weight_load_layout(unsigned_width(plan.weight_row_count - 1), plan.weight_row_width))}


def accumulate_issue_layout(rows: int, timesteps: int) -> data.StructLayout:
    """The row operation issued in a cycle (``valid``): ``op`` on membrane row ``row`` (of
    ``rows``), with the event's ``spike`` bit and its weight's ``shift`` (``T-1-t`` at step
    ``t``); executed three cycles later."""
    return data.StructLayout({"valid": 1, "op": AccumulateOp, "row": range(max(2, rows)), "spike": 1,
                              "shift": range(max(2, timesteps))})


class RowWalk(Protocol):
    """How an accumulate stage walks its rows; built inside the stage's ``elaborate``.

    ``start_pass`` puts the pass counters at the first row (in the claim cycle);
    ``advance_pass`` steps them, wrapping after the last row, and returns "this is the last
    row"; ``on_event`` handles the valid, non-marker event on offer: it issues its row
    operations and raises ``events.ready`` in its last cycle.
    """

    def start_pass(self, m: Module) -> None: ...
    def advance_pass(self, m: Module) -> Value: ...
    def on_event(self, m: Module) -> None: ...


class AccumulateStage(wiring.Component):
    """Accumulate stage of one layer: input events in, a filled membrane bank out.

    ``events``: the previous layer's spike events, step by step, each step closed by an end
    marker. ``membranes``: the fill port of the layer's banks (:class:`~.membranes.MembraneBanks`).
    ``weights_load`` (only for run-time weights): one packed weight row per cycle with ``en``.
    Subclasses give the row walk (:meth:`walk`).
    """

    def __init__(self, plan: LayerPlan):
        self.plan = plan
        super().__init__({
            "events": In(stream.Signature(input_event_layout(plan))),
            "membranes": Out(MembranePort(plan.rows, plan.lanes * plan.membrane_width)),
            **weight_load_port(plan),
        })

    def taken_events(self, m: Module):
        """The events as the walk and the step machine take them: ``events`` itself here."""
        return self.events

    def walk(self, m: Module, events, issue, in_pass: Signal, weights, biases) -> RowWalk:
        """The row walk of ``events``: drives ``issue.row``, ``weights.addr``, ``biases.addr``."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        weights = weight_store(m, plan, getattr(self, "weights_load", None))
        biases = row_table(m, "biases", plan.lanes * plan.bias_width, plan.bias_rows)
        issue, in_pass = Signal(accumulate_issue_layout(plan.rows, plan.timesteps)), Signal()
        events = self.taken_events(m)
        self._steps(m, events, self.walk(m, events, issue, in_pass, weights, biases), issue, in_pass)
        self._execute(m, issue, weights, biases)
        return m

    def _steps(self, m: Module, events, walk: RowWalk, issue, in_pass: Signal) -> None:
        """The step state machine every accumulate stage shares."""
        T = self.plan.timesteps
        step = index_signal(T)
        # (Binary states: one-hot cost the digits CNN the last logic cells of the iCE40UP5K.)
        with m.FSM(name="accumulate"):
            with m.State("CLAIM"):
                with m.If(self.membranes.ready):
                    walk.start_pass(m)
                    m.d.sync += step.eq(0)
                    m.next = "CLEAR"
            with m.State("CLEAR"):
                m.d.comb += [in_pass.eq(1), issue.valid.eq(1), issue.op.eq(AccumulateOp.CLEAR)]
                with m.If(walk.advance_pass(m)):
                    m.next = "EVENTS"
            with m.State("EVENTS"):
                m.d.comb += issue.shift.eq(T - 1 - step)
                with m.If(events.valid & events.payload.end):
                    m.d.comb += events.ready.eq(1)
                    with m.If(step == T - 1):
                        m.next = "BIAS"
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                with m.Elif(events.valid):
                    walk.on_event(m)
            with m.State("BIAS"):
                m.d.comb += [in_pass.eq(1), issue.valid.eq(1), issue.op.eq(AccumulateOp.BIAS)]
                with m.If(walk.advance_pass(m)):
                    m.next = "READ"
            with m.State("READ"):       # the last bias row's membrane read
                m.next = "SHIFT"
            with m.State("SHIFT"):      # its addend
                m.next = "HANDOVER"
            with m.State("HANDOVER"):   # the last bias row is written this cycle
                m.d.comb += self.membranes.done.eq(1)
                m.next = "CLAIM"

    def _execute(self, m: Module, issue, weights, biases) -> None:
        """The row issued three cycles ago, updated lane by lane and written back; what each lane adds
        (the weight shifted, the bias, or 0) is chosen from the registered weight and bias rows while
        the membrane row is read (:data:`~.membranes.READ_LATENCY`), and registered."""
        plan, port = self.plan, self.membranes
        L, mw = plan.lanes, plan.membrane_width
        layout = accumulate_issue_layout(plan.rows, plan.timesteps)
        reading, executed = Signal(layout), Signal(layout)
        # `shifting`, the issue in the shift cycle, and for wide stages a copy of it for each FANOUT_LANES lanes'
        # addends (hw/fanout.py; `shifting` itself then also a kept copy, else yosys merges it into one of them).
        groups = -(-L // FANOUT_LANES)
        shifting, *controls = fanout_copies(m, "shifting", reading, layout, 1 if groups == 1 else 1 + groups)
        controls = controls or [shifting]
        weight_row, bias_row = weights.data, biases.data       # (TABLE_LATENCY: the tables register their rows)
        m.d.sync += [reading.eq(issue), executed.eq(shifting)]
        # A CLEAR's row reads as 0: the bank zeroes it on the way into its read register.
        m.d.comb += [port.read_addr.eq(reading.row), port.zero_read.eq(shifting.valid & (shifting.op == AccumulateOp.CLEAR))]
        addend_width = max(plan.weight_width + plan.timesteps - 1, plan.bias_width)
        membrane = lanes_view(mw, L, port.read_data)
        weight = lanes_view(plan.weight_width, L, weight_row)
        bias = lanes_view(plan.bias_width, L, bias_row)
        updated = lanes_view(mw, L, port.write_data)
        for lane in range(L):
            addend, control = Signal(signed(addend_width), name=f"addend{lane}"), controls[lane // FANOUT_LANES]
            m.d.sync += addend.eq(accumulate_addend(control.op, control.spike, weight[lane], bias[lane],
                                                    control.shift))
            unit = ILIFAccumulate(mw, addend_width)
            m.submodules[f"accumulate{lane}"] = unit
            m.d.comb += [unit.membrane.eq(membrane[lane]), unit.addend.eq(addend),
                         updated[lane].eq(unit.updated)]
        m.d.comb += [port.write_addr.eq(executed.row), port.write_en.eq(executed.valid)]


class _DenseWalk:
    """Passes walk the ``B`` rows; an input spike event adds its weight column, one block per cycle.

    Weight rows are block-major: row ``b * inputs + i`` holds input ``i``'s weights for block ``b``.
    """

    def __init__(self, m: Module, plan: LayerPlan, events, issue, weights, biases):
        self.plan, self.events, self.issue = plan, events, issue
        # row == 0 and row == B - 1 in registers (compares in front of the weights' read address and the
        # event's ready were 2 of the 6 LUTs of the iCE40's slowest path).
        self.block = WrappingCounter(plan.blocks, "row")
        self.row = self.block.value
        self.weight_row = index_signal(plan.blocks * plan.inputs)
        self.weight_row_next = Signal.like(self.weight_row)     # row of the same event in the next block
        # The weights' address follows the event in every state (read only for an event): under EVENTS it
        # was the binary step state's decode in front of the address, the iCE40's slowest path.
        m.d.comb += [issue.row.eq(self.row), weights.addr.eq(self.weight_row), biases.addr.eq(self.row),
                     self.weight_row.eq(Mux(self.block.first, events.payload.addr, self.weight_row_next))]
        # The next block's row, in every cycle (no enable: the step state's decode was in front of it). It is
        # read only in an event's later blocks, and an event on offer is walked in every cycle until taken.
        # (Both sums from registers, then the choice: the sum of the chosen row was one path with the state.)
        m.d.sync += self.weight_row_next.eq(Mux(self.block.first, events.payload.addr + plan.inputs,
                                                self.weight_row_next + plan.inputs))

    def start_pass(self, m: Module) -> None:
        self.block.restart(m)

    def advance_pass(self, m: Module) -> Value:
        self.block.advance(m)
        return self.block.last

    def on_event(self, m: Module) -> None:
        payload = self.events.payload
        m.d.comb += [self.issue.valid.eq(1), self.issue.op.eq(AccumulateOp.ADD), self.issue.spike.eq(payload.spike)]
        with m.If(self.advance_pass(m)):
            m.d.comb += self.events.ready.eq(1)


class DenseAccumulate(AccumulateStage):
    """Accumulate stage of a fully connected layer: an event costs ``B`` cycles (one per block)."""

    def __init__(self, plan: LayerPlan):
        assert plan.conv is None
        super().__init__(plan)

    def walk(self, m, events, issue, in_pass, weights, biases) -> RowWalk:
        return _DenseWalk(m, self.plan, events, issue, weights, biases)
