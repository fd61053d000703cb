"""Hardware sizing: from a converted network to the plan (:mod:`spikesmith.contract.plan`) the
Amaranth core is built from: lanes per layer (balanced under a lane budget), widths from the
worst-case bounds, packed ROM contents.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import numpy as np

from ..contract.bounds import layer_bounds
from ..contract.network import SpikingNetwork, fingerprint
from ..contract.plan import CorePlan, InputPlan, LayerPlan, PoolPlan, ceil_div, pack_row
from ..contract.streaming import parse_chunk
from ..errors import SpikesmithError
from .streaming import (DEFAULT_ADDER_BUDGET, StreamChoice, choose_stream, plan_stream, stream_input_order,
                        streamed_layers, window_in_ram)

__all__ = ["SizingError", "plan_core", "choose_lanes", "DEFAULT_LANE_BUDGET"]

#: Total neuron lanes of all layers when the user gives neither ``lanes`` nor a budget.
DEFAULT_LANE_BUDGET = 64
#: Input codes per beat of the image stream when the user does not say.
DEFAULT_INPUT_LANES = 8


class SizingError(SpikesmithError):
    """The requested lanes or budget cannot build this network."""


def convolution_engines(net: SpikingNetwork) -> list[bool]:
    """Which layers run on a convolution engine: the convolutions whose input arrives as pixels
    (the image, or a convolution engine's events). A convolution after a dense layer (for example
    a pool and a convolution that did not compose) reads neuron events; it runs on a dense engine,
    whose weights are the dense matrix of its kernel."""
    engines: list[bool] = []
    for layer in net.layers:
        engines.append(layer.conv is not None and (not engines or engines[-1]))
    return engines


def _lane_options(layer, conv_engine: bool) -> list[int]:
    """Lane counts worth having: the smallest L for each distinct block count ceil(n / L); for a
    convolution engine, the divisors of its output channels (lanes are channels)."""
    if conv_engine:
        channels = layer.conv.geometry.out_channels
        return [L for L in range(1, channels + 1) if channels % L == 0]
    neurons = layer.out_size
    return sorted({ceil_div(neurons, ceil_div(neurons, L)) for L in range(1, neurons + 1)})


def _skeleton(layer, lanes: int, timesteps: int, conv_engine: bool) -> LayerPlan:
    """A plan of ``layer`` on ``lanes`` lanes with no memory contents: enough for the cycle model."""
    return LayerPlan(index=0, name=layer.name, inputs=layer.in_size, neurons=layer.out_size, lanes=lanes,
                     timesteps=timesteps, fires=layer.fires, weight_width=0, bias_width=0, membrane_width=0,
                     threshold_width=0, weight_rows=(), bias_rows=(), threshold_rows=(),
                     conv=layer.conv.geometry if conv_engine else None)


def choose_lanes(net: SpikingNetwork, budget: int = DEFAULT_LANE_BUDGET, max_lanes: int | None = None,
                 fill: bool = False) -> list[int]:
    """Lanes per layer that balance the worst-case accumulate cycles under a total-lane budget.

    Greedy: every layer starts at one lane; the slowest layer takes its next lane option
    (fewer blocks) while the budget allows. The slowest layer then sets the initiation interval.
    ``max_lanes``: no layer gets more. ``fill``: when the slowest layer cannot grow, the next
    slowest go on taking lanes (the worst case does not improve, but with sparse spikes another
    layer may be the one that waits: speed sizing fills the board this way).
    """
    if budget < len(net.layers):
        raise SizingError(f"a lane budget of {budget} is below one lane per layer ({len(net.layers)} layers)")
    engines = convolution_engines(net)
    options = [[L for L in _lane_options(layer, conv) if max_lanes is None or L <= max_lanes]
               for layer, conv in zip(net.layers, engines)]
    choice = [0] * len(net.layers)
    T = net.timesteps
    costs: dict[tuple[int, int], int] = {}

    def cost(k: int, lanes: int) -> int:
        """Layer k's accumulate cycles, and those of the pooling stage its lanes feed (if the next layer pools)."""
        if (k, lanes) not in costs:
            costs[k, lanes] = _skeleton(net.layers[k], lanes, T, engines[k]).accumulate_cycles()
            following = net.layers[k + 1] if k + 1 < len(net.layers) else None
            if following is not None and following.pool is not None:
                costs[k, lanes] += PoolPlan(following.pool, lanes, T, False).cycles()
        return costs[k, lanes]

    growing = set(range(len(choice)))
    while True:
        lanes = [options[k][choice[k]] for k in range(len(choice))]
        slowest = max(growing, key=lambda k: cost(k, lanes[k]))
        # Only the slowest layer sets the interval: when it cannot grow, more lanes elsewhere buy nothing.
        if choice[slowest] + 1 == len(options[slowest]) or \
                sum(lanes) + options[slowest][choice[slowest] + 1] - lanes[slowest] > budget:
            growing.discard(slowest)
            if not fill or not growing:
                return lanes
            continue
        choice[slowest] += 1


def _input_order(previous: LayerPlan | None, pool: PoolPlan | None, inputs: int) -> np.ndarray:
    """Which input of a dense layer each event address stands for.

    A convolution engine sends address ``row * L + lane`` for channel ``b*L + lane`` of pixel ``p``
    (row ``b * P + p``), which is input ``(b*L + lane) * P + p`` in row-major (C, H, W) order; a
    pooling stage sends ``lane * rows + row`` for its pooled row ``b * P + p`` (no multiplier: a
    table of ``L`` offsets); everything else sends the input's own index.
    """
    address = np.arange(inputs)
    if pool is not None:
        lane, row = address // pool.rows, address % pool.rows
        P, L = pool.pixels, pool.lanes
    elif previous is not None and previous.conv is not None:
        P, L = previous.conv.pixels, previous.lanes
        row, lane = address // L, address % L
    else:
        return address
    block, pixel = row // P, row % P
    return (block * L + lane) * P + pixel


def _check_pools(net: SpikingNetwork, engines: list[bool]) -> None:
    """The core pools a convolution engine's spikes: refuse a max pool anywhere else, naming it."""
    for index, layer in enumerate(net.layers):
        if layer.pool is None:
            continue
        if index == 0:
            raise SizingError(f"layer {layer.name} reads a max pool of the input image: the core pools the spikes "
                              f"of a convolution; pool the images before they are streamed (or start with a convolution)")
        if not engines[index - 1]:
            previous = net.layers[index - 1]
            raise SizingError(f"layer {layer.name} reads a max pool of layer {previous.name}, which runs on a dense "
                              f"engine: the core pools only a convolution engine's spikes")


def plan_core(net: SpikingNetwork, lanes: list[int] | None = None, budget: int = DEFAULT_LANE_BUDGET,
              input_lanes: int | None = None, skip_silent: bool = True,
              loaded_weights: Collection[int] = (), streaming: bool = True, chunks: list[int | str] | None = None,
              adder_budget: int = DEFAULT_ADDER_BUDGET, op_steps: int = 1, stored: bool = False) -> CorePlan:
    """Size the core for ``net``: explicit ``lanes`` per layer, or chosen under ``budget``.

    ``loaded_weights``: indices of layers whose weights are written at run time (SPRAM).
    ``streaming``: the convolutions from the image on run on the streaming engine (their ``lanes`` output
    channels and ``chunks`` taps a cycle, ``K`` or ``"KxS"`` at ``S`` steps a cycle, chosen under
    ``adder_budget`` where not given, at ``op_steps`` steps a cycle or more, with ``stored`` windows in RAM
    where a layer can have one); otherwise every
    layer runs on the event-driven engines.
    """
    count = streamed_layers(net) if streaming else 0
    if lanes is not None and len(lanes) != len(net.layers):
        raise SizingError(f"--lanes gives {len(lanes)} values but the network has {len(net.layers)} layers")
    for index in loaded_weights:
        if not count <= index < len(net.layers):
            raise SizingError(f"--spram names layer {index}; the network's layers are {count}..{len(net.layers) - 1}"
                              + (" (the streaming layers keep their weights in logic)" if count else ""))
    if not count:
        return _event_core(net, lanes, budget, input_lanes, skip_silent, loaded_weights)
    T, shape = net.timesteps, tuple(net.input.shape)
    if input_lanes is None:
        input_lanes = shape[0]
    if input_lanes < 1 or shape[0] % input_lanes:
        raise SizingError(f"the first layer streams {shape[0]}-channel pixels: the input lanes must divide "
                          f"{shape[0]}, not {input_lanes}")
    tail = SpikingNetwork(T, net.input, tuple(replace(layer, pool=None) if k == count else layer
                                              for k, layer in enumerate(net.layers) if k >= count))
    _check_pools(tail, [False] * len(tail.layers))
    tail_lanes = None if lanes is None else [int(x) for x in lanes[count:]]
    if tail_lanes is None:
        tail_lanes = choose_lanes(tail, budget)
    skeletons = [_skeleton(layer, L, T, False) for layer, L in zip(tail.layers, tail_lanes)]
    target = max(max(layer.accumulate_cycles() for layer in skeletons), skeletons[-1].readout_cycles())
    choices = _stream_choices(net.layers[:count], T, lanes, chunks, adder_budget, target, op_steps, stored)
    stages = plan_stream(net, count, choices, input_lanes, skip_silent)
    last = stages[-1]
    out_shape = last.geometry.out_shape
    order = stream_input_order(out_shape, last.lanes)
    dense = _layer_plans(tail, tail_lanes, [False] * len(tail.layers), loaded_weights, count, first_order=order)
    return CorePlan(timesteps=T, input=InputPlan(net.input.size, input_lanes, T, shape, pixel_major=True),
                    layers=tuple(dense), skip_silent=skip_silent, fingerprint=fingerprint(net),
                    stream=tuple(stages), reencoder=InputPlan(int(np.prod(out_shape)), last.lanes, T))


def _stream_choices(layers, timesteps: int, lanes, chunks, adder_budget: int, target: int,
                    op_steps: int = 1, stored: bool = False) -> list[StreamChoice]:
    """The streaming convolutions' lanes and chunks: as given, or chosen (:func:`choose_stream`)."""
    if chunks is not None and len(chunks) != len(layers):
        raise SizingError(f"--chunks gives {len(chunks)} values but the network streams {len(layers)} convolutions")
    given = None if lanes is None else [int(x) for x in lanes[:len(layers)]]
    for k, layer in enumerate(layers):
        g = layer.conv.geometry
        taps = g.window_size
        if given is not None and (given[k] < 1 or g.out_channels % given[k]):
            divisors = [d for d in range(1, g.out_channels + 1) if g.out_channels % d == 0]
            raise SizingError(f"layer {layer.name} streams {g.out_channels} output channels: its lanes must divide "
                              f"that number, not {given[k]} (one of {', '.join(map(str, divisors))})")
        if chunks is not None:
            chunk, steps = _parsed_chunk(chunks[k])
            if not 1 <= chunk <= taps or not steps < 2 * timesteps:
                raise SizingError(f"layer {layer.name}: a chunk is 1..{taps} taps (its window) at 1, 2, 4, .. steps "
                                  f"a cycle below {2 * timesteps} (KxS), not {chunks[k]}")
    if chunks is None:
        return choose_stream(list(layers), timesteps, max(adder_budget, sum(given or [1] * len(layers))), target,
                             lanes=given, steps=op_steps, stored=stored)
    choices = [StreamChoice(given[k] if given is not None else layer.conv.geometry.out_channels,
                            *_parsed_chunk(chunks[k])) for k, layer in enumerate(layers)]
    return [replace(choice, in_ram=window_in_ram(layer, choice, timesteps)) for choice, layer in zip(choices, layers)]


def _parsed_chunk(value) -> tuple[int, int]:
    try:
        return parse_chunk(value)
    except ValueError as exc:
        raise SizingError(str(exc)) from None


def _event_core(net: SpikingNetwork, lanes, budget: int, input_lanes, skip_silent: bool,
                loaded_weights: Collection[int]) -> CorePlan:
    """The core with every layer on the event-driven engines (a convolution from the image on its convolution engine)."""
    engines = convolution_engines(net)
    _check_pools(net, engines)
    if lanes is None:
        lanes = choose_lanes(net, budget)
    lanes = [int(x) for x in lanes]
    pixels = tuple(net.input.shape) if engines[0] else None
    if input_lanes is None:
        if pixels is None:
            input_lanes = min(DEFAULT_INPUT_LANES, net.input.size)
        else:
            input_lanes = max(d for d in range(1, DEFAULT_INPUT_LANES + 1) if pixels[2] % d == 0)
    if not 1 <= input_lanes <= net.input.size:
        raise SizingError(f"input lanes must be 1..{net.input.size}, not {input_lanes}")
    if pixels is not None and pixels[2] % input_lanes:
        raise SizingError(f"the first layer is a convolution on {pixels[2]}-pixel-wide images: the input lanes "
                          f"must divide {pixels[2]}, not {input_lanes}")
    plans = _layer_plans(net, lanes, engines, loaded_weights, 0)
    T = net.timesteps
    return CorePlan(timesteps=T, input=InputPlan(net.input.size, input_lanes, T, pixels), layers=tuple(plans),
                    skip_silent=skip_silent, fingerprint=fingerprint(net))


def _layer_plans(net: SpikingNetwork, lanes: list[int], engines: list[bool], loaded_weights: Collection[int],
                 offset: int, first_order: np.ndarray | None = None) -> list[LayerPlan]:
    """A :class:`LayerPlan` per layer of ``net`` (network indices from ``offset``); ``first_order``: which input
    each event address into the first layer stands for (default :func:`_input_order`)."""
    for layer, count, conv in zip(net.layers, lanes, engines):
        if not 1 <= count <= layer.out_size:
            raise SizingError(f"layer {layer.name}: {count} lanes, but it has {layer.out_size} neurons "
                              f"(lanes must be 1..{layer.out_size})")
        if conv and count not in _lane_options(layer, conv):
            raise SizingError(f"layer {layer.name} is a convolution with {layer.conv.geometry.out_channels} output "
                              f"channels: its lanes must divide that number, not {count} "
                              f"(one of {', '.join(map(str, _lane_options(layer, conv)))})")
    T = net.timesteps
    plans: list[LayerPlan] = []
    for index, (layer, L, conv) in enumerate(zip(net.layers, lanes, engines)):
        following = net.layers[index + 1] if index + 1 < len(net.layers) else None
        pool = PoolPlan(layer.pool, plans[-1].lanes, T, conv) if layer.pool is not None else None
        order = first_order if index == 0 and first_order is not None else None
        plans.append(_layer_plan(layer, index + offset, L, T, conv, pool, plans[-1] if plans else None, order,
                                 index + offset in loaded_weights,
                                 emits_pixels=following is not None and following.pool is None and engines[index + 1],
                                 emits_rows=following is not None and following.pool is not None))
    return plans


def _layer_plan(layer, index: int, L: int, T: int, conv: bool, pool, previous, order, loaded: bool,
                emits_pixels: bool, emits_rows: bool) -> LayerPlan:
    bounds = layer_bounds(layer, T)
    weight_width, bias_width = max(2, bounds.weight_width), max(2, bounds.bias_width)
    threshold_width = bounds.threshold_width
    geometry = layer.conv.geometry if conv else None
    if geometry is not None:
        # Lanes are output channels; one row per (block, kernel offset, input channel).
        blocks, step = geometry.out_channels // L, geometry.pixels
        kernel = layer.conv.kernel
        c_in, (kh, kw) = geometry.in_shape[0], geometry.kernel
        weight_rows = tuple(pack_row(kernel[b * L:(b + 1) * L, c, ky, kx], weight_width)
                            for b in range(blocks) for ky in range(kh) for kx in range(kw) for c in range(c_in))
        bias, threshold = layer.bias[::step], (layer.threshold[::step] if layer.fires else None)
    else:
        blocks = ceil_div(layer.out_size, L)
        padded = blocks * L
        weight = np.zeros((padded, layer.in_size), dtype=np.int64)
        columns = order if order is not None else _input_order(previous, pool, layer.in_size)
        weight[:layer.out_size] = layer.matrix[:, columns]
        weight_rows = tuple(pack_row(weight[b * L:(b + 1) * L, i], weight_width)
                            for b in range(blocks) for i in range(layer.in_size))
        bias = np.zeros(padded, dtype=np.int64)
        bias[:layer.out_size] = layer.bias
        threshold = np.ones(padded, dtype=np.int64)
        if layer.fires:
            threshold[:layer.out_size] = layer.threshold
    bias_rows = tuple(pack_row(bias[b * L:(b + 1) * L], bias_width) for b in range(blocks))
    threshold_rows = (tuple(pack_row(threshold[b * L:(b + 1) * L], threshold_width) for b in range(blocks))
                      if layer.fires else ())
    return LayerPlan(
        index=index, name=layer.name, inputs=layer.in_size, neurons=layer.out_size, lanes=L,
        timesteps=T, fires=layer.fires, weight_width=weight_width, bias_width=bias_width,
        membrane_width=bounds.membrane_width, threshold_width=threshold_width,
        weight_rows=weight_rows, bias_rows=bias_rows, threshold_rows=threshold_rows,
        weights_loaded=loaded, conv=geometry, pool=pool, emits_pixels=emits_pixels, emits_rows=emits_rows)
