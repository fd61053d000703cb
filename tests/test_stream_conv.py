"""The streaming convolution engine alone in amaranth.sim (hw/stream_conv.py): every output code equals the
golden model's, for kernels, strides, padding, chunks, steps an operation, lanes and input lanes of every kind, with gaps on
its input and back-pressure on its output; with skipping off its cycles per image are the plan's."""

import numpy as np
import pytest

from spikesmith.contract.bounds import layer_bounds
from spikesmith.contract.network import ConvGeometry, ConvSpec, DenseLayer
from spikesmith.contract.streaming import plan_stream_conv, store_aligned
from spikesmith.hw.stream_conv import StreamConv
from spikesmith.sim.golden import accumulate, fire
from spikesmith.sim.hdl import StreamSink, StreamSource, run_streams


def random_conv_layer(rng, geometry: ConvGeometry, timesteps: int, weight_bits: int = 4) -> DenseLayer:
    """A firing convolution layer with random integer kernel, per-channel biases and thresholds."""
    top = (1 << (weight_bits - 1)) - 1
    kernel = rng.integers(-top, top + 1, size=geometry.kernel_shape)
    c_out, pixels = geometry.out_channels, geometry.pixels
    reach = int(np.abs(kernel).sum(axis=(1, 2, 3)).max()) * ((1 << timesteps) - 1)   # a membrane's scale
    bias = np.repeat(rng.integers(-reach // 8 - 1, reach // 8 + 1, size=c_out), pixels)
    threshold = np.repeat(rng.integers(1, max(2, reach // 3), size=c_out), pixels)
    return DenseLayer(name="conv", weight=None, bias=bias, threshold=threshold, weight_bits=weight_bits,
                      conv=ConvSpec(geometry, kernel))


def stream_plan(layer: DenseLayer, timesteps: int, lanes: int, input_lanes: int, chunk: int, skip: bool = True,
                op_steps: int = 1, in_ram: bool = False):
    geometry = layer.conv.geometry
    return plan_stream_conv(0, layer.name, geometry, layer.conv.kernel, layer.bias[::geometry.pixels],
                            layer.threshold[::geometry.pixels], timesteps, lanes, input_lanes, chunk,
                            layer_bounds(layer, timesteps).membrane_width, skip, op_steps, in_ram)


def pixel_beats(codes: np.ndarray, shape, lanes: int, timesteps: int) -> list[int]:
    """(N, C*H*W) codes -> code beats: pixels in raster order, ``lanes`` channels a beat (channel 0 in the LSBs)."""
    c, h, w = shape
    beats = []
    for image in codes.reshape(-1, c, h, w):
        for y in range(h):
            for x in range(w):
                for g in range(c // lanes):
                    values = image[g * lanes:(g + 1) * lanes, y, x]
                    beats.append(sum(int(v) << (k * timesteps) for k, v in enumerate(values)))
    return beats


def random_codes(rng, count: int, size: int, timesteps: int, density: float = 0.5) -> np.ndarray:
    codes = rng.integers(0, 1 << timesteps, size=(count, size))
    return np.where(rng.random((count, size)) < density, codes, 0)


def run_layer(layer, plan, codes, *, in_probability=1.0, out_probability=1.0, seed=0):
    geometry, T = layer.conv.geometry, plan.timesteps
    golden = fire(accumulate(layer, codes, T), layer.threshold, T)
    dut = StreamConv(plan)
    rng = np.random.default_rng(seed)
    source = StreamSource(dut.codes_in, pixel_beats(codes, geometry.in_shape, plan.input_lanes, T),
                          probability=in_probability, rng=rng)
    expected = pixel_beats(golden, geometry.out_shape, plan.lanes, T)
    sink = StreamSink(dut.codes_out, len(expected), probability=out_probability, rng=rng, drain=20,
                      limit=50 * len(codes) * plan.image_cycles() + 10_000)
    cycles = run_streams(dut, source, sink)
    return sink, expected, cycles


def random_case(seed: int):
    """A random geometry and parallelism: any kernel that fits the padded input, strides 1-3, padding up to
    half the kernel, T 1-8, lanes and input lanes dividing the channels, any chunk, 1-8 steps an operation."""
    rng = np.random.default_rng(seed)
    c_in, c_out = int(rng.integers(1, 5)), int(rng.integers(1, 7))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    h, w = int(rng.integers(max(1, kh - 2 * ph), 10)), int(rng.integers(max(1, kw - 2 * pw), 10))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    T = int(rng.integers(1, 9))
    lanes = int(rng.choice([d for d in range(1, c_out + 1) if c_out % d == 0]))
    input_lanes = int(rng.choice([d for d in range(1, c_in + 1) if c_in % d == 0]))
    chunk = int(rng.integers(1, kh * kw * c_in + 1))
    op_steps = int(rng.choice([s for s in (1, 2, 4, 8) if s < 2 * T]))
    return ((c_in, h, w), c_out, (kh, kw), (sh, sw), (ph, pw), T, lanes, input_lanes, chunk, op_steps)


CASES = [
    # (C_in, H, W), C_out, kernel, stride, padding, T, lanes, input lanes, chunk, steps an operation
    ((1, 6, 6), 2, (3, 3), (1, 1), (1, 1), 4, 2, 1, 9, 1),
    ((2, 5, 7), 4, (3, 3), (1, 1), (0, 0), 3, 2, 1, 5, 2),
    ((3, 8, 6), 4, (3, 2), (2, 1), (1, 0), 5, 4, 3, 6, 1),
    ((2, 7, 7), 3, (5, 5), (1, 1), (2, 2), 4, 1, 2, 10, 1),
    ((4, 6, 5), 4, (1, 1), (2, 2), (0, 0), 4, 2, 2, 4, 4),
    ((2, 9, 8), 2, (3, 3), (2, 2), (1, 1), 2, 2, 1, 1, 1),
    ((1, 10, 10), 6, (5, 5), (1, 1), (2, 2), 8, 6, 1, 25, 2),
    ((2, 6, 6), 4, (2, 2), (2, 2), (0, 0), 1, 2, 2, 3, 1),
    ((1, 8, 8), 3, (3, 3), (1, 1), (1, 1), 5, 3, 1, 9, 4),
    ((1, 7, 7), 2, (5, 5), (1, 1), (2, 2), 7, 2, 1, 5, 8),      # the fire unit at 2 steps a cycle, 8 in the tree
]


def random_store_case(seed: int):
    """A random case whose chunk lines up with the input's pixels (``store_aligned``), for a window in RAM."""
    shape, c_out, kernel, stride, padding, T, lanes, input_lanes, _, op_steps = random_case(seed)
    rng = np.random.default_rng(seed + 1000)
    c_in, taps = shape[0], kernel[0] * kernel[1] * shape[0]
    chunks = [c_in >> k for k in range(c_in.bit_length()) if c_in % (c_in >> k) == 0 and c_in >> k]
    chunks += [c_in * m for m in range(2, kernel[0] * kernel[1] + 1)]
    chunk = int(rng.choice([c for c in chunks if c <= taps and store_aligned(c_in, c)]))
    return (shape, c_out, kernel, stride, padding, T, lanes, input_lanes, chunk, op_steps)


def build_case(case, seed: int, skip: bool = True, sparse: bool = False, in_ram: bool = False):
    """``sparse``: most weights zero and the first output channel's all, so that some blocks have chunks of
    zero weights (and with one lane, a block none at all). ``in_ram``: the window in a memory."""
    shape, c_out, kernel, stride, padding, T, lanes, input_lanes, chunk, op_steps = case
    rng = np.random.default_rng(seed)
    geometry = ConvGeometry(shape, c_out, kernel, stride, padding)
    layer = random_conv_layer(rng, geometry, T)
    if sparse:
        layer.conv.kernel[rng.random(geometry.kernel_shape) < 0.7] = 0
        layer.conv.kernel[0] = 0
    return rng, layer, stream_plan(layer, T, lanes, input_lanes, chunk, skip, op_steps, in_ram)


def assert_every_code_is_the_golden_models(rng, layer, plan):
    """Three random images, with gaps on the input and back-pressure on the output: the golden model's codes."""
    codes = random_codes(rng, 3, layer.in_size, plan.timesteps)
    sink, expected, _ = run_layer(layer, plan, codes, in_probability=0.8, out_probability=0.7)
    assert sink.received == expected and not sink.extra


def assert_cycles_per_image_are_the_plans(rng, layer, plan, images: int = 4):
    """With nothing waiting, the steady gap between two images is the plan's ``image_cycles``."""
    sink, expected, _ = run_layer(layer, plan, random_codes(rng, images, layer.in_size, plan.timesteps))
    assert sink.received == expected
    assert steady_gap(sink, images) == plan.image_cycles()


ALL_CASES = CASES + [random_case(seed) for seed in range(24)]
#: Random cases with the window in a memory (chunks that line up with the input's pixels).
STORE_CASES = [random_store_case(seed) for seed in range(200, 220)]
#: Random cases whose kernels have chunks of zero weights (the sequencer skips them in every block).
SPARSE_CASES = [random_case(seed) for seed in range(100, 112)]


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
@pytest.mark.parametrize("case", ALL_CASES, ids=[f"case{k}" for k in range(len(ALL_CASES))])
def test_every_code_is_the_golden_models(case, skip):
    rng, layer, plan = build_case(case, seed=len(str(case)), skip=skip)
    assert_every_code_is_the_golden_models(rng, layer, plan)


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
@pytest.mark.parametrize("case", SPARSE_CASES, ids=[f"sparse{k}" for k in range(len(SPARSE_CASES))])
def test_chunks_of_zero_weights_are_skipped_and_every_code_is_the_golden_models(case, skip):
    rng, layer, plan = build_case(case, seed=len(str(case)), skip=skip, sparse=True)
    assert_every_code_is_the_golden_models(rng, layer, plan)


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
@pytest.mark.parametrize("case", STORE_CASES, ids=[f"store{k}" for k in range(len(STORE_CASES))])
def test_with_the_window_in_ram_every_code_is_the_golden_models(case, skip):
    rng, layer, plan = build_case(case, seed=len(str(case)), skip=skip, sparse=case[0][0] % 2 == 0, in_ram=True)
    assert plan.window_bits == 0
    assert_every_code_is_the_golden_models(rng, layer, plan)


@pytest.mark.parametrize("case", STORE_CASES[::2], ids=[f"store{k}" for k in range(0, len(STORE_CASES), 2)])
def test_with_the_window_in_ram_cycles_per_image_are_the_plans_with_skipping_off(case):
    """Every read waits for the hand-over and every pixel reads all ``kw`` columns: the plan's recurrence."""
    rng, layer, plan = build_case(case, seed=1, skip=False, in_ram=True)
    assert_cycles_per_image_are_the_plans(rng, layer, plan)


def test_a_relays_block_visits_only_its_centre_chunk():
    """A residual relay (weight 1 at the centre tap of its own channel) in a block of its own: one live chunk,
    ``G + 1`` cycles a block, where a block of real channels visits every chunk."""
    geometry = ConvGeometry((2, 5, 5), 4, (3, 3), (1, 1), (1, 1))
    kernel = np.ones(geometry.kernel_shape, dtype=np.int64)
    kernel[2:] = 0
    kernel[2, 0, 1, 1] = kernel[3, 1, 1, 1] = 1
    layer = DenseLayer(name="relay", weight=None, bias=np.zeros(100, dtype=np.int64),
                       threshold=np.full(100, 256), weight_bits=2, conv=ConvSpec(geometry, kernel))
    plan = stream_plan(layer, 8, lanes=2, input_lanes=2, chunk=2)
    assert plan.chunks == 9 and plan.block_cycles() == (8 * 9 + 1, 8 * 1 + 1)


@pytest.mark.parametrize("op_steps", [1, 8])
def test_extreme_weights_and_full_codes_stay_within_the_bounds(op_steps):
    """Every kernel entry at the weight range's ends and every code at full scale: the largest and the
    smallest membrane of the bounds, through the adder tree and the register widths the plan chose."""
    geometry = ConvGeometry((3, 5, 5), 4, (3, 3), (1, 1), (1, 1))
    kernel = np.zeros(geometry.kernel_shape, dtype=np.int64)
    kernel[0], kernel[1], kernel[2], kernel[3] = 127, -127, 1, -1
    T = 8
    layer = DenseLayer(name="extreme", weight=None, bias=np.repeat([0, 5, -3, 1000], 25),
                       threshold=np.repeat([1, 2, 100000, 3], 25), weight_bits=8, conv=ConvSpec(geometry, kernel))
    codes = np.stack([np.full(75, 255), np.zeros(75, dtype=np.int64), np.tile([255, 0, 128], 25)])
    plan = stream_plan(layer, T, lanes=2, input_lanes=3, chunk=7, op_steps=op_steps)
    sink, expected, _ = run_layer(layer, plan, codes)
    assert sink.received == expected


def steady_gap(sink, images: int) -> int:
    """Cycles between the last beats of the last two images."""
    per = len(sink.received) // images
    return sink.received_at[images * per - 1] - sink.received_at[(images - 1) * per - 1]


@pytest.mark.parametrize("case", ALL_CASES[::2], ids=[f"case{k}" for k in range(0, len(ALL_CASES), 2)])
def test_cycles_per_image_are_the_plans_with_skipping_off(case):
    rng, layer, plan = build_case(case, seed=1, skip=False)
    assert_cycles_per_image_are_the_plans(rng, layer, plan)


@pytest.mark.parametrize("case", SPARSE_CASES[::2], ids=[f"sparse{k}" for k in range(0, len(SPARSE_CASES), 2)])
def test_cycles_per_image_are_the_plans_with_chunks_of_zero_weights(case):
    rng, layer, plan = build_case(case, seed=1, skip=False, sparse=True)
    assert_cycles_per_image_are_the_plans(rng, layer, plan)


@pytest.mark.parametrize("case", CASES, ids=[f"case{k}" for k in range(len(CASES))])
def test_skipping_never_costs_more_than_the_plan(case):
    """The same images with skipping on end no later than with skipping off (whose cycles are the plan's). (One
    image's gap after a quick one may exceed the steady state, so the whole run is compared.)"""
    rng, layer, plan = build_case(case, seed=2, skip=True)
    _, _, worst = build_case(case, seed=2, skip=False)
    codes = random_codes(rng, 4, layer.in_size, plan.timesteps, density=0.3)
    sink, expected, _ = run_layer(layer, plan, codes)
    slow, _, _ = run_layer(layer, worst, codes)
    assert sink.received == expected
    assert sink.received_at[-1] <= slow.received_at[-1]


def test_the_fire_unit_grows_linearly_with_its_steps_a_cycle():
    """Each of a cycle's ``S`` compare-subtracts reads the one before twice: as expressions the fire unit
    doubled per step (a LeNet's RTLIL was 192 MB at S = 8 and yosys ran out of memory)."""
    from amaranth.back import rtlil

    from spikesmith.hw.stream_conv import NeuronFire

    case = ((1, 6, 6), 4, (3, 3), (1, 1), (1, 1), 8, 4, 1, 9)
    plans = {steps: build_case(case + (steps,), seed=0)[2] for steps in (1, 8)}
    assert plans[8].fire_steps == 8                   # (one chunk: a block is one operation and the bias)
    size = {steps: len(rtlil.convert(NeuronFire(plan), name="fire")) for steps, plan in plans.items()}
    assert size[8] < 10 * size[1]


def test_the_fire_unit_chains_the_fewest_steps_that_keep_up_with_the_sequencer():
    """Eight steps a cycle over five chunks: a block is six cycles, so two compare-subtracts a cycle (five
    cycles) keep up, and a chain of eight would only cost Fmax."""
    case = ((1, 6, 6), 4, (5, 5), (1, 1), (2, 2), 8, 4, 1, 5, 8)
    plan = build_case(case, seed=0)[2]
    assert plan.block_cycles() == (6,) and plan.fire_steps == 2 and plan.fire_groups == 4
