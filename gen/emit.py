"""Emit the core: Verilog of the Amaranth design, the sizing report, and a Verilator lint.

Files are written to a temporary name and renamed, so an interrupted run leaves no partial
file. The port list of the top module is documented in docs/core.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..contract.plan import CorePlan
from ..errors import SpikesmithError
from ..fileio import check_output_folder, replace_outputs, write_atomic
from ..processes import run_group
from ..hw.core import emit_verilog
from ..toolchain import verilator_binary, verilator_env

__all__ = ["VERILOG_NAME", "REPORT_NAME", "LINT_WAIVERS", "write_core", "elaboration_bytes", "lint_verilog",
           "LintError", "multiplications"]

VERILOG_NAME = "spikesmith_core.v"
REPORT_NAME = "report.json"

#: Verilator ``-Wall`` warnings waived for the emitted Verilog, each with the reason.
LINT_WAIVERS = {
    "WIDTHEXPAND": "yosys' write_verilog leaves sign/zero extension implicit; Amaranth defines it",
    "WIDTHTRUNC": "truncations are deliberate: gen/bounds.py proves the dropped bits carry nothing",
    "UNUSEDSIGNAL": "yosys keeps intermediate wires and the unused top bits of widened sums",
    "CASEINCOMPLETE": "yosys emits case statements whose default is the assignment before them",
    "PROCASSINIT": "registers carry their reset value as an initialiser, as Amaranth emits them",
    "DECLFILENAME": "every submodule of the core is in the one file spikesmith_core.v",
}


class LintError(SpikesmithError):
    """Verilator found a problem in the emitted Verilog (a generator bug)."""


def elaboration_bytes(plan: CorePlan) -> int:
    """Memory that elaborating and emitting ``plan``'s core takes, estimated: measured at about
    130 bytes per bit of memory contents (a 784-2048-10 MLP: 13.2 Mbit, 1.7 GB) over a 300 MB base."""
    return 300_000_000 + 150 * plan.memory_bits()


def write_core(plan: CorePlan, out_dir: Path, verilog: str | None = None, lint: bool = True) -> dict[str, Path]:
    """Write ``spikesmith_core.v`` and ``report.json`` into ``out_dir`` (created if missing).

    Both are written and (``lint``) the Verilog linted in a staging folder beside ``out_dir``
    first, then moved in (``spikesmith.fileio.replace_outputs``): an interrupted or failed run
    never leaves new Verilog beside an old report, and nothing spikesmith did not write is touched.
    """
    out_dir = check_output_folder(out_dir)
    text = emit_verilog(plan) if verilog is None else verilog
    staging = Path(tempfile.mkdtemp(prefix=".spikesmith-generate-", dir=out_dir.parent))
    try:
        write_atomic(staging / VERILOG_NAME, text)
        write_atomic(staging / REPORT_NAME, json.dumps(plan.report(), indent=2) + "\n")
        if lint:
            warnings = lint_verilog(staging / VERILOG_NAME)
            if warnings:
                raise LintError(f"Verilator lint of {out_dir / VERILOG_NAME}: {warnings[0]} "
                                "(a generator bug; please report it)")
        replace_outputs(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"verilog": out_dir / VERILOG_NAME, "report": out_dir / REPORT_NAME}


def lint_verilog(path: Path, top: str = "spikesmith_core") -> list[str]:
    """``verilator --lint-only -Wall`` of module ``top`` with :data:`LINT_WAIVERS`; returns its warnings (empty: clean)."""
    command = [str(verilator_binary()), "--lint-only", "-Wall", *[f"-Wno-{w}" for w in LINT_WAIVERS],
               "--top-module", top, str(path)]
    proc = run_group(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=verilator_env(),
                     timeout=600)
    messages = [line for line in proc.stderr.splitlines() if line.startswith("%")]
    if proc.returncode != 0 and not messages:
        raise LintError(f"verilator failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return messages


_MULTIPLY = re.compile(r"[\w)\]]\s*\*\s*[\w(\\$]")


def multiplications(verilog: str) -> list[str]:
    """Lines of Verilog with a ``*`` operator (attributes ``(* *)`` and ``@*`` excluded)."""
    lines = []
    for line in verilog.splitlines():
        code = re.sub(r"\(\*.*?\*\)", "", line).replace("@*", "")
        if _MULTIPLY.search(code):
            lines.append(line.strip())
    return lines
