"""Simulation speed: the golden model, Verilator and amaranth.sim on the digits MLP (T=8).

    python bench/simspeed.py            # ~3 min

Golden model: images/s of ``golden.run`` in one batch on the CPU (numpy int64). Verilator:
simulated cycles/s and images/s of the emitted core's Verilog streaming the digits test
split (build time apart). amaranth.sim: the same core in Amaranth's Python simulator on a
few images. Writes bench/results/simspeed.json and BENCHMARKS.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import log, save
from nets import train


def main() -> None:
    started = time.time()
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.hdl import simulate_core
    from spikesmith.sim.verilator import build_core, run_core

    trained = train("digits-mlp")
    net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
    codes = net.input.encode(trained.test.images, net.timesteps)
    plan = plan_core(net)
    figures = {"network": trained.title + ", T=8", "lanes": [layer.lanes for layer in plan.layers]}

    batch = np.concatenate([codes] * 40)
    golden.run(net, batch[:100])
    t = time.perf_counter()
    expected_batch = golden.run(net, batch)
    seconds = time.perf_counter() - t
    figures["golden"] = {"images": len(batch), "seconds": seconds, "images_per_second": len(batch) / seconds}
    log(f"golden: {len(batch) / seconds:,.0f} images/s")
    assert len(expected_batch.predictions) == len(batch)

    expected = golden.run(net, codes)
    cache = Path(tempfile.mkdtemp(prefix="spikesmith-bench-"))
    t = time.perf_counter()
    build = build_core(plan, cache)
    build_seconds = time.perf_counter() - t
    t = time.perf_counter()
    run = run_core(build, plan, codes, expected)
    seconds = time.perf_counter() - t
    assert run.passed and run.mismatches == 0
    figures["verilator"] = {"images": len(codes), "build_seconds": build_seconds, "seconds": seconds,
                            "cycles": int(run.cycles), "cycles_per_second": run.cycles / seconds,
                            "images_per_second": len(codes) / seconds}
    log(f"verilator: {run.cycles / seconds:,.0f} cycles/s, {len(codes) / seconds:.1f} images/s")

    few = codes[:6]
    t = time.perf_counter()
    hdl = simulate_core(plan, few)
    seconds = time.perf_counter() - t
    assert hdl.logits.tolist() == expected.logits[:6].tolist()
    figures["amaranth_sim"] = {"images": len(few), "seconds": seconds, "cycles": int(hdl.cycles),
                               "cycles_per_second": hdl.cycles / seconds, "images_per_second": len(few) / seconds}
    log(f"amaranth.sim: {hdl.cycles / seconds:,.0f} cycles/s, {len(few) / seconds:.2f} images/s")
    save("simspeed", figures, started)


if __name__ == "__main__":
    main()
