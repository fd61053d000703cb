"""Sizing of the streaming layers: which leading layers of a network stream (its convolutions from the image
on, and the max pools they read), their lanes and chunks, and the plans they are built from
(:mod:`spikesmith.contract.streaming`; docs/core.md, "Streaming convolution engine")."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..contract.bounds import layer_bounds
from ..contract.network import DenseLayer, SpikingNetwork
from ..contract.packing import ceil_div
from ..contract.streaming import (StreamConvPlan, StreamPoolPlan, live_chunks, nonzero_taps, plan_stream_conv,
                                  step_groups, store_aligned)
from ..errors import SpikesmithError

__all__ = ["StreamChoice", "window_in_ram", "streamed_layers", "stream_options", "choose_stream", "plan_stream",
           "stream_input_order", "DEFAULT_ADDER_BUDGET"]

#: Adder inputs (lanes times taps a cycle, summed over the streaming convolutions) when the user does not say.
DEFAULT_ADDER_BUDGET = 1024
#: A window in RAM pays off from this many taps times steps a cycle: its operation mask (about 10 LUT4s a bit,
#: ``G * chunks``, about ``T * taps / (K * S)`` bits) against about 2.5 LUT4s a window bit in registers
#: (``STREAM_LOGIC`` in gen/build.py).
STORE_MIN_INPUTS = 8


@dataclass(frozen=True)
class StreamChoice:
    """One streaming convolution's parallelism: ``lanes`` output channels, ``chunk`` taps and ``steps`` time
    steps (a power of two; sizing takes more than one only for the whole window) a cycle."""
    lanes: int
    chunk: int
    steps: int = 1
    in_ram: bool = False   # the window in a memory (:func:`window_in_ram`)

    @property
    def adders(self) -> int:
        """Adder inputs: ``lanes * chunk * steps`` (each a masked weight into a lane's tree)."""
        return self.lanes * self.chunk * self.steps

    def __str__(self) -> str:
        return (f"{self.lanes}x{self.chunk}" + (f"x{self.steps} steps" if self.steps > 1 else "")
                + (" (window in RAM)" if self.in_ram else ""))


def window_in_ram(layer: DenseLayer, choice: StreamChoice, timesteps: int, store_taps=None) -> bool:
    """Whether ``choice`` keeps the convolution's window in a memory: its chunk lines up with the input's pixels
    (:func:`~spikesmith.contract.streaming.store_aligned`), the kernel has more than one tap a channel, and the
    worst case does not grow: a pixel's ``kh * kw`` reads wait for the hand-over, so the sequencer's worst case
    a pixel (``G * live + B + 1``; ``live``: the blocks' live chunks, summed) must cover them and two cycles;
    and it has at least :data:`STORE_MIN_INPUTS` taps times steps a cycle. ``store_taps``: the kernel's
    :func:`~spikesmith.contract.streaming.nonzero_taps` in the store's order, if the caller has them."""
    g = layer.conv.geometry
    (kh, kw), c_in = g.kernel, g.in_shape[0]
    if kh * kw == 1 or choice.chunk * choice.steps < STORE_MIN_INPUTS or not store_aligned(c_in, choice.chunk):
        return False
    if store_taps is None:
        store_taps = nonzero_taps(layer.conv.kernel, window_in_ram=True)
    busy = step_groups(timesteps, choice.steps) * _live(store_taps, choice) + g.out_channels // choice.lanes + 1
    return busy >= kh * kw + 2


def _live(nonzero, choice: StreamChoice) -> int:
    """The blocks' live chunks, summed (a block of zero weights visits one)."""
    return int(np.maximum(live_chunks(nonzero, choice.lanes, choice.chunk).sum(axis=1), 1).sum())



def streamed_layers(net: SpikingNetwork) -> int:
    """How many leading layers stream: the convolutions from the image on (a max pool they read included)."""
    count = 0
    for layer in net.layers[:-1]:          # the output layer is always dense
        if layer.conv is None:
            break
        count += 1
    return count


def stream_options(layer: DenseLayer, timesteps: int, lanes: int | None = None,
                   steps: int = 1, stored: bool = False) -> list[tuple[StreamChoice, int]]:
    """Every choice worth having for a streaming convolution, cheapest first, with its cycles per image: for
    each lane count (a divisor of the output channels; only ``lanes`` if given) and each number of chunks, the
    smallest chunk at ``steps`` steps a cycle, and the whole window at more; only choices faster than every
    cheaper one (the Pareto front of adders and cycles). ``stored``: only choices with the window in RAM, where
    the layer has any (a register window's logic does not shrink with its adders; a stored one's does)."""
    g = layer.conv.geometry
    taps, nonzero = g.window_size, nonzero_taps(layer.conv.kernel)
    store_taps, c_in = nonzero_taps(layer.conv.kernel, window_in_ram=True), g.in_shape[0]
    # More than one step a cycle by default only for the whole window: below it a chunk twice as large costs the
    # same adders for the same cycles and skips more (an operation over S steps is skipped only when all are
    # silent). But it reads twice the weights a cycle: ``steps`` > 1 is for a core short of block RAM ports.
    # (and the chunks that line up with the input's pixels, for a window in RAM)
    aligned = {c for c in [c_in >> k for k in range(c_in.bit_length())] + [c_in * m for m in range(2, taps // c_in + 1)]
               if 0 < c <= taps and store_aligned(c_in, c)}
    shapes = [(chunk, steps) for chunk in sorted({ceil_div(taps, n) for n in range(1, taps + 1)} | aligned)]
    shapes += [(taps, 1 << k) for k in range(1, (2 * timesteps - 1).bit_length()) if 1 << k > steps]
    counts = [lanes] if lanes is not None else [d for d in range(1, g.out_channels + 1) if g.out_channels % d == 0]
    # (The MNIST LeNet's second convolution at 5 taps x 8 steps measured 6,300 cycles an image, its worst
    # case, where 22 taps x 1 step skipped to 5,100.)
    candidates = sorted((StreamChoice(count, chunk, steps) for count in counts for chunk, steps in shapes),
                        key=lambda c: (c.adders, c.steps, -c.lanes))
    ranked = []
    for choice in candidates:
        choice = replace(choice, in_ram=window_in_ram(layer, choice, timesteps, store_taps))
        ranked.append((choice, _fast_cycles(g, choice, timesteps,
                                            _live(store_taps if choice.in_ram else nonzero, choice))))
    if stored and any(choice.in_ram for choice, _ in ranked):
        ranked = [(choice, cycles) for choice, cycles in ranked if choice.in_ram]
    front, best = [], None
    for choice, cycles in ranked:
        if best is None or cycles < best:
            front.append((choice, cycles))
            best = cycles
    return front


def _fast_cycles(g, choice: StreamChoice, timesteps: int, live: int) -> int:
    """A close estimate of the convolution's cycles per image on ``choice`` (``live``: its blocks' live chunks,
    summed) for ranking choices (:meth:`~spikesmith.contract.streaming.StreamWindow.image_cycles` without its
    loop over the pixels)."""
    (kh, kw), sw = g.kernel, g.stride[1]
    _, rows, columns = g.out_shape
    busy = step_groups(timesteps, choice.steps) * live + g.out_channels // choice.lanes + 1
    if choice.in_ram:                                    # every pixel reads its whole window after the hand-over
        return rows * columns * max(busy, kw * kh + 2)
    return rows * (max(busy, kw * kh + 2) + (columns - 1) * max(busy, min(kw, sw) * kh))


def choose_stream(layers: list[DenseLayer], timesteps: int, budget: int = DEFAULT_ADDER_BUDGET,
                  target: int = 0, lanes: list[int] | None = None, steps: int = 1,
                  stored: bool = False) -> list[StreamChoice]:
    """Lanes and chunks for each streaming convolution under a total of ``budget`` adder inputs: every one
    starts at its cheapest choice; the slowest takes its next faster choice while the budget allows and it is
    slower than ``target`` (the rest of the core's slowest stage: faster buys nothing). ``lanes``: each
    convolution's lanes are these (only its chunk is chosen). ``steps``: steps a cycle of every chunk below the
    whole window, and ``stored`` to windows in RAM where a layer can have one (:func:`stream_options`)."""
    steps = min(steps, 1 << (timesteps - 1).bit_length())         # (S < 2T)
    options = [stream_options(layer, timesteps, None if lanes is None else lanes[k], steps, stored)
               for k, layer in enumerate(layers)]
    picked = [0] * len(layers)
    if sum(o[0][0].adders for o in options) > budget:
        raise SpikesmithError(f"an adder budget of {budget} is below the streaming convolutions' least "
                              f"({sum(o[0][0].adders for o in options)})")
    growing = set(range(len(layers)))
    while growing:
        slowest = max(growing, key=lambda k: options[k][picked[k]][1])
        if options[slowest][picked[slowest]][1] <= target or picked[slowest] + 1 == len(options[slowest]):
            growing.discard(slowest)
            if options[slowest][picked[slowest]][1] <= target or not growing:
                break
            continue
        spent = sum(options[k][picked[k]][0].adders for k in range(len(layers)))
        step = options[slowest][picked[slowest] + 1][0].adders - options[slowest][picked[slowest]][0].adders
        if spent + step > budget:
            break
        picked[slowest] += 1
    return [options[k][picked[k]][0] for k in range(len(layers))]


def plan_stream(net: SpikingNetwork, count: int, choices: list[StreamChoice], input_lanes: int,
                skip_silent: bool) -> list[StreamConvPlan | StreamPoolPlan]:
    """The streaming stages of the first ``count`` layers (and the max pool the next layer reads): each
    layer's max pool, then its convolution; each stage reads the beats its producer sends."""
    stages: list[StreamConvPlan | StreamPoolPlan] = []
    lanes_in, T = input_lanes, net.timesteps
    for index in range(count + 1):
        layer = net.layers[index]
        if layer.pool is not None:
            stages.append(StreamPoolPlan(index, f"{layer.name}.pool", layer.pool, T, lanes_in, lanes_in))
        if index == count:
            break
        g, choice = layer.conv.geometry, choices[index]
        step = g.pixels
        stages.append(plan_stream_conv(index, layer.name, g, layer.conv.kernel, layer.bias[::step],
                                       layer.threshold[::step], T, choice.lanes, lanes_in, choice.chunk,
                                       layer_bounds(layer, T).membrane_width, skip_silent, choice.steps,
                                       choice.in_ram))
        lanes_in = choice.lanes
    return stages


def stream_input_order(shape: tuple[int, int, int], lanes: int) -> np.ndarray:
    """Which input (row-major ``(C, H, W)``) each event address of the re-encoder stands for: it sends address
    ``word * L + lane`` for lane ``lane`` of beat ``word = (y * W + x) * B + b``, i.e. channel ``b*L + lane``."""
    c, h, w = shape
    address = np.arange(c * h * w)
    word, lane = address // lanes, address % lanes
    pixel, block = word // (c // lanes), word % (c // lanes)
    return (block * lanes + lane) * (h * w) + pixel
