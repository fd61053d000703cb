"""The streaming max pool alone in amaranth.sim (hw/stream_pool.py): every pooled code equals the golden
model's for kernels, strides, padding, dilation and ceil_mode of every kind torch allows, with gaps on its
input and back-pressure on its output; its cycles per image are the plan's."""

import numpy as np
import pytest

from spikesmith.contract.network import PoolGeometry, max_pool
from spikesmith.contract.streaming import StreamPoolPlan
from spikesmith.hw.stream_pool import StreamMaxPool
from spikesmith.sim.hdl import StreamSink, StreamSource, run_streams

from test_stream_conv import pixel_beats, random_codes, steady_gap


def random_pool(seed: int):
    rng = np.random.default_rng(seed)
    while True:
        c = int(rng.integers(1, 5))
        kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        shape = (c, int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        geometry = PoolGeometry(shape, kernel, stride, padding, dilation, bool(rng.integers(0, 2)))
        if geometry.valid():
            lanes = int(rng.choice([d for d in range(1, c + 1) if c % d == 0]))
            input_lanes = int(rng.choice([d for d in range(1, c + 1) if c % d == 0]))
            return geometry, int(rng.integers(1, 9)), lanes, input_lanes


POOLS = [(PoolGeometry((4, 8, 8), (2, 2), (2, 2)), 8, 2, 4), (PoolGeometry((2, 7, 7), (3, 3), (2, 2), (1, 1)), 4, 1, 2),
         (PoolGeometry((3, 5, 5), (2, 2), (2, 2), ceil_mode=True), 3, 3, 1)] + [random_pool(seed) for seed in range(16)]


def run_pool(plan: StreamPoolPlan, codes, in_probability=1.0, out_probability=1.0):
    T, g = plan.timesteps, plan.geometry
    dut = StreamMaxPool(plan)
    rng = np.random.default_rng(0)
    expected = pixel_beats(max_pool(codes, g), g.out_shape, plan.lanes, T)
    source = StreamSource(dut.codes_in, pixel_beats(codes, g.in_shape, plan.input_lanes, T),
                          probability=in_probability, rng=rng)
    sink = StreamSink(dut.codes_out, len(expected), probability=out_probability, rng=rng, drain=20,
                      limit=50 * len(codes) * plan.image_cycles() + 10_000)
    run_streams(dut, source, sink)
    return sink, expected


@pytest.mark.parametrize("case", POOLS, ids=[f"pool{k}" for k in range(len(POOLS))])
def test_every_pooled_code_is_the_golden_models(case):
    geometry, T, lanes, input_lanes = case
    plan = StreamPoolPlan(0, "pool", geometry, T, lanes, input_lanes)
    codes = random_codes(np.random.default_rng(1), 3, geometry.in_size, T)
    sink, expected = run_pool(plan, codes, in_probability=0.8, out_probability=0.7)
    assert sink.received == expected and not sink.extra


@pytest.mark.parametrize("case", POOLS[::2], ids=[f"pool{k}" for k in range(0, len(POOLS), 2)])
def test_cycles_per_image_are_the_plans(case):
    geometry, T, lanes, input_lanes = case
    plan = StreamPoolPlan(0, "pool", geometry, T, lanes, input_lanes)
    images = 4
    sink, expected = run_pool(plan, random_codes(np.random.default_rng(2), images, geometry.in_size, T))
    assert sink.received == expected
    assert steady_gap(sink, images) == plan.image_cycles()
