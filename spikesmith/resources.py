"""How much memory the machine has free, and one memory budget for what a file's contents decide.

Every reader of untrusted input (``.pt2``, ``.nir``, ``.npz``, IDX, CIFAR) counts each allocation
whose size the file decides (a declared array, a decompressed member, a dense expansion) against
one :class:`MemoryBudget` *before* making it, and refuses in one line naming the file part and the
size. The budget is :data:`SHARE` of the free memory, or ``SPIKESMITH_MEMORY_LIMIT`` (bytes, or
with a ``K``/``M``/``G`` suffix: ``SPIKESMITH_MEMORY_LIMIT=512M``) when set.
"""

from __future__ import annotations

import os
import re

from .errors import SpikesmithError

__all__ = ["available_memory", "require_memory", "MemoryBudget", "reading_limit", "MemoryBudgetError",
           "LIMIT_VARIABLE"]

#: The share of the free memory one step may plan to use.
SHARE = 0.8
#: The environment variable that sets the reading budget (bytes, or with a K/M/G suffix).
LIMIT_VARIABLE = "SPIKESMITH_MEMORY_LIMIT"
_SIZE = re.compile(r"([0-9]{1,15})([KMG]?)i?B?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class MemoryBudgetError(SpikesmithError):
    """A file's contents would make spikesmith allocate more than its memory budget."""


def available_memory() -> int:
    """Bytes of memory free for a new allocation (``MemAvailable``; the free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62     # unknown: do not refuse


def require_memory(needed: int, what: str) -> None:
    """Refuse, in one line, a step that would need more than :data:`SHARE` of the free memory."""
    free = available_memory()
    if needed > SHARE * free:
        raise SpikesmithError(f"{what} needs about {needed / 2**30:.1f} GiB of memory; this machine has "
                              f"{free / 2**30:.1f} GiB free")


def reading_limit() -> int:
    """The reading budget in bytes: ``SPIKESMITH_MEMORY_LIMIT`` if set, else :data:`SHARE` of the free memory."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return int(SHARE * available_memory())
    match = _SIZE.fullmatch(text)
    if not match:
        raise SpikesmithError(f"{LIMIT_VARIABLE}={text!r} is not a size (e.g. 512M, 2G or a number of bytes)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


class MemoryBudget:
    """A running count of the bytes that reading one input may allocate.

    ``take(n, what)`` counts ``n`` bytes before the caller allocates them and raises
    :class:`MemoryBudgetError` (one line: ``what``, the size, the budget) when the total would
    pass the limit; nothing is allocated by the budget itself.
    """

    def __init__(self, limit: int | None = None):
        self.limit = reading_limit() if limit is None else int(limit)
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` (an int of any size: a declared size may be absurd) for ``what``."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise MemoryBudgetError(f"{what} declares a negative size")
        if self.used + nbytes > self.limit:
            raise MemoryBudgetError(
                f"{what} would need {_size(nbytes)} of memory; the budget for reading it is {_size(self.limit)} "
                f"({_size(self.used)} used; set {LIMIT_VARIABLE} to change it)")
        self.used += nbytes
