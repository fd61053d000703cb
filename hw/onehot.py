"""A state machine with one flip-flop per state, written like ``m.FSM``.

    fsm = OneHotFSM(m, "receive", initial="HUNT")
    with fsm.State("HUNT"):
        with m.If(byte == SYNC):
            fsm.next = "TYPE"

Amaranth encodes ``m.FSM`` states in binary, and yosys does not re-encode a state register with
an initial value; on the iCE40 the decode of a 4-5 bit state then sat at the front of the
receiver's slowest paths. Here "in state S" is one flip-flop, so every state test is a wire.
Transitions keep ``m.FSM``'s rule that the last ``next`` of a cycle wins.
"""

from __future__ import annotations

from contextlib import contextmanager

from amaranth import Module, Signal

__all__ = ["OneHotFSM"]


class OneHotFSM:
    """One-hot states in ``m``, named ``{name}_{state}``; ``initial``'s flip-flop is set at reset.
    A state's flip-flop comes with its first mention (:meth:`State`, ``next``)."""

    def __init__(self, m: Module, name: str, initial: str):
        self._m, self._name, self._initial = m, name, initial
        self.bits: dict[str, Signal] = {}
        self._current: str | None = None
        self._targets: list[str] = []          # states the current block has chosen so far
        self._groups: list[tuple[Signal, frozenset[str]]] = []
        self._transitions = False              # a `next` was written (groups come before)
        self._bit(initial)

    def _bit(self, state: str) -> Signal:
        if state not in self.bits:
            self.bits[state] = Signal(name=f"{self._name}_{state}", init=(state == self._initial))
        return self.bits[state]

    def group(self, name: str, states) -> Signal:
        """A flip-flop set while the machine is in any of ``states``: written with each ``next``, so
        it is one register where the OR of their flip-flops would be a few LUTs. Declare it before
        the transitions."""
        states = frozenset(states)
        assert not self._transitions, "groups are declared before the transitions"
        flag = Signal(name=f"{self._name}_{name}", init=(self._initial in states))
        self._groups.append((flag, states))
        return flag

    @contextmanager
    def State(self, state: str):
        """Statements of ``state`` (its flip-flop is set)."""
        assert self._current is None, "states do not nest"
        self._current, self._targets = state, []
        try:
            with self._m.If(self._bit(state)):
                yield
        finally:
            self._current = None

    @property
    def next(self):
        raise AttributeError("next is write-only")

    @next.setter
    def next(self, target: str) -> None:
        """Go to ``target`` on the next cycle. A later ``next`` in the same state wins: the states
        chosen before are cleared again (and the current one set, if it is the target)."""
        assert self._current is not None, "next is set inside a State"
        self._transitions = True
        if target not in self._targets:
            self._targets.append(target)
        self._bit(target)
        self._m.d.sync += [self.bits[state].eq(state == target)
                           for state in dict.fromkeys((self._current, *self._targets))]
        self._m.d.sync += [flag.eq(target in states) for flag, states in self._groups]

    def ongoing(self, state: str) -> Signal:
        """The flip-flop of ``state``."""
        return self._bit(state)
