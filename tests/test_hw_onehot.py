"""The one-hot state machine helper (hw/onehot.py): exactly one state flip-flop set, m.FSM's rules."""

from amaranth import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from spikesmith.hw.onehot import OneHotFSM


class _Machine(Elaboratable):
    """A -> B, or C when ``detour`` (a later ``next`` in A), or stay in A when ``hold`` (later still);
    B and C go back to A."""

    def __init__(self):
        self.detour, self.hold = Signal(), Signal()
        self.states: dict[str, Signal] = {}
        self.in_b_or_c = None

    def elaborate(self, platform):
        m = Module()
        fsm = OneHotFSM(m, "test", initial="A")
        self.in_b_or_c = fsm.group("b_or_c", ["B", "C"])
        with fsm.State("A"):
            fsm.next = "B"
            with m.If(self.detour):
                fsm.next = "C"
            with m.If(self.hold):
                fsm.next = "A"
        with fsm.State("B"):
            fsm.next = "A"
        with fsm.State("C"):
            fsm.next = "A"
        self.states = fsm.bits
        return m


def _visited(detour: int, hold: int, group: bool = False) -> list[str]:
    """The states set on each of the first four cycles, for constant inputs (with ``group``, a "+"
    after them when the B-or-C group's flip-flop is set)."""
    dut = _Machine()
    seen = []

    async def bench(ctx):
        ctx.set(dut.detour, detour)
        ctx.set(dut.hold, hold)
        for _ in range(4):
            seen.append("".join(name for name, bit in dut.states.items() if ctx.get(bit))
                        + ("+" if group and ctx.get(dut.in_b_or_c) else ""))
            await ctx.tick()

    sim = Simulator(dut)        # (elaborates: the state flip-flops exist from here)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen


def test_the_initial_state_is_set_alone_and_transitions_move_the_one_bit():
    assert _visited(detour=0, hold=0) == ["A", "B", "A", "B"]


def test_a_later_next_in_the_same_state_wins():
    assert _visited(detour=1, hold=0) == ["A", "C", "A", "C"]


def test_a_later_next_back_to_the_same_state_keeps_it():
    assert _visited(detour=1, hold=1) == ["A", "A", "A", "A"]


def test_a_group_flip_flop_is_set_exactly_while_in_one_of_its_states():
    assert _visited(detour=0, hold=0, group=True) == ["A", "B+", "A", "B+"]
    assert _visited(detour=1, hold=0, group=True) == ["A", "C+", "A", "C+"]
    assert _visited(detour=1, hold=1, group=True) == ["A", "A", "A", "A"]
