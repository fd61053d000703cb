"""The iLIF lane datapath (hw/ilif.py) against docs/semantics.md, exhaustively on small widths."""

import pytest
from amaranth import Elaboratable, Module, Mux, Signal, signed
from amaranth.sim import Simulator

from spikesmith.hw.ilif import AccumulateOp, ILIFAccumulate, ILIFFire, accumulate_addend


def _run(dut, vectors, check, clocked: bool = False):
    """Apply every input vector to ``dut``; collect what ``check`` reports, at once (combinational)
    or after a clock edge (``clocked``: one cycle of latency)."""
    failures = []

    async def bench(ctx):
        for inputs in vectors:
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            if clocked:
                await ctx.tick()
            problem = check(ctx, inputs)
            if problem:
                failures.append(problem)

    sim = Simulator(dut)
    if clocked:
        sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return failures


@pytest.mark.parametrize("membrane_width,threshold_width", [(6, 4), (5, 1), (8, 6)])
def test_fire_step_matches_semantics(membrane_width, threshold_width):
    """Every membrane and threshold the bounds allow: clamp on the first step, double, spike, subtract."""
    dut = ILIFFire(membrane_width, threshold_width)
    top = (1 << (membrane_width - 1)) - 1
    vectors = []
    for theta in range(1, min(1 << threshold_width, top // 2 + 1)):     # 2 * theta fits the membrane
        for first in (0, 1):
            values = range(-top - 1, top + 1) if first else range(0, theta + 1)
            vectors += [{"first": first, "membrane": v, "threshold": theta} for v in values]
    assert len(vectors) > 30

    def check(ctx, x):          # (the register: each vector is checked a clock edge after it is applied)
        v, theta = x["membrane"], x["threshold"]
        if x["first"]:
            v = min(max(v, 0), theta)
        v *= 2
        spike = int(v >= theta)
        want = (spike, v - theta if spike else v)
        got = (ctx.get(dut.spike), ctx.get(dut.updated))
        return None if got == want else f"{x}: got {got}, want {want}"

    assert _run(dut, vectors, check, clocked=True) == []


class _AccumulateWithAddend(Elaboratable):
    """ILIFAccumulate behind accumulate_addend, as the accumulate stage joins them (less the register),
    with a CLEAR's membrane read as 0, as the bank's ``zero_read`` gives it."""

    def __init__(self, mw: int, ww: int, bw: int, timesteps: int):
        self.op, self.spike, self.shift = Signal(AccumulateOp), Signal(), Signal(range(timesteps))
        self.membrane, self.weight, self.bias = Signal(signed(mw)), Signal(signed(ww)), Signal(signed(bw))
        self.unit = ILIFAccumulate(mw, max(ww + timesteps - 1, bw))
        self.updated = self.unit.updated

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        m.d.comb += [self.unit.membrane.eq(Mux(self.op == AccumulateOp.CLEAR, 0, self.membrane)),
                     self.unit.addend.eq(accumulate_addend(self.op, self.spike, self.weight, self.bias, self.shift))]
        return m


def test_accumulate_ops_match_semantics():
    """CLEAR, ADD (spike or not, every shift) and BIAS on every in-range membrane, weight and bias."""
    mw, ww, bw, T = 7, 3, 4, 3
    dut = _AccumulateWithAddend(mw, ww, bw, T)
    lo, hi = -(1 << (mw - 1)), (1 << (mw - 1)) - 1
    vectors = []
    for v in range(lo, hi + 1):
        for w in range(-(1 << (ww - 1)) + 1, 1 << (ww - 1)):
            for op, spike, shift in ((AccumulateOp.CLEAR, 0, 0), (AccumulateOp.ADD, 0, 2), (AccumulateOp.BIAS, 0, 1),
                                     *((AccumulateOp.ADD, 1, k) for k in range(T))):
                vectors.append({"op": op, "spike": spike, "shift": shift, "membrane": v, "weight": w, "bias": 2 * w})
    expected = {
        AccumulateOp.CLEAR: lambda x: 0,
        AccumulateOp.ADD: lambda x: x["membrane"] + ((x["weight"] << x["shift"]) if x["spike"] else 0),
        AccumulateOp.BIAS: lambda x: x["membrane"] + x["bias"],
    }
    # Only results the width bounds allow: a valid network never produces the others.
    vectors = [x for x in vectors if lo <= expected[x["op"]](x) <= hi]

    def check(ctx, x):
        want, got = expected[x["op"]](x), ctx.get(dut.updated)
        return None if got == want else f"{x}: got {got}, want {want}"

    assert _run(dut, vectors, check) == []
