"""Simulation speed: the golden model, the compiled Verilator harness, cocotb and amaranth.sim on the digits MLP (T=8).

    python bench/simspeed.py            # ~3 min

All in one run, on the same core. Golden model: images/s of ``golden.run`` in one batch on
the CPU (numpy int64). Compiled harness (sim/harness.py): simulated cycles/s and images/s of
the emitted Verilog streaming the digits test split 20 times back to back (9,000 images),
wall time of the whole call (job file, run, comparison with the golden model; build apart),
single-threaded and with Verilator's ``--threads 2``. cocotb (sim/verilator.py): the same
Verilog streaming the test split once. amaranth.sim: the same core in Amaranth's Python
simulator on a few images. Writes bench/results/simspeed.json and BENCHMARKS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common import log, save, scratch
from nets import train


def _harness(plan, cache, codes, expected, threads: int) -> dict:
    from spikesmith.sim.harness import build_harness, run_harness

    t = time.perf_counter()
    build = build_harness(plan, cache, threads=threads)
    build_seconds = time.perf_counter() - t
    best = None
    for _ in range(3):                       # the best of three: the machine's other load aside
        t = time.perf_counter()
        run = run_harness(build, plan, codes, expected)
        seconds = time.perf_counter() - t
        assert run.passed and run.mismatches == 0
        best = seconds if best is None else min(best, seconds)
    return {"images": len(codes), "build_seconds": build_seconds, "seconds": best, "cycles": int(run.cycles),
            "cycles_per_second": run.cycles / best, "images_per_second": len(codes) / best, "threads": threads}


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
    cache = scratch("spikesmith-bench-")
    repeated = np.concatenate([codes] * 20)
    expected_repeated = golden.run(net, repeated)
    for key, threads in (("harness", 1), ("harness_threads2", 2)):
        figures[key] = _harness(plan, cache, repeated, expected_repeated, threads)
        log(f"{key}: {figures[key]['cycles_per_second']:,.0f} cycles/s, {figures[key]['images_per_second']:,.0f} images/s")

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
    log(f"cocotb: {run.cycles / seconds:,.0f} cycles/s, {len(codes) / seconds:.1f} images/s")
    figures["harness_over_cocotb"] = figures["harness"]["cycles_per_second"] / figures["verilator"]["cycles_per_second"]

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
