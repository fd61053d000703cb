"""The step structure every accumulate stage shares (docs/core.md, "One layer engine").

Per image: claim an empty bank; per step ``t = 0..T-1`` a pass over the membrane rows that
doubles them (the first step's pass writes zeros: the bank is cleared for free), then the
step's input events until its end marker; then a pass that adds the biases, and the hand-over
of the bank to the fire stage. A dense and a convolution stage differ only in how they walk
the rows and what an event costs; they pass those parts in.
"""

from __future__ import annotations

from typing import Callable

from amaranth import Module, Mux, Signal, Value

from .events import index_signal
from .ilif import AccumulateOp

__all__ = ["accumulate_fsm"]


def accumulate_fsm(m: Module, banks, events, timesteps: int, *, issue: Signal, op: Signal, in_pass: Signal,
                   start_pass: Callable[[], None], advance_pass: Callable[[], Value],
                   on_event: Callable[[], None]) -> None:
    """Add the accumulate stage's state machine to ``m``.

    ``start_pass()`` puts the pass counters at the first row (in the claim cycle);
    ``advance_pass()`` steps them, wrapping after the last row, and returns "this is the last
    row"; ``on_event()`` handles the valid, non-marker event on offer (issues its row
    operations and raises ``events.ready`` in its last cycle). ``issue``/``op`` name the row
    operation of this cycle; ``in_pass`` is high during the doubling and bias passes.
    """
    step = index_signal(timesteps)
    with m.FSM(name="accumulate"):
        with m.State("CLAIM"):
            with m.If(~banks.full.bit_select(banks.fill_bank, 1)):
                start_pass()
                m.d.sync += step.eq(0)
                m.next = "DOUBLE"
        with m.State("DOUBLE"):
            m.d.comb += [in_pass.eq(1), issue.eq(1),
                         op.eq(Mux(step == 0, AccumulateOp.CLEAR, AccumulateOp.DOUBLE))]
            with m.If(advance_pass()):
                m.next = "EVENTS"
        with m.State("EVENTS"):
            with m.If(events.valid & events.payload.end):
                m.d.comb += events.ready.eq(1)
                with m.If(step == timesteps - 1):
                    m.next = "BIAS"
                with m.Else():
                    m.d.sync += step.eq(step + 1)
                    m.next = "DOUBLE"
            with m.Elif(events.valid):
                on_event()
        with m.State("BIAS"):
            m.d.comb += [in_pass.eq(1), issue.eq(1), op.eq(AccumulateOp.BIAS)]
            with m.If(advance_pass()):
                m.next = "HANDOVER"
        with m.State("HANDOVER"):   # the last bias row is written this cycle
            banks.handover(m)
            m.next = "CLAIM"
