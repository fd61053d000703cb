"""The iLIF neuron datapath (k = 2, soft reset): adders, shifts and comparators, no multipliers.

One instance of each per lane. Both are combinational; the engines register around them.
Semantics: docs/semantics.md ("One layer"); widths come from spikesmith/contract/bounds.py, which proves that
no result of a valid network leaves ``membrane_width`` bits.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AccumulateOp", "ILIFAccumulate", "ILIFFire"]


class AccumulateOp(enum.Enum, shape=2):
    """What the accumulate stage does to a membrane this cycle."""
    CLEAR = 0   # V <- 0 (the first step's doubling: a fresh image starts from zero)
    DOUBLE = 1  # V <- 2V (the amplification k = 2: a shift)
    ADD = 2     # V <- V + W if the input spiked (one input spike event)
    BIAS = 3    # V <- V + B (once, after the last accumulation step)


class ILIFAccumulate(wiring.Component):
    """One membrane's accumulate-phase update.

    ``membrane`` and ``updated`` are ``membrane_width``-bit signed; ``weight`` and ``bias``
    are signed of their widths; ``op`` is an :class:`AccumulateOp`.
    """

    def __init__(self, membrane_width: int, weight_width: int, bias_width: int):
        self.membrane_width = membrane_width
        super().__init__({
            "op": In(AccumulateOp),
            "spike": In(1),
            "membrane": In(signed(membrane_width)),
            "weight": In(signed(weight_width)),
            "bias": In(signed(bias_width)),
            "updated": Out(signed(membrane_width)),
        })

    def elaborate(self, platform):
        m = Module()
        with m.Switch(self.op):
            with m.Case(AccumulateOp.CLEAR):
                m.d.comb += self.updated.eq(0)
            with m.Case(AccumulateOp.DOUBLE):
                m.d.comb += self.updated.eq(self.membrane << 1)
            with m.Case(AccumulateOp.ADD):
                m.d.comb += self.updated.eq(self.membrane + Mux(self.spike, self.weight, 0))
            with m.Case(AccumulateOp.BIAS):
                m.d.comb += self.updated.eq(self.membrane + self.bias)
        return m


class ILIFFire(wiring.Component):
    """One membrane's firing step: ``V <- 2V; if V >= theta: spike, V <- V - theta``.

    With ``first`` high (the first firing step) the membrane is clamped to ``[0, theta]``
    before the doubling (the saturation of docs/semantics.md). ``membrane``/``updated``:
    ``membrane_width``-bit signed; ``threshold``: ``threshold_width``-bit unsigned, >= 1.
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
        """One carry chain on the path: ``2V - theta``, whose sign is the spike and whose value is the
        soft reset. The first step's clamp needs no chain of its own: ``V < 0`` is the sign bit (no
        spike, 0), and ``V > theta`` (a comparator beside the subtraction, not after it) gives
        2*theta - theta: a spike and ``theta``."""
        m = Module()
        v, theta = self.membrane, self.threshold
        doubled = Signal(signed(self.membrane_width + 1))
        difference = Signal(signed(self.membrane_width + 2))        # 2V - theta
        m.d.comb += [doubled.eq(v << 1), difference.eq(doubled - theta)]
        fires = ~difference[-1]                                       # 2V >= theta
        with m.If(self.first & v[-1]):                                # clamped to 0: 2*0 < theta
            m.d.comb += [self.spike.eq(0), self.updated.eq(0)]
        with m.Elif(self.first & (v > theta)):                        # clamped to theta: 2*theta - theta
            m.d.comb += [self.spike.eq(1), self.updated.eq(theta)]
        with m.Else():
            m.d.comb += [self.spike.eq(fires), self.updated.eq(Mux(fires, difference, doubled))]
        return m
