"""BENCHMARKS.md from bench/results/*.json: one section per script, each with its command and machine.

    python bench/report.py      # regenerate without rerunning anything (the scripts call it too)
"""

from __future__ import annotations

import json

from common import RESULTS, ROOT

ORDER = [("accuracy", "1. Accuracy vs time steps"), ("hardware", "2. Hardware efficiency"),
         ("simspeed", "3. Simulation speed"), ("boards", "4. Boards"),
         ("mlp_shapes", "4b. The iCEBreaker at 48 MHz: digits MLPs of other shapes"),
         ("mnist", "5. MNIST against published FPGA SNN generators"), ("link", "6. A noisy serial link"),
         ("soak", "7. Soak: random networks and all of MNIST through the compiled harness"),
         ("cnn_mnist", "8. CNNs with max pooling and residual blocks on MNIST, to the core and the board"),
         ("cifar_shapes", "9. The seed's scale: CIFAR-shaped ResNet-8 and VGG (untrained, synthetic images)"),
         ("endtoend", "10. End to end: the UART board top at 115200 and 3,000,000 baud"),
         ("sweep", "11. A design-space sweep on Ray: the Pareto front and the estimates against nextpnr")]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _provenance(record: dict) -> str:
    m = record["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (f"Command: `{record['command']}` ({record['seconds']:.0f} s, {record['date']})  \n"
            f"Machine: {m['cpu']}, {m['cores']} cores"
            f"{', load average ' + str(m['load_average']) + ' when saved' if 'load_average' in m else ''}, "
            f"{m['os']}, Python {m['python']}; {packages}\n")


def accuracy_section(f: dict) -> list[str]:
    lines = ["Smallest T within 0.5 points of the ANN (Table 1):", "",
             "| network | ANN | spikesmith iLIF k=2 | spikesmith fine-tuned | rate-coded IF | SpikingJelly ann2snn |",
             "|---|---|---|---|---|---|"]
    for entry in f.values():
        s = entry["smallest_t_within_half_point"]
        top = max(entry.get("rate_t") or map(int, entry["rate_if"]))
        jelly = ("not installed" if entry["spikingjelly"] is None else "failed" if not entry["spikingjelly"]
                 else f"T = {s['spikingjelly']}" if s["spikingjelly"] else f"T > {top}")
        rate = "no max pool" if entry["rate_if"] is None else f"T = {s['rate_if']}" if s["rate_if"] else f"T > {top}"
        tuned = f"T = {s['finetuned'] or '> ' + str(max(map(int, entry['finetuned'])))}" if "finetuned" in entry else "-"
        lines.append(f"| {entry['title']} | {_pct(entry['ann_accuracy'])} % | T = {s['ilif'] or '> 16'} | {tuned} | "
                     f"{rate} | {jelly} |")
    for entry in f.values():
        ts = sorted({int(t) for t in entry["ilif"]} | {int(t) for t in entry["rate_if"] or ()}
                    | {int(t) for t in entry["spikingjelly"] or ()})
        lines += ["", f"**{entry['title']}** (train {entry['train']}, test {entry['test']}, "
                      f"{entry['test_images']} images), test accuracy (%) by T:", "",
                  "| T | " + " | ".join(map(str, ts)) + " |", "|---" * (len(ts) + 1) + "|"]
        ts = sorted(set(ts) | {int(t) for t in entry.get("finetuned", {})})
        lines[-2:] = ["| T | " + " | ".join(map(str, ts)) + " |", "|---" * (len(ts) + 1) + "|"]
        for name, key in (("iLIF k=2", "ilif"), ("fine-tuned", "finetuned"), ("golden = fine-tuned model (%)",
                                                                               "finetuned_agreement"),
                          ("rate IF", "rate_if"), ("SpikingJelly", "spikingjelly")):
            points = entry.get(key)
            if points:
                lines.append(f"| {name} | " + " | ".join(_pct(points.get(str(t))) for t in ts) + " |")
        spread = entry.get("finetuned_seeds")
        if spread:
            lines += ["", "Fine-tuned over seeds 0-3 (the batch order): " + "; ".join(
                f"T = {t}: {_pct(min(v))}-{_pct(max(v))} % (mean {_pct(sum(v) / len(v))} %)" for t, v in spread.items())
                + ". The agreement row is the lowest over the seeds where seeds were run."]
    lines += ["", "iLIF codes are T bits wide and the converter takes T <= 16; past T = 8-12 it has "
                  "converged. The rate-coded baseline is float64 (no quantisation) with the analog image as "
                  "input current, its most favourable setting; it has no max pool (the max of spike trains is not "
                  "the train of the max), so the MNIST CNNs have no rate column. SpikingJelly keeps a max pool as "
                  "a max of spikes. Its T stops at 64 on the MNIST CNNs.",
              "", "**fine-tuned**: `spikesmith finetune` at that T with its defaults (20 epochs, Adam 1e-3, "
                  "distillation from the ANN, 8-bit weights on conversion's grid, seed 0; the ANN's own training "
                  "images), converted, integer golden model. **golden = fine-tuned model**: the share of test "
                  "images on which the golden model and the fine-tuned torch program (`torch.export`, run by "
                  "torch) predict the same class. MNIST: the shared t10k set, images 0-7999 train and "
                  "calibrate, 8000-9999 test.", "", "![accuracy vs T](bench/plots/accuracy_vs_T.png)"]
    return lines


def generic_section(f: dict) -> list[str]:
    return ["```json", json.dumps(f, indent=2), "```"]


def hardware_section(f: dict) -> list[str]:
    lines = []
    for entry in f.values():
        lines += [f"**{entry['title']}**, {entry['images']} digits test images back to back under Verilator. "
                  "Cycles per image: the lower bound (needed synaptic operations / lanes of the bottleneck "
                  "layer), measured with spike skipping, and the worst case (= skipping off).", "",
                  "| lanes | worst case (skipping off) | measured, skipping on | lower bound | measured / bound |",
                  "|---|---|---|---|---|"]
        for row in entry["rows"]:
            measured = row["skipping"]["cycles_per_image"]
            lanes = "/".join(map(str, row["lanes"]))
            lines.append(f"| {lanes} (input {row['input_lanes']}) | {row['worst_case_interval']:,} | {measured:,.0f} | "
                         f"{row['lower_bound_cycles']:,.0f} | {measured / row['lower_bound_cycles']:.1f}x |")
        for row in entry["rows"]:
            if "no_skipping" in row:
                off, on = row["no_skipping"]["cycles_per_image"], row["skipping"]["cycles_per_image"]
                lines += ["", f"Skipping off at lanes {'/'.join(map(str, row['lanes']))}: {off:,.0f} cycles per image "
                              f"measured (the plan's worst case: {row['worst_case_interval']:,}); on: {on:,.0f}, "
                              f"{100 * (1 - on / off):.0f} % fewer."]
        lines += ["", "| layer | inputs x neurons | input spike events per image | silent input neuron-steps (skipped) |",
                  "|---|---|---|---|"]
        for layer in entry["layers"]:
            lines.append(f"| {layer['name']} | {layer['inputs']} x {layer['neurons']} | {layer['events_per_image']:.1f} | "
                         f"{100 * layer['silent_share']:.1f} % |")
        lines.append("")
    lines += ["Where the measured cycles exceed the bound: each step's doubling pass costs B cycles per layer "
              "whatever the spikes, and the stages of a layer hand over whole images (docs/core.md, Timing).", "",
              "![lanes vs interval](bench/plots/lanes_vs_interval.png)"]
    return lines


def simspeed_section(f: dict) -> list[str]:
    g, v, a = f["golden"], f["verilator"], f["amaranth_sim"]
    lines = [f"{f['network']}, lanes {'/'.join(map(str, f['lanes']))}; one run, the same core in every row.", "",
             "| simulator | images/s | simulated cycles/s | what |", "|---|---|---|---|",
             f"| golden model (numpy int64, one batch) | {g['images_per_second']:,.0f} | - | {g['images']} images |"]
    for key, what in (("harness", "compiled harness (sim/harness.py), default"),
                      ("harness_threads2", "compiled harness, Verilator --threads 2")):
        if key in f:
            h = f[key]
            lines.append(f"| {what} | {h['images_per_second']:,.0f} | {h['cycles_per_second']:,.0f} | "
                         f"{h['images']} images, {h['cycles']:,} cycles, best of 3 calls (job file, run, comparison); "
                         f"build {h['build_seconds']:.0f} s apart |")
    lines += [f"| Verilator under cocotb (sim/cocotb_bench.py) | {v['images_per_second']:,.1f} | "
              f"{v['cycles_per_second']:,.0f} | {v['images']} images, {v['cycles']:,} cycles; build "
              f"{v['build_seconds']:.0f} s apart |",
              f"| amaranth.sim (Python) | {a['images_per_second']:,.2f} | {a['cycles_per_second']:,.0f} | "
              f"{a['images']} images, {a['cycles']:,} cycles |"]
    if "harness_over_cocotb" in f:
        lines += ["", f"The compiled harness simulates {f['harness_over_cocotb']:,.0f}x as many cycles per second as "
                      "the cocotb bench on the same Verilog."]
    return lines


def _network_name(r: dict) -> str:
    """The network's short name (its title up to the first bracket or comma)."""
    return r.get("network", "").split(" (")[0].split(",")[0]


def _board_row(r: dict) -> str:
    if "failed" in r:
        return (f"| {_network_name(r)} | {r['board']} | {r['options'] or '-'} | - | - | - | "
                f"**build failed**: {r['failed'][:200]} | - | - |")
    use = r["utilisation"]
    logic = use.get("ICESTORM_LC") or use.get("TRELLIS_COMB")
    ram = [f"{u['used']} {name}" for name, u in use.items()
           if name in ("ICESTORM_RAM", "ICESTORM_SPRAM", "DP16KD", "TRELLIS_RAMW") and u["used"]]
    estimate = r.get("estimate", {}).get("logic")
    estimated = f" (est. {estimate:,})" if estimate else ""
    seeds = r.get("placement", {}).get("fmax_mhz_by_seed", {})      # (builds before --seeds have none)
    placed = (f"; seed {r['placement']['seed']} of {len(seeds)}: {', '.join(f'{mhz:.1f}' for mhz in seeds.values())}"
              if len(seeds) > 1 else "")
    return (f"| {_network_name(r)} | {r['board']} ({r['device']}) | {r['options'] or '-'} | {'/'.join(map(str, r['lanes']))} | "
            f"{logic['used']:,} / {logic['total']:,}{estimated} | {', '.join(ram)} | {r['fmax_mhz']:.1f} MHz "
            f"({r['clock_hz'] / 1e6:g} MHz{'' if r['timing_met'] else ', FAILS'}{placed}) | "
            f"{_core_rate(r):,.0f} | {r['build_seconds'] / 60:.1f} min |")


def _core_rate(r: dict) -> float:
    """Worst-case images/s at the clock the build reached: the one asked for, or Fmax when missed."""
    return r["core_images_per_second_at_clock" if r["timing_met"] else "core_images_per_second_at_fmax"]


def boards_section(f: dict) -> list[str]:
    networks = "; ".join(f.get("networks") or [f["network"]])
    lines = [f"{networks}. Figures from nextpnr's report; images/s from the worst-case interval at the clock "
             "(spike skipping makes the real rate higher; the 115200-baud UART carries ~160 images/s). Lanes sized "
             "for speed unless the options give them; logic with the sizing's estimate beside it. A build that "
             "misses its clock is kept (nextpnr with --timing-allow-fail): FAILS beside the clock. Builds since "
             "`--seeds` place from nextpnr seeds 1, 2, ... (5 at most) until one meets the clock, and keep the best; "
             "where more than one was tried the clock cell lists each seed's Fmax.", "",
             "| network | board | options | lanes | logic (LC / LUT4) | RAM | Fmax (clock) | core images/s (at min(clock, Fmax)) | build |",
             "|---|---|---|---|---|---|---|---|---|"]
    return lines + [_board_row(r) for r in f["builds"]]


def mlp_shapes_section(f: dict) -> list[str]:
    met = sum(r.get("timing_met", False) for r in f["builds"])
    lines = [f"Digits MLPs with one to three hidden layers (odd widths included), T=8, trained on the digits set; "
             f"`spikesmith build --board icebreaker --clock {f['clock_mhz']:g}`, lanes sized for speed. "
             f"**{met} of {len(f['builds'])} meet {f['clock_mhz']:g} MHz.** Columns as in section 4.", "",
             "| network | board | options | lanes | logic (LC / LUT4) | RAM | Fmax (clock) | core images/s (at min(clock, Fmax)) | build |",
             "|---|---|---|---|---|---|---|---|---|"]
    return lines + [_board_row(r) for r in f["builds"]]


def _asked(r: dict) -> str:
    """The clock a build asked for and whether nextpnr met it."""
    met = "met" if r["timing_met"] else f"missed: Fmax {r['fmax_mhz']:.1f}"
    return f"asked {r['clock_hz'] / 1e6:g} MHz, {met}"


def mnist_section(f: dict) -> list[str]:
    lines = [f"{f['network']}, T=8; {f['split']}. **This is not the standard MNIST split** (60k train / 10k "
             f"test): the network trains on 8,000 images only.", "",
             f"ANN {_pct(f['ann_accuracy'])} %, spikesmith SNN (integer golden model, bit-exact to the hardware) "
             f"{_pct(f['golden_accuracy'])} % on {f['test_images']} test images.", "",
             "| design | FPGA | accuracy | logic | block RAM | clock | us / image | images/s | images/s per 1k LUT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in f["boards"]:
        if "failed" in r:
            lines.append(f"| spikesmith, {r['board']} lanes {'/'.join(map(str, r['lanes']))} | - | - | - | - | - | "
                         f"{r['measured_cycles_per_image']:,.0f} cycles measured; **the build failed**: "
                         f"{r['failed'].splitlines()[-1][:160]} | - | - |")
            continue
        use = r["utilisation"]
        logic = use.get("ICESTORM_LC") or use.get("TRELLIS_COMB")
        ram = ", ".join(f"{u['used']} {name}" for name, u in use.items()
                        if name in ("ICESTORM_RAM", "ICESTORM_SPRAM", "DP16KD", "TRELLIS_RAMW") and u["used"])
        rate = r["measured_images_per_second"]
        unit = "LC" if "ICESTORM_LC" in use else "LUT4"
        lines.append(f"| spikesmith, {r['board']} lanes {'/'.join(map(str, r['lanes']))} | {r['device']} | "
                     f"{_pct(f['golden_accuracy'])} % | {logic['used']:,} {unit} | {ram} | "
                     f"{r.get('achieved_clock_hz', r['clock_hz']) / 1e6:.1f} MHz ({_asked(r)}) | "
                     f"{r['measured_us_per_image']:,.1f} measured, "
                     f"{r['worst_us_per_image']:,.0f} worst | {rate:,.0f} | {1000 * rate / logic['used']:,.1f} |")
    for p in f["published"]:
        rate = 1e6 / p["us_per_image"]
        lines.append(f"| {p['name']} (published) | {p['fpga']} | {_pct(p['accuracy'])} % | {p['luts']:,} {p.get('logic_unit', 'LUTs')} | "
                     f"{p['bram']} BRAM | {p['clock_mhz'] or '-'} MHz | {p['us_per_image']:,.0f} | {rate:,.0f} | "
                     f"{1000 * rate / p['luts']:,.2f} |")
    lines += ["", "Different FPGA families (iCE40 LC and ECP5 LUT4 vs Artix-7 6-input LUTs; iCE40 EBR 4 Kbit, "
                  "ECP5 DP16KD 18 Kbit, Artix-7 BRAM 36 Kbit): compare per image and per LUT with that in mind. "
                  "The published designs' accuracy comes from training on the standard 60k split. spikesmith's "
                  "us/image is the core's steady-state interval at the achieved clock (the one asked for, or Fmax when the "
                  "build missed it; measured with spike skipping "
                  "under Verilator on the first test images; the worst case beside it); the UART is not counted "
                  "(at 115200 baud a 784-byte MNIST image takes 69 ms: ~14 images/s)."]
    return lines


def link_section(f: dict) -> list[str]:
    damaged = f["damaged_bytes"]
    v = f["verilated"]
    retries = (f"with `spikesmith infer`'s default of {f['retries']} retries (an image sent at most "
               f"{f['retries'] + 1} times; the most any needed: {f['most_sends']}), " if "retries" in f else "")
    return [f"{f['complete']} of {f['runs']} runs of {f['images']} images complete over a link damaging "
            f"{100 * f['damage']:g} % of the bytes each way (dropped {damaged['dropped']:,}, duplicated "
            f"{damaged['duplicated']:,}, corrupted {damaged['corrupted']:,} bytes in all), {retries}every result "
            f"correct in every logit, exactly once, in order; {f['resent']:,} images resent; "
            f"{f['seconds_per_run']:.1f} s per run (the board model of tests/fakeboard.py through "
            "sim/link.py's LossyLink).", "",
            f"The board top under Verilator behind the same damage: "
            f"{'complete, every result correct' if v['complete'] else 'FAILED: ' + v.get('error', 'wrong results')}"
            f"{', ' + str(v['resent']) + ' resent' if 'resent' in v else ''}"
            f"{', at most ' + str(v['most_sends']) + ' sends of an image' if 'most_sends' in v else ''} "
            f"({v['seconds']:.0f} s)."]


def soak_section(f: dict) -> list[str]:
    rows, t = f["networks"], f["totals"]
    lines = ["Every result of every image compared with the golden model (label and every logit).", "",
             "| part | networks | images | simulated cycles | mismatches | wall time (build + run) |",
             "|---|---|---|---|---|---|"]
    parts = [(f"random {kind} networks", [r for r in rows if r["kind"] == kind]) for kind in ("dense", "conv", "pooled")]
    parts += [(f"of the {kind} ones, on the streaming engine (random K x S chunks)",
               [r for r in rows if r["kind"] == kind and r.get("engine") == "streaming"]) for kind in ("conv", "pooled")]
    for name, part in parts:
        lines.append(f"| {name} | {len(part)} | {sum(r['images'] for r in part):,} | "
                     f"{sum(r['cycles'] for r in part):,} | {sum(r['mismatches'] for r in part)} | "
                     f"{sum(r['build_seconds'] for r in part):.0f} s + {sum(r['seconds'] for r in part):.0f} s |")
    lines.append(f"| **all random networks** | **{t['networks']}** | **{t['images']:,}** | **{t['cycles']:,}** | "
                 f"**{t['mismatches']}** | {t['build_seconds']:.0f} s + {t['run_seconds']:.0f} s |")
    m = f.get("mnist")
    if m:
        lines.append(f"| {m['network']}, `spikesmith simulate` on all {m['images']:,} images of ../shared/data/mnist | 1 | "
                     f"{m['images']:,} | {m['cycles']:,} | {m['mismatches']} | {m['seconds']:.0f} s in all, the "
                     f"command's start to its exit ({m['cycles_per_second']:,.0f} cycles/s while streaming) |")
    p = f["perturbed"]
    lines += ["", f"Test of the test: one golden logit of network 0 perturbed: {p['mismatches']} mismatch reported "
                  f"({'caught' if p['caught'] else 'NOT CAUGHT'}): `{p['report']}`."]
    if m:
        lines += ["", f"MNIST: trained and calibrated on images 0-7999 of the t10k set (not the standard 60k "
                      f"training split); the simulate run covers all 10,000 (accuracy {100 * m['accuracy_all']:.2f} % "
                      f"over all of them, training images included). On the held-out images {m['held_out']}: ANN "
                      f"{100 * m['ann_accuracy_held_out']:.2f} %, golden model (= hardware) "
                      f"{100 * m['golden_accuracy_held_out']:.2f} %."]
    lines += ["", "<details><summary>Every network</summary>", "",
              "| # | network | T | weight bits | lanes | input lanes | skip | valid | ready | images | cycles | "
              "mismatches | build s | run s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['network']} | {r['timesteps']} | {r['weight_bits']} | "
                     f"{'/'.join(map(str, r['lanes']))} | {r['input_lanes']} | {'on' if r['skip'] else 'off'} | "
                     f"{r['valid']:.2f} | {r['ready']:.2f} | {r['images']} | {r['cycles']:,} | {r['mismatches']} | "
                     f"{r['build_seconds']:.1f} | {r['seconds']:.2f} |")
    return lines + ["", "</details>"]


def cnn_mnist_section(f: dict) -> list[str]:
    lines = ["Trained and calibrated on MNIST t10k images 0-7999, tested on 8000-9999 (the shared t10k set, "
             "not the standard 60k training split). SNN golden is the integer reference the core matches bit "
             "for bit; the hardware rows run the T=8 core's Verilog under the compiled Verilator harness on all "
             "2,000 test images and compare every logit.", ""]
    for entry in f["networks"].values():
        pooled = [layer["name"] for layer in entry["layers"] if layer["max_pool"]]
        relays = sum(layer["relays"] for layer in entry["layers"])
        lines += [f"**{entry['network']}** (trained in {entry['train_seconds']:.0f} s; {len(entry['layers'])} "
                  f"spiking layers{', max pools read by ' + ', '.join(pooled) if pooled else ''}"
                  f"{f', {relays:,} relay neurons carrying the shortcuts' if relays else ''})"
                  + (f"; figures from `{entry['command']}` ({entry['date']})" if entry.get("command") else ""), "",
                  "| T | ANN | SNN float (conversion error only) | SNN golden | golden = ANN's class |",
                  "|---|---|---|---|---|"]
        for t, p in entry["points"].items():
            lines.append(f"| {t} | {_pct(entry['ann_accuracy'])} | {_pct(p['snn_float'])} | {_pct(p['golden'])} | "
                         f"{_pct(p['agreement_with_ann'])} |")
        hw = entry["hardware"]
        taps = f", streaming convolutions at {'/'.join(map(str, hw['chunks']))} taps a cycle" if hw.get("chunks") else ""
        lines += ["", f"Core at T=8 (lanes {'/'.join(map(str, hw['lanes']))}{taps}): {hw['results']:,} of {hw['images']:,} "
                      f"results, **{hw['mismatches']} mismatches** with the golden model, accuracy "
                      f"{_pct(hw['hardware_accuracy'])} %; {hw['measured_cycles_per_image']:,.0f} cycles per image "
                      f"in steady state (worst case {hw['initiation_interval_worst']:,}); "
                      f"harness {hw['harness_seconds']:.0f} s.", ""]
        built = [r for r in hw["boards"] if "refused" not in r]
        if built:
            lines += ["| network | board | options | lanes | logic (LC / LUT4) | RAM | Fmax (clock) | core images/s "
                      "(worst case) | build |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [_board_row({**r, "network": entry["network"]}) for r in built]
            for r in built:
                lines += ["", f"At the build's {r['clock_hz'] / 1e6:g} MHz clock the measured steady state is "
                              f"{r['clock_hz'] / hw['measured_cycles_per_image']:,.0f} images/s "
                              f"({1e6 * hw['measured_cycles_per_image'] / r['clock_hz']:,.0f} us per image); at "
                              f"its Fmax it would be {1e6 * r['fmax_mhz'] / hw['measured_cycles_per_image']:,.0f}."]
        for r in hw["boards"]:
            if "refused" in r:
                lines += ["", f"{r['board']}: refused: {r['refused']}"]
        lines.append("")
    return lines + _cnn_comparison(f)


def _cnn_comparison(f: dict) -> list[str]:
    """spikesmith's MNIST CNN cores at their build clocks beside the published MNIST CNN accelerators."""
    if not f.get("published"):
        return []
    lines = ["**Against published MNIST CNN accelerators** (images/s of the core; spikesmith's at the clock its "
             "build met, measured under the compiled harness with skipping on the 2,000 test images)", "",
             "| design | device | MNIST accuracy | images/s | logic | images/s per 1k LUT |", "|---|---|---|---|---|---|"]
    for entry in f["networks"].values():
        hw = entry["hardware"]
        for r in hw["boards"]:
            if "refused" in r or "failed" in r:
                continue
            use = r["utilisation"]
            logic = (use.get("TRELLIS_COMB") or use.get("ICESTORM_LC"))["used"]
            rate = r["clock_hz"] / hw["measured_cycles_per_image"]
            lines.append(f"| spikesmith, {entry['network'].split(' (')[0]}, T=8 | {r['device']} at "
                         f"{r['clock_hz'] / 1e6:g} MHz | {_pct(hw['hardware_accuracy'])} % (8k training images) | "
                         f"{rate:,.0f} | {logic:,} LUT4 | {1000 * rate / logic:,.1f} |")
    for p in f["published"]:
        luts = f"{p['luts']:,} LUTs" if p["luts"] else "in the paper's tables (not read here)"
        per = f"{1000 * p['images_per_second'] / p['luts']:,.1f}" if p["luts"] else "-"
        lines.append(f"| {p['name']} (published) | {p['device']} | {_pct(p['accuracy'])} % | "
                     f"{p['images_per_second']:,} | {luts} | {per} |")
    return lines + ["", "The published figures are their abstracts' (" + "; ".join(
        f"{p['name'].split(' (')[0]}: {p['source']}" for p in f["published"]) + "), on Xilinx 6-input LUTs at "
        "hundreds of MHz; spikesmith's are ECP5 4-input LUTs with the open toolchain. The published accuracies come "
        "from the standard 60k training split.", ""]


def cifar_shapes_section(f: dict) -> list[str]:
    lines = ["CIFAR-10 is not shipped: the networks are untrained (seeded initialisation, batch norm drawn away "
             "from the identity), calibrated on 64 synthetic 3x32x32 colour fields and run on others. What is "
             "measured is the generator at this size, not accuracy. T=8, lanes as `build --board ulx3s-85f` "
             "chooses them.", "",
             "| network | layers | synapses | lanes (taps a cycle) | golden ms/image | Verilator images | mismatches | "
             "cycles/image (worst case) | memory (bits) | ULX3S-85F |", "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in f["networks"].values():
        board = entry["boards"][0] if entry["boards"] else {}
        if "refused" in board:
            verdict = "refused: " + board["refused"]
        elif board:
            use = board["utilisation"]
            rate = board["clock_hz"] / entry["measured_cycles_per_image"]
            verdict = (f"built at {board['clock_hz'] / 1e6:g} MHz (Fmax {board['fmax_mhz']:.1f}): "
                       f"{use['TRELLIS_COMB']['used']:,} LUT4, {use['DP16KD']['used']} DP16KD; "
                       f"**{rate:,.0f} images/s** measured")
        else:
            verdict = "not built (--no-build)"
        taps = f" ({'/'.join(map(str, entry['chunks']))})" if entry.get("chunks") else ""
        lines.append(f"| {entry['network']} | {len(entry['layers'])} | {entry['synapses']:,} | "
                     f"{'/'.join(map(str, entry['lanes']))}{taps} | "
                     f"{1000 * entry['golden_seconds_per_image']:.1f} | {entry['images']} | {entry['mismatches']} | "
                     f"{entry['measured_cycles_per_image']:,.0f} ({entry['initiation_interval_worst']:,}) | "
                     f"{entry['memory_bits']:,} | {verdict} |")
    lines += ["", "Memory by kind (bits):", ""]
    for entry in f["networks"].values():
        kinds = entry["memory_bits_by_kind"]
        parts = ", ".join(f"{kind} {bits:,}" for kind, bits in sorted(kinds.items(), key=lambda kv: -kv[1]))
        lines.append(f"- {entry['network']}: {parts}")
    lines += ["", "The convolutions stream (docs/core.md, \"Streaming convolution engine\"): line buffers and "
                  "windows, no membrane maps; weight tables of up to 16 rows (or 1 Kbit) are logic. Each window is "
                  "registers (about 2.5 LUT4s a bit of `kh * kw * C_in * T`), so a deep layer's window, not its "
                  "adders, decides how many lanes fit: sized within 60 % of the ECP5-85F's logic these plans are "
                  "small."]
    return lines


def _core_of(f: dict, run: dict) -> dict | None:
    """The core's measured interval for a run's network and plan (the window does not change the core)."""
    plan = "" if "--window" in run["options"] else run["options"]        # windows run on the default plan
    return next((c for c in f["cores"] if c["network"] == run["network"] and c["options"] == plan), None)


def endtoend_section(f: dict) -> list[str]:
    lines = ["`spikesmith infer NET --sim --baud B`: the board top under Verilator at 12 MHz, its UART at B "
             "(104 clock cycles per bit at 115200, 4 at 3 Mbaud); images/s end to end in simulated time (images x "
             "clock / simulated cycles from the first request byte to the last reply byte), every logit checked "
             "against the golden model. Beside it the line's bound (bit rate / bits of the image frame, 8N1) and "
             "the core's own rate at the same clock: worst case (the identity's interval) and measured (`spikesmith "
             "simulate`, steady-state interval on 100 test images with spike skipping).", ""]
    for key, network in f["networks"].items():
        lines.append(f"- {key}: {network['title']}; {network['split']}.")
    lines += ["", "| network | plan | baud | window | images | end to end images/s | line bound | core worst "
              "| core measured | of the lower of line and core |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in f["runs"]:
        core = _core_of(f, r)
        measured = r["clock_hz"] / core["cycles_per_image"] if core else r["core_images_per_second_worst"]
        plan = "iCEBreaker, " + r["options"].split("--spram")[0].strip() if "--spram" in r["options"] else "generate default"
        lines.append(f"| {r['network']} | {plan} | {r['baud']:,} | {r['window']} | {r['images']} | "
                     f"{r['images_per_second_end_to_end']:,.1f} | {r['line_images_per_second']:,.1f} | "
                     f"{r['core_images_per_second_worst']:,.0f} | {measured:,.0f} | "
                     f"{100 * r['images_per_second_end_to_end'] / min(measured, r['line_images_per_second']):.1f} % |")
    lines += ["", "Where the line is slower than the core, end to end approaches the line's bound once the window "
              "covers the round trip (one frame in flight leaves the line idle for the core's latency and the "
              "reply); where the core is slower (the iCEBreaker plans, `build --board icebreaker --spram 0`, at "
              "3 Mbaud), it approaches the core's measured rate."]
    lines += ["", "The weight load (protocol version 4: up to `load rows` consecutive rows a LOAD frame, `window` "
              "LOADs in flight), timed in simulated cycles from the identity to the commit's acknowledgement:", "",
              "| network | plan | baud | rows | row bytes | rows per LOAD | simulated seconds | rows/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in f["runs"]:
        load = r["weight_load"]
        if load["rows"]:
            lines.append(f"| {r['network']} | iCEBreaker, {r['options'].split('--spram')[0].strip()}, --spram 0 | "
                         f"{r['baud']:,} | {load['rows']:,} | {load['load_bytes']} | {load['load_rows']} | "
                         f"{load['simulated_cycles'] / r['clock_hz']:.3f} | {load['rows_per_second']:,.0f} |")
    lines += ["", "Simulated time counts the board and the line; the host's own reaction shrinks with the "
              "simulation's speed (about 100,000-200,000 cycles/s here, 60-120 times slower than the 12 MHz "
              "board), and a real USB UART adds its latency timer (1-16 ms on an FTDI), which the window must "
              "also cover: 3 frames of a 784-byte image are 7.9 ms of line at 3 Mbaud."]
    return lines


def sweep_section(f: dict) -> list[str]:
    points = f["points"]
    out = [f"`{f['command']}` on a local Ray instance, every point built by yosys and nextpnr at its board's "
           f"oscillator clock (the digits MLP trained on the digits train split; accuracy on its 450-image test "
           f"split). First run: {f['first_run']['builds']} builds in {f['first_run']['seconds'] / 60:.1f} min; the "
           f"same command again: {f['second_run']['builds']} builds, {f['second_run']['cached']} read from the cache, "
           f"in {f['second_run']['seconds']:.0f} s. **Bold**: the Pareto front (no other point has higher accuracy, "
           "less logic and more images/s). Plot: bench/plots/sweep.png.", "",
           "| T | weight bits | board | lane budget | lanes | golden accuracy | logic: nextpnr (estimate) | block RAM: "
           "nextpnr (estimate) | Fmax | images/s at the clock | build |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        mark = "**" if p["pareto"] else ""
        if p["status"] not in ("built", "cached"):
            out.append(f"| {p['T']} | {p['weight_bits']} | {p['board']} | {p['lane_budget']} | {p['lanes'] or '-'} | "
                       f"{_pct(p['golden_accuracy'])} | - ({p['logic_estimate'] or '-'}) | - ({p['ram_estimate']}) | - | "
                       f"- | {p['status']}: {(p['error'] or '')[:120]} |")
            continue
        out.append(f"| {mark}{p['T']}{mark} | {p['weight_bits']} | {p['board']} | {p['lane_budget']} | {p['lanes']} | "
                   f"{mark}{_pct(p['golden_accuracy'])}{mark} | {p['logic_used']:,} ({p['logic_estimate']:,}) | "
                   f"{p['ram_used']} ({p['ram_estimate']}) | {p['fmax_mhz']:.1f} MHz | {p['images_per_second']:,.0f} | "
                   f"{p['build_seconds'] / 60:.1f} min |")
    out += ["", "The estimator against nextpnr over the built points (what `--estimate-only` gives without the tools):", "",
            "| board | built points | logic: mean error | mean abs. error | largest | block RAM: mean abs. error | largest |",
            "|---|---|---|---|---|---|---|"]
    for board, e in f["estimator_error"].items():
        out.append(f"| {board} | {e['points']} | {e['logic_mean_pct']:+.1f} % | {e['logic_mean_abs_pct']:.1f} % | "
                   f"{e['logic_max_abs_pct']:.1f} % | {e['ram_mean_abs_blocks']:.1f} blocks | {e['ram_max_abs_blocks']} blocks |")
    return out


SECTIONS = {"link": link_section, "accuracy": accuracy_section, "hardware": hardware_section, "simspeed": simspeed_section,
            "boards": boards_section, "mlp_shapes": mlp_shapes_section, "mnist": mnist_section, "soak": soak_section,
            "cnn_mnist": cnn_mnist_section, "cifar_shapes": cifar_shapes_section, "endtoend": endtoend_section,
            "sweep": sweep_section}


def write_report() -> None:
    out = ["# spikesmith benchmarks", "",
           "Produced by the scripts in `bench/` (each regenerates this file from `bench/results/*.json`). "
           "Benchmarks, not tests: run them by hand; each section says how it was made.", ""]
    for name, title in ORDER:
        out += [f"## {title}", ""]
        path = RESULTS / f"{name}.json"
        if not path.exists():
            out += [f"Not run yet: `python bench/{name}.py`.", ""]
            continue
        record = json.loads(path.read_text())
        out += [_provenance(record)]
        render = SECTIONS.get(name, generic_section)
        out += render(record["figures"]) + [""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))


if __name__ == "__main__":
    write_report()
