"""How much memory the machine has free, and a one-line refusal when a step needs more."""

from __future__ import annotations

import os

from .errors import SpikesmithError

__all__ = ["available_memory", "require_memory"]

#: The share of the free memory one step may plan to use.
SHARE = 0.8


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
