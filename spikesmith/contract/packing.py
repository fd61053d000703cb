"""Small arithmetic shared by the plans: ceiling division and packing integers into a memory row."""

from __future__ import annotations

__all__ = ["ceil_div", "pack_row"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_row(values, width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one row, element 0 in the LSBs."""
    mask = (1 << width) - 1
    row = 0
    for k, v in enumerate(values):
        row |= (int(v) & mask) << (k * width)
    return row
