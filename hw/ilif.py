"""The iLIF neuron datapath (k = 2, soft reset): adders, shifts and comparators, no multipliers.

One instance of each per lane. :class:`ILIFAccumulate` is combinational (the accumulate
stage registers around it); :class:`ILIFFire` has a register between its carry chains and its
result.
Semantics: docs/semantics.md ("One layer"); widths come from spikesmith/contract/bounds.py, which proves that
no result of a valid network leaves ``membrane_width`` bits.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AccumulateOp", "accumulate_addend", "ILIFAccumulate", "ILIFFire"]


class AccumulateOp(enum.Enum, shape=2):
    """What the accumulate stage does to a membrane this cycle."""
    CLEAR = 0   # V <- 0 (a fresh image starts from zero)
    ADD = 1     # V <- V + W * 2**(T-1-t) if the input spiked (one spike event of step t)
    BIAS = 2    # V <- V + B (once, after the last accumulation step)


def accumulate_addend(op, spike, weight, bias, shift):
    """What an :class:`AccumulateOp` adds to the membrane: the weight shifted left by ``shift``
    (``T-1-t`` at step ``t``) if the input spiked (ADD), the bias (BIAS), else 0 (CLEAR too).

    ``V <- 2V + sum W*s`` over ``T`` steps leaves ``sum_t 2**(T-1-t) * sum W*s[t]``: each event
    adds its weight with the doublings of the steps after it, so no step doubles the bank
    (docs/core.md, "One layer engine"). The accumulate stage registers the addend before
    :class:`ILIFAccumulate`."""
    return Mux(op == AccumulateOp.BIAS, bias, Mux((op == AccumulateOp.ADD) & spike, weight << shift, 0))


class ILIFAccumulate(wiring.Component):
    """One membrane's accumulate-phase update: ``updated = membrane + addend``, one adder and
    nothing before or after it.

    ``membrane`` and ``updated`` are ``membrane_width``-bit signed; ``addend`` is signed of
    ``addend_width`` (:func:`accumulate_addend`, 0 for CLEAR, whose membrane the bank's
    ``zero_read`` makes 0).
    """

    def __init__(self, membrane_width: int, addend_width: int):
        self.membrane_width = membrane_width
        super().__init__({
            "membrane": In(signed(membrane_width)),
            "addend": In(signed(addend_width)),
            "updated": Out(signed(membrane_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.updated.eq(self.membrane + self.addend)
        return m


class ILIFFire(wiring.Component):
    """One membrane's firing step: ``V <- 2V; if V >= theta: spike, V <- V - theta``, in two cycles.

    With ``first`` high (the first firing step) the membrane is clamped to ``[0, theta]``
    before the doubling (the saturation of docs/semantics.md). ``membrane``/``updated``:
    ``membrane_width``-bit signed; ``threshold``: ``threshold_width``-bit unsigned, >= 1.
    ``spike`` and ``updated`` are those of the inputs of the cycle before (one cycle of latency).
    """

    def __init__(self, membrane_width: int, threshold_width: int):
        super().__init__({
            "first": In(1),
            "membrane": In(signed(membrane_width)),
            "threshold": In(unsigned(threshold_width)),
            "spike": Out(1),
            "updated": Out(signed(membrane_width)),
        })
        self.membrane_width = membrane_width

    def elaborate(self, platform):
        """The carry chains, then registers, then the choice. Cycle 1: ``2V - theta`` (its sign is
        the spike, its value the soft reset) and, beside it, ``V > theta`` for the first step's clamp,
        are registered with ``V`` and the clamp's flags. Cycle 2: the choice, from registers: a clamped
        membrane gives 0 (``V < 0``: no spike) or ``2*theta - theta = theta`` (a spike); else ``2V -
        theta`` if it fired, ``2V`` if not. (Choosing by the sign in cycle 1 put a multiplexer per
        bit, selected by the end of the carry chain, in its path: the iCE40's slowest.)"""
        m = Module()
        v, theta, mw = self.membrane, self.threshold, self.membrane_width
        difference = Signal(signed(mw + 2))                           # 2V - theta
        m.d.comb += difference.eq((v << 1) - theta)
        # V > theta as the sign of theta - V: an adder's carry chain (a compare was a chain of LUTs on the iCE40)
        above = Signal(signed(mw + 2))
        m.d.comb += above.eq(theta - v)
        kept_v, kept_difference, spiked = Signal(signed(mw)), Signal(signed(mw)), Signal()
        to_zero, to_theta, kept_theta = Signal(), Signal(), Signal.like(theta)
        m.d.sync += [kept_v.eq(v), kept_difference.eq(difference), spiked.eq(~difference[-1]), kept_theta.eq(theta),
                     to_zero.eq(self.first & v[-1]), to_theta.eq(self.first & ~v[-1] & above[-1])]
        stepped = Mux(spiked, kept_difference, kept_v << 1)           # the result without a clamp
        m.d.comb += [self.spike.eq(~to_zero & (to_theta | spiked)),
                     self.updated.eq(Mux(to_zero, 0, Mux(to_theta, kept_theta, stepped)))]
        return m
