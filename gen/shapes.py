"""Shape ops in an exported graph: which only reinterpret the row-major order of the values.

spikesmith's values are flat vectors in row-major (C, H, W) order, so an op that keeps that
order (``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ``unsqueeze``, a
``permute`` or ``transpose`` that moves only size-1 axes) is exact as a no-op that changes the
shape later layers see. An op that would reorder the values is refused with its name. The
batch axis (axis 0 of an exported, batched graph; exported with a batch of one) must stay
where it is: these checks decide that from the op's arguments, since a batch of one cannot
tell squeezing it from squeezing another size-1 axis.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UnsupportedModelError

__all__ = ["SQUEEZE_OPS", "permutation", "keeps_order", "check_batch_axis"]

#: ATen op names (``aten.<name>.<overload>`` without the ``aten.``) whose batch axis needs checking.
SQUEEZE_OPS = ("squeeze.default", "squeeze.dim", "squeeze.dims", "unsqueeze.default")


def _axis(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def permutation(op: str, args: Sequence, rank: int) -> tuple[int, ...]:
    """The axis order an axis-permuting op produces: output axis ``k`` is input axis ``result[k]``."""
    order = list(range(rank))
    if op == "permute.default":
        return tuple(_axis(int(d), rank) for d in args[0])
    if op == "transpose.int":
        a, b = _axis(int(args[0]), rank), _axis(int(args[1]), rank)
        order[a], order[b] = order[b], order[a]
        return tuple(order)
    if op == "t.default":
        return tuple(reversed(order))
    raise ValueError(op)


def keeps_order(shape: Sequence[int], order: Sequence[int]) -> bool:
    """Whether permuting ``shape``'s axes into ``order`` leaves the row-major values in place:
    the axes longer than one keep their relative order."""
    moved = [axis for axis in order if shape[axis] != 1]
    return moved == sorted(moved)


def check_batch_axis(op: str, args: Sequence, in_rank: int, out_rank: int, where: str) -> None:
    """Refuse a squeeze or unsqueeze of a batched graph that would touch the batch axis (axis 0)."""
    if op == "squeeze.default":
        raise UnsupportedModelError(
            f"{where} squeezes every size-1 axis, which for a batch of one is the batch axis too; "
            f"name the axes (x.squeeze(1))")
    if op in ("squeeze.dim", "squeeze.dims"):
        dims = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        if any(_axis(int(d), in_rank) == 0 for d in dims):
            raise UnsupportedModelError(f"{where} squeezes axis 0, the batch axis")
    if op == "unsqueeze.default" and _axis(int(args[0]), out_rank) == 0:
        raise UnsupportedModelError(f"{where} inserts an axis before the batch axis")
