"""Hardware efficiency: cycles per image against the lower bound, work skipped, lanes vs interval.

    python bench/hardware.py            # digits MLP and the 6-layer MLP under Verilator, ~10 min

For each network (T=8) and lane budget, the core's Verilog runs under Verilator on the whole
digits test split, back to back. Per image:

- lower bound: the synaptic operations the image really needs in each layer (input spike
  events x neurons) divided by that layer's lanes; the largest over the layers (the
  bottleneck) bounds any schedule that does one synaptic operation per lane per cycle;
- measured: the steady-state gap between results (spike skipping on), and with skipping off
  (every neuron sent at every step), which is the report's worst-case interval exactly;
- skipped: the share of neuron-steps that were silent and never sent.

Also times the simulators (section 3 uses it). Writes bench/results/hardware.json,
bench/plots/lanes_vs_interval.png and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import PLOTS, log, pyplot, save, scratch
from nets import train

BUDGETS = [8, 16, 32, 64, 128]


def popcount(codes: np.ndarray) -> np.ndarray:
    """Set bits per row of T-bit codes: (N, n) -> (N,)."""
    codes = np.asarray(codes, dtype=np.int64)
    return sum(((codes >> b) & 1).sum(axis=1) for b in range(16))


def events_per_layer(net, expected) -> list[np.ndarray]:
    """Input spike events of every layer per image, from the golden trace."""
    events = [popcount(expected.input_codes)]
    for layer_trace in expected.trace[:-1]:
        events.append(popcount(layer_trace.codes))
    return events


def measure(net, plan, codes, expected, cache: Path) -> dict:
    from spikesmith.sim.verilator import build_core, run_core

    build = build_core(plan, cache)
    start = time.perf_counter()
    run = run_core(build, plan, codes, expected)
    seconds = time.perf_counter() - start
    assert run.passed and run.mismatches == 0, run.first_mismatch
    gaps = np.diff(np.sort(run.result_cycles))
    return {"cycles_per_image": float(gaps.mean()), "cycles": int(run.cycles), "seconds": seconds,
            "cycles_per_second": run.cycles / seconds, "images_per_second": len(codes) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["digits-mlp", "digits-deep"])
    parser.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    args = parser.parse_args()
    started = time.time()

    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.sizing import DEFAULT_LANE_BUDGET, plan_core
    from spikesmith.sim import golden

    cache = scratch("spikesmith-bench-")
    figures = {}
    for key in args.nets:
        trained = train(key)
        net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
        codes = net.input.encode(trained.test.images, net.timesteps)
        expected = golden.run(net, codes, trace=True)
        events = events_per_layer(net, expected)
        neuron_steps = [layer.in_size * net.timesteps for layer in net.layers]
        rows = []
        for budget in args.budgets:
            plan = plan_core(net, budget=budget)
            lanes = [layer.lanes for layer in plan.layers]
            bound = np.max([e * layer.out_size / L for e, layer, L in zip(events, net.layers, lanes)], axis=0)
            log(f"{key}: budget {budget}, lanes {lanes}: Verilator on {len(codes)} images")
            row = {"budget": budget, "lanes": lanes, "input_lanes": plan.input.lanes,
                   "worst_case_interval": plan.initiation_interval, "lower_bound_cycles": float(bound.mean()),
                   "skipping": measure(net, plan, codes, expected, cache)}
            if budget == DEFAULT_LANE_BUDGET:
                no_skip = plan_core(net, budget=budget, skip_silent=False)
                row["no_skipping"] = measure(net, no_skip, codes, expected, cache)
            rows.append(row)
            log(f"  {row['skipping']['cycles_per_image']:.0f} cycles/image (bound {bound.mean():.0f}, "
                f"worst {plan.initiation_interval})")
        figures[key] = {
            "title": trained.title + ", T=8", "images": len(codes), "rows": rows,
            "layers": [{"name": layer.name, "inputs": layer.in_size, "neurons": layer.out_size,
                        "events_per_image": float(e.mean()), "silent_share": float(1 - e.mean() / steps)}
                       for layer, e, steps in zip(net.layers, events, neuron_steps)],
        }
    plot(figures)
    save("hardware", figures, started)


def plot(figures: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(figures), figsize=(6 * len(figures), 4.2), squeeze=False)
    for ax, entry in zip(axes[0], figures.values()):
        rows = entry["rows"]
        total = [sum(r["lanes"]) for r in rows]
        ax.plot(total, [r["worst_case_interval"] for r in rows], "s--", label="worst case (= skipping off)")
        ax.plot(total, [r["skipping"]["cycles_per_image"] for r in rows], "o-", label="measured, skipping on")
        ax.plot(total, [r["lower_bound_cycles"] for r in rows], "^:", label="lower bound (needed SOPs / lanes)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("lanes in all layers")
        ax.set_ylabel("cycles per image")
        ax.set_title(entry["title"], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "lanes_vs_interval.png", dpi=120)


if __name__ == "__main__":
    main()
