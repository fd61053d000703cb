"""The ``spikesmith`` command line.

Human-readable results go to stdout, progress to stderr; ``--json`` makes stdout one JSON
document. Bad input ends with one line ``spikesmith: error: ...`` and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .errors import SpikesmithError
from .fileio import FILE_SYSTEM_ERRORS, check_output_folder, check_writable_file, file_system_refusal

# Each command imports what it needs inside its function: torch, amaranth, cocotb and scikit-learn
# take seconds to import, and `spikesmith info` or a usage error should not wait for them.

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and ``except BaseException`` cleans up.
    ``received`` says it came even when a library raised a plain KeyboardInterrupt in its place (Ray's
    ``ray.wait`` does)."""
    received = False


def _terminate(signum, frame):
    Terminated.received = True
    raise Terminated()


class Progress:
    """Progress lines on stderr, timed from the start of the command."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:     # tqdm.write: above a bar that is being drawn, not through it
            tqdm.write(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr)


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}%"


def _emit_json(payload: dict) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(timesteps=args.timesteps, sweep=tuple(args.sweep), epochs=args.epochs,
                      out_dir=Path(args.output) if args.output else None, progress=Progress(not args.quiet),
                      models=tuple(args.models))
    if args.json:
        _emit_json(result)
        return 0
    T = args.timesteps
    for key in args.models:
        one = result if key == args.models[0] else result[key]
        print(f"spikesmith demo: {one['model']} on scikit-learn digits "
              f"({one['train_images']} train / {one['test_images']} test images)")
        print(f"  ANN (float) test accuracy:              {_pct(one['ann_accuracy'])}")
        main = one["timesteps"][str(T)]
        print(f"  SNN golden (integer) accuracy at T={T}:{' ' * (3 - len(str(T)))}{_pct(main['golden_accuracy'])}  "
              f"({100 * (main['golden_accuracy'] - one['ann_accuracy']):+.2f} points vs ANN)")
        print()
        print("     T   SNN float   SNN golden   vs ANN (points)")
        for t, row in one["timesteps"].items():
            print(f"  {int(t):4d}   {_pct(row['snn_float_accuracy'])}     {_pct(row['golden_accuracy'])}"
                  f"      {100 * (row['golden_accuracy'] - one['ann_accuracy']):+6.2f}")
        for kind, path in one.get("files", {}).items():
            print(f"  wrote {kind}: {path}")
        print()
    print("  SNN float: float weights with spiking activations (conversion error only);")
    print(f"  SNN golden: {result['weight_bits']}-bit integer weights, the bit-exact hardware reference.")
    print(f"\n  done in {result['seconds']:.1f} s")
    return 0


# ---------------------------------------------------------------------------- convert

def _options(args, timesteps: int):
    from .gen.convert import ConversionOptions

    return ConversionOptions(timesteps=timesteps, weight_bits=args.weight_bits,
                             weight_scale=args.weight_scale, threshold=args.threshold, percentile=args.percentile,
                             convolutions=args.convolutions)


def cmd_convert(args) -> int:
    from .datasets import open_dataset, parse_range
    from .contract.bounds import network_bounds
    from .gen.convert import convert_graph, load_model_graph, model_timesteps
    from .gen.netfile import fingerprint, save_network
    from .sim.evaluate import evaluate

    progress = Progress(not args.quiet)
    output = Path(args.output)
    check_writable_file(output)
    calib = None
    if args.calib is not None:
        calib = open_dataset(args.calib, role="calib").select(*parse_range(args.calib_range))
        progress(f"calibration data {calib.describe()}")
    progress(f"loading {args.model}")
    graph = load_model_graph(args.model)
    fixed = model_timesteps(graph)        # a fine-tuned model's spike codes fix T and the thresholds
    if calib is None and not fixed:
        raise SpikesmithError(f"{args.model} has no spike codes to take thresholds from: give calibration data "
                              "(--calib DATA)")
    options = _options(args, args.timesteps or fixed or DEFAULT_TIMESTEPS)
    progress(f"converting at T={options.timesteps}, {options.weight_bits}-bit weights "
             f"({options.weight_scale} scale), thresholds "
             f"{'from the model (--threshold not used)' if fixed else 'by ' + options.threshold}")
    net = convert_graph(graph, None if calib is None else calib.images, options, source=str(args.model))
    check = None if calib is None else evaluate(net, calib.images, calib.labels)
    save_network(net, output)
    progress(f"wrote {output}")
    bounds = network_bounds(net)
    payload = {
        "output": str(output),
        "fingerprint": fingerprint(net),
        "network": net.describe(),
        "timesteps": net.timesteps,
        "input_threshold": net.input.threshold,
        "calibration": None if calib is None else {"data": calib.name, "images": len(calib), **check.as_dict()},
        "layers": [_layer_dict(layer, b) for layer, b in zip(net.layers, bounds)],
    }
    if args.json:
        _emit_json(payload)
        return 0
    print(f"converted {args.model} -> {output}")
    print(f"  network {net.describe()}, T={net.timesteps}, fingerprint {payload['fingerprint'][:23]}...")
    _print_layers(net, bounds)
    if check is not None:
        print(f"  on the calibration set ({len(calib)} images): ANN {_pct(check.ann_accuracy)}, "
              f"SNN float {_pct(check.snn_float_accuracy)}, SNN golden {_pct(check.golden_accuracy)}")
    return 0


def _layer_dict(layer, bounds) -> dict:
    return {
        "name": layer.name, "kind": layer.kind, "in": layer.in_size, "out": layer.out_size, "fires": layer.fires,
        **({"convolution": layer.conv.geometry.as_dict()} if layer.conv is not None else {}),
        **({"max_pool": layer.pool.as_dict()} if layer.pool is not None else {}),
        "activation_threshold": layer.shadow.full_scale if layer.shadow else None,
        "threshold_min": int(layer.threshold.min()) if layer.fires else None,
        "threshold_max": int(layer.threshold.max()) if layer.fires else None,
        **{k: v for k, v in bounds.as_dict().items() if k != "name"},
    }


def _print_layers(net, bounds) -> None:
    print("  layer            in   out  fires  weight  membrane  threshold range  kind")
    for layer, b in zip(net.layers, bounds):
        theta = f"{int(layer.threshold.min())}..{int(layer.threshold.max())}" if layer.fires else "-"
        kind = "dense"
        if layer.conv is not None:
            g = layer.conv.geometry
            kind = (f"conv {'x'.join(map(str, g.in_shape))} -> {'x'.join(map(str, g.out_shape))}, "
                    f"kernel {g.kernel[0]}x{g.kernel[1]} stride {g.stride[0]},{g.stride[1]} "
                    f"padding {g.padding[0]},{g.padding[1]}")
        if layer.pool is not None:
            p = layer.pool
            kind = (f"max pool {'x'.join(map(str, p.in_shape))} -> {'x'.join(map(str, p.out_shape))} "
                    f"(kernel {p.kernel[0]}x{p.kernel[1]} stride {p.stride[0]},{p.stride[1]}), then {kind}")
        print(f"  {layer.name[:14]:<14} {layer.in_size:5d} {layer.out_size:5d}  {'yes' if layer.fires else 'no':>5}"
              f"  {b.weight_width:4d} b  {b.membrane_width:6d} b  {theta:<15}  {kind}")


def cmd_export_nir(args) -> int:
    from .gen.netfile import fingerprint, load_network
    from .gen.nirgraph import export_graph, write_nir

    output = Path(args.output)
    check_writable_file(output)
    net = load_network(args.net)
    graph = export_graph(net)
    write_nir(graph, output)
    payload = {"output": str(output), "fingerprint": fingerprint(net), "nodes": {name: type(node).__name__ for name, node
               in graph.nodes.items()}, "edges": [list(edge) for edge in graph.edges], "metadata": graph.metadata}
    if args.json:
        _emit_json(payload)
        return 0
    chain = " -> ".join(f"{type(graph.nodes[a]).__name__}" for a, _ in graph.edges) + " -> Output"
    print(f"wrote {output}: {net.describe()}, T={net.timesteps}, as a NIR graph of {len(graph.nodes)} nodes")
    print(f"  {chain}")
    print("  IF thresholds are the layers' full-scale activations (the float SNN, read as rates); the iLIF settings "
          "and the integer weights and thresholds are in the metadata (docs/semantics.md, NIR)")
    return 0


# ---------------------------------------------------------------------------- finetune

def _finetune_data(args):
    """The training images (``--data``/``--range``), the calibration images (``--calib-range`` of
    ``--data``; default the training images) and the test images (``--test``; digits: its test split)."""
    from .datasets import open_dataset, parse_range

    data = open_dataset(args.data, role="calib")
    train = data.select(*parse_range(args.range))
    calib = data.select(*parse_range(args.calib_range)) if args.calib_range else train
    test_spec = args.test or ("digits:test" if args.data in ("digits", "digits:train") else None)
    test = open_dataset(test_spec, role="eval").select(*parse_range(args.test_range)) if test_spec else None
    return train, calib, test


def cmd_finetune(args) -> int:
    import numpy as np

    from .contract.network import check_images
    from .gen.convert import load_model_graph
    from .gen.importer import save_program
    from .gen.passes import lower
    from .train import FinetuneOptions, ann_logits, export_twin, finetune, initial_twin, twin_accuracy

    progress = Progress(not args.quiet)
    output = Path(args.output)
    check_writable_file(output)
    if output.resolve() == Path(args.model).resolve():
        raise SpikesmithError(f"-o {output} is the model being fine-tuned; write the fine-tuned model to a new file")
    options = FinetuneOptions(timesteps=args.timesteps, epochs=args.epochs, learning_rate=args.lr,
                              weight_bits=args.weight_bits, seed=args.seed)
    train, calib, test = _finetune_data(args)
    progress(f"loading {args.model}")
    network = lower(load_model_graph(args.model))
    for what, data in (("training images", train), ("calibration images", calib), ("test images", test)):
        if data is not None:
            check_images(data.images, network.input_shape, what)
            _check_labels(data, network.layers[-1].out_features)
    progress(f"full scales at T={options.timesteps} from {calib.describe()}")
    twin = initial_twin(network, calib.images, options)
    before = twin_accuracy(twin, test) if test is not None else None
    progress(f"fine-tuning on {train.describe()}: {options.epochs} epochs")
    start = time.perf_counter()
    with progress_bar(options.epochs * -(-len(train) // options.batch_size), not args.quiet, unit="batches") as advance:
        finetune(network, twin, train, options, progress=lambda done, total, loss: advance(done))
    seconds = time.perf_counter() - start
    save_program(export_twin(twin), output)
    progress(f"wrote {output}")
    ann = None if test is None else float(np.mean(ann_logits(network, test.images).argmax(axis=1) == test.labels))
    payload = {"model": str(args.model), "output": str(output), "timesteps": options.timesteps,
               "epochs": options.epochs, "weight_bits": options.weight_bits, "train": train.name,
               "train_images": len(train), "calibration": calib.name, "seconds": seconds,
               "full_scales": [code.full_scale.item() for code in twin.codes()],
               "test": None if test is None else {"data": test.name, "images": len(test), "ann_accuracy": ann,
                                                  "before_accuracy": before,
                                                  "finetuned_accuracy": twin_accuracy(twin, test)}}
    if args.json:
        _emit_json(payload)
        return 0
    print(f"fine-tuned {args.model} at T={options.timesteps} -> {output}")
    print(f"  {options.epochs} epochs on {train.describe()} in {seconds:.1f} s; {options.weight_bits}-bit weights")
    print(f"  full scales (input, then each firing layer): "
          f"{', '.join(f'{value:.4g}' for value in payload['full_scales'])}")
    if test is not None:
        t = payload["test"]
        print(f"  on {test.describe()}: ANN {_pct(ann).strip()}, at T={options.timesteps} before fine-tuning "
              f"{_pct(before).strip()}, after {_pct(t['finetuned_accuracy']).strip()}")
    bits = "" if options.weight_bits == 8 else f" --weight-bits {options.weight_bits}"
    print(f"  next: spikesmith convert {output}{bits} -o NET  (T and thresholds come from the model)")
    return 0


# ---------------------------------------------------------------------------- eval / info

def cmd_eval(args) -> int:
    from .sim.evaluate import evaluate

    progress = Progress(not args.quiet)
    net, data = _net_and_images(args)
    progress(f"evaluating {net.describe()} (T={net.timesteps}) on {data.describe()}")
    start = time.perf_counter()
    result = evaluate(net, data.images, data.labels)
    seconds = time.perf_counter() - start
    payload = {"net": str(args.net), "data": data.name, "timesteps": net.timesteps,
               **result.as_dict(), "seconds": seconds}
    if args.json:
        _emit_json(payload)
        return 0
    finetuned = net.metadata.get("thresholds_from") == "model"
    print(f"{args.net}: {net.describe()}, T={net.timesteps}, on {data.describe()}")
    print(f"  ANN (float)           {_pct(result.ann_accuracy)}"
          f"{'   (the fine-tuned weights with plain ReLUs)' if finetuned else ''}")
    print(f"  SNN float             {_pct(result.snn_float_accuracy)}   "
          f"{'(the fine-tuned model: its spike codes, float weights)' if finetuned else '(conversion error only)'}")
    print(f"  SNN golden (integer)  {_pct(result.golden_accuracy)}   (bit-exact hardware reference)")
    if result.golden_vs_ann_agreement is not None:
        print(f"  golden agrees with the ANN's class on {_pct(result.golden_vs_ann_agreement).strip()} of images")
        print(f"  golden agrees with the {'fine-tuned model' if finetuned else 'float SNN'} on "
              f"{_pct(result.golden_vs_snn_float_agreement).strip()} of images")
    return 0


def cmd_info(args) -> int:
    from .contract.bounds import network_bounds
    from .gen.netfile import fingerprint, load_network

    net = load_network(args.net)
    bounds = network_bounds(net)
    payload = {"net": str(args.net), "fingerprint": fingerprint(net), "network": net.describe(),
               "timesteps": net.timesteps, "input_shape": list(net.input.shape),
               "input_threshold": net.input.threshold, "metadata": net.metadata,
               "layers": [_layer_dict(layer, b) for layer, b in zip(net.layers, bounds)]}
    if args.json:
        _emit_json(payload)
        return 0
    print(f"{args.net}: {net.describe()}, T={net.timesteps}, input {'x'.join(map(str, net.input.shape))}")
    print(f"  fingerprint {payload['fingerprint']}")
    _print_layers(net, bounds)
    return 0


# ---------------------------------------------------------------------------- generate

def _layer_list(text: str) -> list[int]:
    """``--spram``: ``0,2`` -> [0, 2]; ``none`` -> []."""
    if text.strip().lower() == "none":
        return []
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like 0,2 or 'none', not {text!r}") from None


def _plan(args, net):
    from .gen.sizing import plan_core

    return plan_core(net, lanes=args.lanes, budget=args.lane_budget, input_lanes=args.input_lanes,
                     skip_silent=not args.no_skip, loaded_weights=args.spram or (), streaming=not args.event_driven,
                     chunks=args.chunks, adder_budget=args.adder_budget)


def cmd_generate(args) -> int:
    from .gen.emit import LINT_WAIVERS, elaboration_bytes, write_core
    from .resources import require_memory
    from .gen.netfile import load_network
    from .hw.core import TOP_NAME, emit_verilog

    progress = Progress(not args.quiet)
    output = check_output_folder(args.output)
    net = load_network(args.net)
    plan = _plan(args, net)
    progress(f"sizing {net.describe()} (T={net.timesteps}): lanes {list(plan.lane_counts)}, "
             f"initiation interval {plan.initiation_interval} cycles")
    require_memory(elaboration_bytes(plan), f"elaborating a core with {plan.memory_bits():,} bits of memory")
    seconds = plan.memory_bits() / 85_000           # measured: about 85,000 bits of memory per second
    progress("elaborating the Amaranth core and emitting Verilog" + (f" (about {seconds:.0f} s)" if seconds > 30 else ""))
    verilog = emit_verilog(plan)
    progress("linting with Verilator (--lint-only -Wall), then writing")
    files = write_core(plan, output, verilog)
    progress(f"wrote {files['verilog']} ({len(verilog) // 1024} KiB)")
    report = plan.report()
    payload = {"net": str(args.net), "top": TOP_NAME, "files": {k: str(v) for k, v in files.items()},
               "lint": {"clean": True, "waived": LINT_WAIVERS}, **report}
    if args.json:
        _emit_json(payload)
        return 0
    print(f"generated {TOP_NAME} for {args.net}: {net.describe()}, T={net.timesteps}, "
          f"events for {'spiking neurons only' if plan.skip_silent else 'every neuron (skipping off)'}")
    print(f"  input: {plan.input.size} codes of {plan.timesteps} bits, {plan.input.lanes} per beat "
          f"({plan.input.words} beats per image)")
    for stage in report["stream"]:
        parallel = f"{stage['lanes']} lanes x {stage['chunk']} taps" if "chunk" in stage else f"{stage['lanes']} lanes"
        print(f"  {stage['name'][:14]:<14} {stage['engine']}: {parallel}, {sum(stage['memory_bits'].values())} bits "
              f"of memory, {stage['cycles_per_image_worst']} cycles per image (worst)")
    print("  layer          engine   in   out  lanes  blocks  weight  membrane  memory bits  cycles/step (worst)")
    for layer in report["layers"]:
        print(f"  {layer['name'][:14]:<14} {layer['engine'][:4]:<5} {layer['inputs']:5d} {layer['neurons']:5d}  {layer['lanes']:5d}  "
              f"{layer['blocks']:6d}  {layer['weight_width']:4d} b  {layer['membrane_width']:6d} b  "
              f"{sum(layer['memory_bits'].values()):11d}  {layer['cycles_per_step_worst']:8d}")
    print(f"  initiation interval: {plan.initiation_interval} cycles per image, worst case "
          f"(bottleneck: {plan.bottleneck}); latency <= {plan.latency_bound} cycles")
    print(f"  memory: {plan.memory_bits()} bits; Verilator lint clean "
          f"({len(LINT_WAIVERS)} warning kinds waived, see docs/core.md)")
    for kind, path in files.items():
        print(f"  wrote {kind}: {path}")
    return 0


# ---------------------------------------------------------------------------- simulate

def default_cache_dir() -> Path:
    """Where Verilator builds are kept between runs: $SPIKESMITH_CACHE, else ~/.cache/spikesmith."""
    if os.environ.get("SPIKESMITH_CACHE"):
        return Path(os.environ["SPIKESMITH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikesmith"


def _net_and_images(args):
    """The network file and the selected images of ``--data``/``--range``/``-n``; refuses an empty selection."""
    from .gen.netfile import load_network

    net = load_network(args.net)
    data = _selected_images(args)
    _check_labels(data, net.classes)
    return net, data


def _selected_images(args):
    """The images of ``--data``/``--range``/``-n``; refuses an empty selection."""
    from .datasets import open_dataset, parse_range

    data = open_dataset(args.data, role="eval").select(*parse_range(args.range)).head(args.n)
    if len(data) == 0:
        raise SpikesmithError("no images selected (check --range and -n)")
    return data


def _check_labels(data, classes: int) -> None:
    """Labels must name the network's classes, or every accuracy would be quietly wrong."""
    labels = getattr(data, "labels", None)
    if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise SpikesmithError(f"{data.describe()} has labels {int(labels.min())}..{int(labels.max())} but the "
                              f"network has {classes} classes (0..{classes - 1})")


def _run_simulation(args, plan, expected, progress):
    """Build the core for the chosen engine and stream the images: the run, the build folder, the build's seconds."""
    cache = Path(args.build_dir) if args.build_dir else default_cache_dir()
    waves = Path(args.waves) if args.waves else None
    if waves is not None:
        waves.mkdir(parents=True, exist_ok=True)
    stress = {"seed": args.seed, "valid_probability": args.valid, "ready_probability": args.ready}
    if args.engine == "cocotb":
        from .sim.verilator import build_core, run_core

        start = time.perf_counter()
        build = build_core(plan, cache, waves=True if waves else None, progress=progress)
        built = time.perf_counter() - start
        progress("streaming the images through the Verilator model under cocotb")
        return run_core(build, plan, expected.input_codes, expected, test_dir=waves, **stress), build.directory, built
    from .sim.harness import build_harness, run_harness
    from .sim.verilator import fst_available

    start = time.perf_counter()
    build = build_harness(plan, cache, waves=waves is not None, progress=progress)
    built = time.perf_counter() - start
    progress("streaming the images through the compiled Verilator harness")
    dump = waves / ("dump.fst" if fst_available() else "dump.vcd") if waves else None
    with progress_bar(len(expected.predictions), not args.quiet) as advance:
        run = run_harness(build, plan, expected.input_codes, expected, waves=dump, wave_images=args.wave_images,
                          progress=advance, **stress)
    return run, build.directory, built


def cmd_simulate(args) -> int:
    import numpy as np

    from .sim import golden

    progress = Progress(not args.quiet)
    net, data = _net_and_images(args)
    plan = _plan(args, net)
    expected = golden.run_images(net, data.images)
    progress(f"core for {net.describe()} (T={net.timesteps}): lanes {list(plan.lane_counts)}")
    start = time.perf_counter()
    run, build_dir, build_seconds = _run_simulation(args, plan, expected, progress)
    seconds = time.perf_counter() - start
    running = max(seconds - build_seconds, 1e-9)
    images = len(data)
    agree = len(run.images) - run.mismatches         # images with a result equal to the golden one
    accuracy = float(np.mean(run.labels == data.labels[run.images])) if data.labels is not None and len(run.images) else None
    golden_accuracy = float(np.mean(expected.predictions == data.labels)) if data.labels is not None else None
    gaps = np.diff(run.result_cycles)
    payload = {
        "net": str(args.net), "data": data.name, "engine": args.engine, "images": images,
        "results": int(len(run.images)), "agreement": agree / images, "mismatches": images - agree,
        "first_mismatch": run.first_mismatch, "accuracy": accuracy, "golden_accuracy": golden_accuracy,
        "cycles": run.cycles, "cycles_per_image": run.cycles / images,
        "steady_state_cycles_per_image": float(gaps.mean()) if len(gaps) else None,
        "initiation_interval_worst": plan.initiation_interval,
        "first_result_cycle": int(run.result_cycles[0]) if len(run.result_cycles) else None,
        "wall_seconds": seconds, "build_seconds": build_seconds, "run_seconds": running,
        "simulated_cycles_per_second": run.cycles / running, "simulated_images_per_second": images / running,
        "build": str(build_dir), "waves": str(run.waves) if run.waves else None,
    }
    if args.json:
        _emit_json(payload)
    else:
        _print_simulation(args, net, data, plan, payload)
    if agree != images:
        missing = images - len(run.images)
        print(f"spikesmith: error: the hardware disagrees with the golden model on {images - agree} of {images} "
              f"images ({missing} without a result); first: {run.first_mismatch or 'a missing result'}",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


def _print_simulation(args, net, data, plan, p: dict) -> None:
    engine = "compiled Verilator harness" if p["engine"] == "harness" else "Verilator under cocotb"
    print(f"{args.net}: {net.describe()}, T={net.timesteps}, {engine}, {data.describe()}")
    print(f"  agreement with the golden model: {p['images'] - p['mismatches']}/{p['images']} images "
          f"({_pct(p['agreement']).strip()}), every logit compared")
    if p["accuracy"] is not None:
        print(f"  accuracy: hardware {_pct(p['accuracy']).strip()}, golden model {_pct(p['golden_accuracy']).strip()}")
    steady = p["steady_state_cycles_per_image"]
    print(f"  simulated cycles: {p['cycles']} ({p['cycles_per_image']:.1f} per image"
          + (f", {steady:.1f} between results in steady state" if steady is not None else "")
          + f"; worst-case interval {plan.initiation_interval})")
    print(f"  {p['simulated_images_per_second']:,.0f} images/s, {p['simulated_cycles_per_second']:,.0f} cycles/s "
          f"simulated on this machine ({p['run_seconds']:.1f} s; build {p['build_seconds']:.1f} s, "
          f"{p['wall_seconds']:.1f} s in all)")
    if p["waves"]:
        print(f"  waveform: {p['waves']}")


# ---------------------------------------------------------------------------- infer

@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True, unit: str = "images"):
    """A tqdm bar on stderr (none with ``-q``), as the ``progress(done, total=None)`` callback
    the driver calls; closed on leaving the ``with``."""
    with tqdm(total=total, unit=f" {unit}", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
              mininterval=0.2 if sys.stderr.isatty() else 5.0) as bar:
        def advance(done: int, total: int | None = None) -> None:
            if total is not None and total != bar.total:
                bar.total = total
            bar.update(done - bar.n)
        yield advance


def cmd_infer(args) -> int:
    import numpy as np

    from .contract.network import check_images
    from .host.driver import Accelerator
    from .sim import golden

    if args.clock is not None and not args.sim:
        raise SpikesmithError("--clock sets the simulated board's clock: give it with --sim (a real board's "
                              "clock is in its bitstream: build --clock)")
    if args.baud is None:
        from .sim.board import SIM_BAUD

        args.baud = SIM_BAUD if args.sim else 115200
    progress = Progress(not args.quiet)
    net, data = _net_and_images(args)
    images = check_images(data.images, net.input.shape, "images")
    codes = net.input.encode(images, net.timesteps)         # the one encoder (docs/semantics.md)
    with contextlib.ExitStack() as stack:
        board = _simulated_board(args, net, stack, progress) if args.sim else None
        options = {"timeout": args.timeout or (board.reply_timeout(board.params.window) if board else 2.0),
                   "window": args.window, "retries": args.retries}
        progress(f"opening {'the simulated board' if board else args.port}")
        driver = stack.enter_context(Accelerator(board.open_port(), **options) if board
                                     else Accelerator.open(args.port, baudrate=args.baud, **options))
        identity = driver.expect(net)
        marks = [board.clock()] if board else []             # simulated time: before the load, before and after images
        sent = _load_weights(args, net, driver, identity, progress)
        marks += [board.clock()] if board else []
        progress(f"board runs {identity.fingerprint_text[:23]}... (T={identity.timesteps}, window {driver.window}); "
                 f"streaming {data.describe()}")
        with progress_bar(len(codes), not args.quiet) as bar:
            results = list(driver.infer(codes, progress=bar))
        marks += [board.clock()] if board else []
        stats = driver.stats
    labels = np.array([r.label for r in results])
    logits = np.array([r.logits for r in results])
    payload = {"net": str(args.net), "data": data.name,
               "transport": "simulated board (Verilator)" if args.sim else args.port, "images": len(results), "accuracy": float(np.mean(labels == data.labels)), **stats.as_dict(),
               "weight_rows_loaded": sent}
    if board is not None:
        payload["board"] = _simulated_rates(board, identity, marks, len(results), sent)
    mismatches = None
    if args.compare_golden:
        expected = golden.run(net, codes)
        same = (labels == expected.predictions) & np.all(logits == expected.logits, axis=1)
        mismatches = int((~same).sum())
        payload["golden"] = {"agreement": float(same.mean()), "mismatches": mismatches,
                             "first_mismatch": int(np.argmin(same)) if mismatches else None,
                             "accuracy": float(np.mean(expected.predictions == data.labels))}
    if args.json:
        _emit_json(payload)
    else:
        print(f"{args.net}: {net.describe()}, T={net.timesteps}, {len(results)} images from {data.describe()} "
              f"via {payload['transport']}")
        _print_infer_report(payload)
    if mismatches:
        print(f"spikesmith: error: the board disagrees with the golden model on {mismatches} images "
              f"(first: image {payload['golden']['first_mismatch']})", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _simulated_board(args, net, stack: contextlib.ExitStack, progress):
    """The board top under Verilator at ``--baud``, clocked as the iCEBreaker would be for it: its
    12 MHz oscillator, or the PLL clock ``build`` picks; ``--clock`` chooses another (refused in one
    line when it cannot make the baud rate within 2 %)."""
    from .gen.build import BOARDS, clock_for_baud
    from .sim.board import SimulatedBoard

    if args.clock is not None:
        clock_hz = args.clock * 1e6
    else:
        board = BOARDS["icebreaker"]
        clock_hz = clock_for_baud(board, args.baud) or board.clock_hz
    cache = Path(args.build_dir) if args.build_dir else default_cache_dir()
    simulated = SimulatedBoard(_plan(args, net), cache, window=args.window, clock_hz=clock_hz, baud=args.baud,
                               progress=progress)
    progress(f"simulating the board top at {clock_hz / 1e6:g} MHz, {args.baud:,} baud "
             f"({simulated.params.divisor} cycles per bit)")
    return stack.enter_context(simulated)


def _load_weights(args, net, driver, identity, progress) -> int:
    """The run-time weights, if the board keeps any in RAM (SPRAM): the rows sent."""
    from .gen.board import plan_for_identity

    if not any(identity.loaded):
        return 0
    progress(f"loading the weights the board keeps in SPRAM (layers "
             f"{[i for i, flag in enumerate(identity.loaded) if flag]}, {identity.load_rows} rows a LOAD)")
    with progress_bar(0, not args.quiet, unit="weight rows") as bar:
        sent = driver.load_weights(plan_for_identity(net, identity), progress=bar)
    progress(f"loaded {sent} weight rows")
    return sent


def _simulated_rates(board, identity, marks: list[dict], images: int, rows: int) -> dict:
    """Rates in simulated time (docs/protocol.md, "Rates"): the weight load and the images from the
    first request's first byte to the last reply's last byte, beside the core's worst case and the line's bound."""
    from .contract.protocol import FRAMING, code_bytes

    clock, bit_rate = board.clock_hz, board.clock_hz / board.params.divisor
    load_cycles = marks[1]["last_tx_cycle"] - marks[0]["cycles"] if rows else 0
    cycles = max(1, marks[2]["last_tx_cycle"] - marks[1]["cycles"])
    request = FRAMING + identity.inputs * code_bytes(identity.timesteps)      # frame bytes each way
    reply = FRAMING + identity.result_bytes
    return {"clock_hz": clock, "baud": board.baud, "uart_bit_rate": bit_rate, "divisor": board.params.divisor,
            "window": identity.window, "simulated_cycles": cycles, "cycles_per_image": cycles / max(1, images),
            "images_per_second_end_to_end": images * clock / cycles,
            "core_images_per_second_worst": clock / identity.initiation_interval,
            "line_images_per_second": bit_rate / (10 * max(request, reply)), "image_frame_bits": 10 * request,
            "weight_load": {"rows": rows, "load_bytes": identity.load_bytes, "load_rows": identity.load_rows,
                            "simulated_cycles": load_cycles,
                            "rows_per_second": rows * clock / load_cycles if load_cycles else None}}


def _print_infer_report(payload: dict) -> None:
    """The human-readable lines of ``infer`` below its heading."""
    print(f"  accuracy: {_pct(payload['accuracy']).strip()}")
    print(f"  {payload['images_per_second']:.1f} images/s wall clock; latency mean "
          f"{payload['latency_ms']['mean']:.1f} ms, p99 {payload['latency_ms']['p99']:.1f} ms; "
          f"{payload['resent']} resent")
    if "board" in payload:
        b = payload["board"]
        print(f"  simulated board at {b['clock_hz'] / 1e6:g} MHz, {b['baud']:,} baud: "
              f"{b['images_per_second_end_to_end']:,.1f} images/s end to end in simulated time "
              f"({b['cycles_per_image']:,.0f} cycles per image); the core alone >= "
              f"{b['core_images_per_second_worst']:,.0f} images/s (worst case), the line alone <= "
              f"{b['line_images_per_second']:,.1f} images/s ({b['image_frame_bits']:,} bits per image frame)")
        load = b["weight_load"]
        if load["rows"]:
            print(f"  weight load: {load['rows']:,} rows in {load['simulated_cycles'] / b['clock_hz']:.3f} s "
                  f"simulated = {load['rows_per_second']:,.0f} rows/s")
    if "golden" in payload:
        g, images = payload["golden"], payload["images"]
        print(f"  agreement with the golden model: {images - g['mismatches']}/{images} images "
              f"({_pct(g['agreement']).strip()}), every logit compared")


# ---------------------------------------------------------------------------- build

def cmd_build(args) -> int:
    from .gen.build import (BOARDS, build_bitstream, check_fit, clock_for_baud, fastest, plan_for_board,
                            sizing_report, speed_candidates)
    from .gen.netfile import load_network

    progress = Progress(not args.quiet)
    output = check_output_folder(args.output)
    board = BOARDS[args.board]
    net = load_network(args.net)
    sizing = None
    if args.lanes is None and args.lane_budget is None and args.chunks is None:
        candidates = speed_candidates(net, board, args.input_lanes, not args.no_skip, args.spram,
                                      streaming=False if args.event_driven else None)
        plan, sizing = fastest(candidates)["plan"], sizing_report(candidates, board)
    else:
        plan = plan_for_board(net, board, args.lanes, args.lane_budget, args.input_lanes, not args.no_skip, args.spram,
                              streaming=not args.event_driven, chunks=args.chunks)
    check_fit(plan, board)
    clock_hz = None
    if args.clock is not None:
        clock_hz = args.clock * 1e6
        pll = board.pll(clock_hz)               # refused here, before synthesis, if no PLL setting fits
        progress(f"PLL: {board.clock_hz / 1e6:g} MHz -> {pll.output_hz / 1e6:.3f} MHz")
    else:
        clock_hz = clock_for_baud(board, args.baud)   # None: the oscillator makes the baud rate
        if clock_hz is not None:
            progress(f"PLL: {board.clock_hz / 1e6:g} MHz -> {clock_hz / 1e6:.3f} MHz, the slowest clock that "
                     f"makes {args.baud:,} baud within 2% (--clock chooses another)")
    if sizing is not None:
        chunks = f" x taps {sizing['chosen_chunks']}" if "chosen_chunks" in sizing else ""
        progress(f"sized for speed: {sizing['chosen_engine']} engines, lanes {sizing['chosen_lanes']}{chunks}, "
                 f"the shortest worst-case interval of "
                 f"{len(candidates)} plans within {sizing['logic_limit']:,} of logic and {sizing['ram_limit']} block "
                 f"RAMs (estimates; report.json has them all)")
    progress(f"{net.describe()} (T={net.timesteps}) on the {board.name}: lanes {list(plan.lane_counts)}, "
             f"input lanes {plan.input.lanes}, worst-case interval {plan.initiation_interval} cycles")
    report = build_bitstream(plan, board, output, baud=args.baud, clock_hz=clock_hz, program=args.program,
                             sizing=sizing, seeds=args.seeds, progress=progress)
    if args.json:
        _emit_json(report)
        return 0
    print(f"built {report['bitstream']} for the {board.name} ({board.device}): {net.describe()}, T={net.timesteps}")
    for name, use in report["utilisation"].items():
        if use["used"]:
            print(f"  {name:<14} {use['used']:7d} / {use['total']:<7d} {100 * use['used'] / use['total']:5.1f}%")
    tried = report["placement"]["fmax_mhz_by_seed"]
    print(f"  Fmax {report['fmax_mhz']:.2f} MHz ({'meets' if report['timing_met'] else 'FAILS'} "
          f"{report['clock_mhz']:g} MHz), placement from seed {report['placement']['seed']}"
          + (f" of {len(tried)} tried ({', '.join(f'{mhz:.1f}' for mhz in tried.values())} MHz)" if len(tried) > 1 else ""))
    for path in report["critical_paths"][:1]:
        print(f"  critical path {path['delay_ns']:.1f} ns ({path['logic_ns']:.1f} logic, {path['routing_ns']:.1f} "
              f"routing) from {path['from']} through {', '.join(path['through'][1:-1]) or '-'} to {path['to']}")
    print(f"  core: {report['initiation_interval']} cycles per image worst case = "
          f"{report['core_images_per_second_at_clock']:,.0f} images/s at {report['clock_hz'] / 1e6:g} MHz "
          f"({report['core_images_per_second_at_fmax']:,.0f} at Fmax); the UART at {args.baud} baud carries "
          f"{report['uart_images_per_second']:,.0f} images/s")
    return 0 if report["timing_met"] else EXIT_ERROR


# ---------------------------------------------------------------------------- sweep

def cmd_sweep(args) -> int:
    from .datasets import open_dataset, parse_range
    from .sweep import SweepAxes, SweepRun, run_sweep

    progress = Progress(not args.quiet)
    source = Path(args.source)
    if not source.is_file():
        raise SpikesmithError(f"no such model or network file: {source}")
    data = _selected_images(args)
    calib = None
    if args.calib is not None:
        calib = open_dataset(args.calib, role="calib").select(*parse_range(args.calib_range))
    axes = SweepAxes(timesteps=tuple(args.timesteps or ()), weight_bits=tuple(args.weight_bits or ()),
                     lane_budgets=tuple(dict.fromkeys(args.lane_budget)), clocks_mhz=tuple(dict.fromkeys(args.clock)),
                     boards=tuple(dict.fromkeys(args.board)))
    run = SweepRun(estimate_only=args.estimate_only, address=args.address, jobs=args.jobs, seeds=args.seeds,
                   baud=args.baud)
    summary = run_sweep(source, axes, run, Path(args.output), data, calib=calib, options=_options_for_sweep(args),
                        progress=progress, quiet=args.quiet)
    if args.json:
        _emit_json(summary)
        return 0
    _print_sweep(summary, Path(args.output))
    return 0


def _options_for_sweep(args):
    from .gen.convert import ConversionOptions

    return ConversionOptions(weight_scale=args.weight_scale, threshold=args.threshold, percentile=args.percentile,
                             convolutions=args.convolutions)


def _print_sweep(summary: dict, out: Path) -> None:
    print("   T  bits  board        budget  lanes          clock   golden   logic (est.)     RAM (est.)  "
          "Fmax     images/s  status")
    for row in summary["points"]:
        used = f"{row['logic_used']:,}" if row["logic_used"] is not None else "-"
        logic = f"{used} ({row['logic_estimate']:,})" if row["logic_estimate"] is not None else "-"
        ram = f"{row['ram_used'] if row['ram_used'] is not None else '-'} ({row['ram_estimate']})" \
            if row["ram_estimate"] is not None else "-"
        fmax = f"{row['fmax_mhz']:.1f}" if row["fmax_mhz"] is not None else "-"
        rate = f"{row['images_per_second']:,.0f}" if row["images_per_second"] else "-"
        status = row["status"] + (" *" if row["pareto"] else "") + (f": {row['error']}" if row["error"] else "")
        print(f"  {row['T']:2d}  {row['weight_bits']:4d}  {row['board']:<11}  {str(row['lane_budget']):>6}  "
              f"{row['lanes'] or '-':<13}  {row['clock_mhz'] or '-':>6}  {_pct(row['golden_accuracy'])}  "
              f"{logic:<15}  {ram:<10}  {fmax:>6}  {rate:>10}  {status}")
    print("  * the Pareto front: no other point has higher accuracy, less logic and more images/s")
    for board, error in summary["estimator_error"].items():
        print(f"  estimates on the {board} against nextpnr over {error['points']} builds: logic off by "
              f"{error['logic_mean_abs_pct']:.1f} % on average (at most {error['logic_max_abs_pct']:.1f} %), block RAM "
              f"by {error['ram_mean_abs_blocks']:.1f} blocks (at most {error['ram_max_abs_blocks']})")
    print(f"  {summary['builds_run']} builds run, {summary['builds_cached']} from the cache, in {summary['seconds']:.0f} s; "
          f"wrote {out / 'sweep.csv'}, sweep.json, sweep.png")


# ---------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors and exit status 1 of every other spikesmith error."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"spikesmith: error: {message} (spikesmith {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"spikesmith: error: {message} (spikesmith --help)\n")


def _number(kind, low, high):
    """An argparse type: a ``kind`` (int or float) in ``[low, high]``, else a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a{'n integer' if kind is int else ' number'}, "
                                             f"not {text!r}") from None
        if not (low <= value <= high):      # (also refuses nan)
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, not {text}")
        return value
    return parse


def _chunk(text: str) -> str:
    """An argparse type: ``K`` or ``KxS`` (contract/streaming.parse_chunk), else a one-line error."""
    from .contract.streaming import parse_chunk
    try:
        parse_chunk(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


TIMESTEPS = _number(int, 1, 16)
DEFAULT_TIMESTEPS = 8
WEIGHT_BITS = _number(int, 2, 16)
COUNT = _number(int, 1, 10**9)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spikesmith",
        description="FPGA accelerator generator for spiking neural networks (SpikeConverter iLIF, k=2).")
    parser.add_argument("--version", action="version", version=f"spikesmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_model_commands(sub)
    _add_hardware_commands(sub)
    _add_sweep_command(sub)
    return parser


def _common_options(p, json_help="print one JSON document on stdout"):
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

def _conversion_options(p):
    p.add_argument("--timesteps", "-T", type=TIMESTEPS,
                   help=f"time steps T, 1-16 (default {DEFAULT_TIMESTEPS}, or the T a fine-tuned model has)")
    p.add_argument("--weight-bits", type=WEIGHT_BITS, default=8,
                   help="signed weight width in bits, 2-16 (default 8)")
    _normalisation_options(p)


def _normalisation_options(p):
    from .gen.calibrate import THRESHOLD_MODES
    from .gen.convert import CONVOLUTION_MODES
    from .gen.quantise import WEIGHT_SCALES

    p.add_argument("--weight-scale", choices=WEIGHT_SCALES, default="channel",
                   help="one weight scale per output neuron (channel, default) or per layer")
    p.add_argument("--threshold", choices=THRESHOLD_MODES, default="search",
                   help="threshold normalisation: search (least conversion error, default), max, percentile")
    p.add_argument("--percentile", type=_number(float, 0.0, 100.0), default=99.99,
                   help="percentile for --threshold percentile, 0-100 (default 99.99)")
    p.add_argument("--convolutions", choices=CONVOLUTION_MODES, default="kernel",
                   help="kernel (default): convolution layers keep their kernel (the convolution engine); "
                        "dense: lower them to dense matrices")

def _image_options(p):
    p.add_argument("--data", default="digits", metavar="DATA", help="digits (default) or a path")
    p.add_argument("--range", metavar="A:B", help="use images [A:B] of the data")
    p.add_argument("-n", type=COUNT, metavar="N", help="use the first N images (after --range)")

def _hardware_options(p):
    from .gen.sizing import DEFAULT_LANE_BUDGET
    from .gen.streaming import DEFAULT_ADDER_BUDGET

    p.add_argument("--lanes", type=_number(int, 1, 1 << 16), nargs="+", metavar="L",
                   help="neuron lanes per layer, one number per layer (default: chosen under --lane-budget)")
    p.add_argument("--lane-budget", type=_number(int, 1, 1 << 16), default=DEFAULT_LANE_BUDGET,
                   metavar="N",
                   help=f"total lanes to balance the layers with (default {DEFAULT_LANE_BUDGET})")
    p.add_argument("--input-lanes", type=_number(int, 1, 1 << 16), metavar="P",
                   help="input codes per beat of the image stream (default: min(8, inputs))")
    p.add_argument("--chunks", type=_chunk, nargs="+", metavar="K[xS]",
                   help="taps a cycle of each streaming convolution, one per convolution: K taps, or KxS at S "
                        "(1, 2, 4, ..) time steps a cycle (default: chosen under --adder-budget; --lanes gives "
                        "their output channels a cycle)")
    p.add_argument("--adder-budget", type=_number(int, 1, 1 << 20), default=DEFAULT_ADDER_BUDGET, metavar="N",
                   help=f"adder inputs (lanes x taps x steps a cycle) of all streaming convolutions (default "
                        f"{DEFAULT_ADDER_BUDGET})")
    p.add_argument("--event-driven", action="store_true",
                   help="run the convolutions on the event-driven engines (membrane maps) instead of streaming them")
    p.add_argument("--no-skip", action="store_true",
                   help="send every neuron every step (fixed timing) instead of only those that spiked")
    p.add_argument("--spram", type=_layer_list, metavar="LAYERS",
                   help="layers (comma-separated indices, or 'none') whose weights live in RAM the host "
                        "loads over the UART at start: the iCE40UP5K's SPRAM (default: 'none'; "
                        "build on the iCEBreaker chooses them when block RAM is short)")


def _add_model_commands(sub) -> None:
    """demo, convert, eval, info: the network side."""
    p = sub.add_parser("demo", help="train, convert and evaluate the embedded digits MLP and CNN")
    p.add_argument("--timesteps", "-T", type=TIMESTEPS, default=8, help="main T, 1-16 (default 8)")
    p.add_argument("--sweep", type=TIMESTEPS, nargs="+", default=[2, 4, 6, 8, 12, 16], metavar="T",
                   help="T values of the accuracy table (default 2 4 6 8 12 16)")
    p.add_argument("--epochs", type=_number(int, 1, 100_000), default=60,
                   help="training epochs (default 60)")
    p.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"],
                   help="which embedded models to train (default: mlp cnn)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="also write the models (.pt2) and the networks (.net.npz) here")
    _common_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert a torch.export program (.pt2) or a NIR graph (.nir) into a spiking "
                                       "network file")
    p.add_argument("model", metavar="MODEL.pt2|MODEL.nir", help="file written by torch.export.save, or a NIR graph")
    p.add_argument("--calib", metavar="DATA", help="calibration data: digits or a path (optional for a fine-tuned "
                                                   "model, whose spike codes give the thresholds)")
    p.add_argument("--calib-range", metavar="A:B", help="use images [A:B] of the calibration data")
    p.add_argument("-o", "--output", required=True, metavar="NET", help="network file to write (.net.npz)")
    _conversion_options(p)
    _common_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("finetune", help="fine-tune a model with the SNN's T-bit activations in the loop "
                                        "(quantisation-aware), for a lossless conversion at small T")
    p.add_argument("model", metavar="MODEL.pt2|MODEL.nir", help="the trained ANN: torch.export program or NIR graph")
    p.add_argument("--data", required=True, metavar="DATA", help="labelled training data: digits or a path")
    p.add_argument("--range", metavar="A:B", help="train on images [A:B] of the data")
    p.add_argument("--calib-range", metavar="A:B",
                   help="set the initial full scales from images [A:B] of the data (default: the training images)")
    p.add_argument("--test", metavar="DATA", help="report test accuracy on this data (default for digits: its test "
                                                  "split)")
    p.add_argument("--test-range", metavar="A:B", help="use images [A:B] of the test data")
    p.add_argument("--timesteps", "-T", type=TIMESTEPS, required=True, help="time steps T, 1-16, of the SNN to come")
    p.add_argument("--epochs", type=_number(int, 1, 100_000), default=20, help="epochs (default 20)")
    p.add_argument("--lr", type=_number(float, 1e-7, 1.0), default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--weight-bits", type=WEIGHT_BITS, default=8,
                   help="weights are fake-quantised to this width, 2-16 (default 8); convert with the same")
    p.add_argument("--seed", type=_number(int, 0, (1 << 63) - 1), default=0, help="seed of the batch order")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.pt2", help="fine-tuned model to write")
    _common_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export-nir", help="write a network file as a NIR graph (IF neurons, iLIF settings in metadata)")
    p.add_argument("net", metavar="NET")
    p.add_argument("-o", "--output", required=True, metavar="FILE.nir", help="NIR file to write (HDF5)")
    _common_options(p)
    p.set_defaults(func=cmd_export_nir)

    p = sub.add_parser("eval", help="accuracy of a network file: float ANN, float SNN, integer golden model")
    p.add_argument("net", metavar="NET")
    _image_options(p)
    _common_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="layers, widths and fingerprint of a network file")
    p.add_argument("net", metavar="NET")
    _common_options(p)
    p.set_defaults(func=cmd_info)


def _add_hardware_commands(sub) -> None:
    """generate, simulate, infer, build: the hardware side."""
    from .host.driver import DEFAULT_RETRIES

    p = sub.add_parser("generate", help="generate the spiking core (Verilog + report) for a network file")
    p.add_argument("net", metavar="NET")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (created if missing)")
    _hardware_options(p)
    _common_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("simulate", help="run the core's Verilog under Verilator on images, against the golden model")
    p.add_argument("net", metavar="NET")
    _image_options(p)
    p.add_argument("--build-dir", metavar="DIR",
                   help="where Verilator builds are kept (default $SPIKESMITH_CACHE or ~/.cache/spikesmith)")
    p.add_argument("--engine", choices=("harness", "cocotb"), default="harness",
                   help="harness (default): the core compiled with a C++ driver, millions of cycles/s; "
                        "cocotb: Python drives every cycle (slower; the old path)")
    p.add_argument("--waves", metavar="DIR", help="build with tracing and write DIR/dump.fst (or .vcd)")
    p.add_argument("--wave-images", type=_number(int, 0, 1 << 31), default=4, metavar="N",
                   help="with --waves and the harness: trace until N results are out (default 4; 0: all)")
    p.add_argument("--valid", type=_number(float, 0.01, 1.0), default=1.0, metavar="P",
                   help="offer each image beat with probability P per cycle (random gaps; default 1)")
    p.add_argument("--ready", type=_number(float, 0.01, 1.0), default=1.0, metavar="P",
                   help="take a result with probability P per cycle (random backpressure; default 1)")
    p.add_argument("--seed", type=_number(int, 0, (1 << 63) - 1), default=0, help="seed of --valid/--ready")
    _hardware_options(p)
    _common_options(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("infer", help="stream images to a board (or a simulated one) and report its results")
    p.add_argument("net", metavar="NET")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="a simulated board: the board top under Verilator")
    where.add_argument("--port", metavar="URL", help="serial port of a board: /dev/ttyUSB1, socket://host:port, ...")
    p.add_argument("--baud", type=_number(int, 300, 12_000_000),
                   help="serial baud rate (default 115200); with --sim the simulated board's UART runs at it "
                        "(default 1,500,000 there, which keeps the simulation quick)")
    p.add_argument("--clock", type=_number(float, 1.0, 500.0), metavar="MHZ",
                   help="with --sim: the simulated board's clock (default: the iCEBreaker's for the baud rate, "
                        "12 MHz or the PLL clock build chooses)")
    _image_options(p)
    p.add_argument("--compare-golden", action="store_true",
                   help="compare every label and logit with the golden model (exit 1 on any difference)")
    p.add_argument("--window", type=_number(int, 1, 255), metavar="W",
                   help="images in flight, 1-255 (default: what the board allows)")
    p.add_argument("--timeout", type=_number(float, 0.001, 3600.0), metavar="S",
                   help="seconds to wait for a reply before resending (default 2; with --sim 30 and more, "
                        "as the simulated line needs)")
    p.add_argument("--retries", type=_number(int, 0, 1000), default=DEFAULT_RETRIES, metavar="N",
                   help=f"resends of one request before giving up, 0-1000 (default {DEFAULT_RETRIES}: enough for a "
                        "link that damages 1 %% of the bytes; a board that never answers is given up after "
                        "N + 1 timeouts)")
    p.add_argument("--build-dir", metavar="DIR", help="where Verilator builds are kept (with --sim)")
    _hardware_options(p)
    _common_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("build", help="build a bitstream of the board top for a real board (yosys + nextpnr)")
    p.add_argument("net", metavar="NET")
    p.add_argument("--board", required=True, choices=["icebreaker", "ulx3s-85f"], help="target board")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (replaced if it exists)")
    p.add_argument("--baud", type=_number(int, 300, 12_000_000), default=115200,
                   help="UART baud rate (default 115200; the boards' USB UARTs go to 3,000,000); without --clock, "
                        "a PLL clock is chosen when the oscillator cannot make it within 2%%")
    p.add_argument("--clock", type=_number(float, 1.0, 500.0), metavar="MHZ",
                   help="clock the core from a PLL at MHZ (default: the board's oscillator, 12 MHz on the "
                        "iCEBreaker, 25 MHz on the ULX3S)")
    p.add_argument("--seeds", type=_number(int, 1, 50), default=5, metavar="N",
                   help="placements to try (nextpnr seeds 1..N), stopping at the first that meets the clock "
                        "(default 5: placements of a nearly full device differ by several MHz)")
    p.add_argument("--program", action="store_true", help="program the board after the build")
    _hardware_options(p)
    p.set_defaults(lane_budget=None)
    _common_options(p)
    p.set_defaults(func=cmd_build)


def _lane_budget(text: str):
    """``--lane-budget`` of a sweep: a lane count, or ``speed`` (None: sized for speed)."""
    return None if text.strip().lower() == "speed" else _number(int, 1, 1 << 16)(text)


def _sweep_clock(text: str):
    """``--clock`` of a sweep: MHz from a PLL, or ``osc`` (None: the board's oscillator)."""
    return None if text.strip().lower() == "osc" else _number(float, 1.0, 500.0)(text)


def _ray_address(text: str):
    """``--address`` of a sweep, its form checked now (:func:`spikesmith.sweep.parse_address`)."""
    from .sweep import parse_address

    try:
        return parse_address(text)
    except SpikesmithError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sweep_command(sub) -> None:
    p = sub.add_parser("sweep", help="sweep T, weight bits, lanes, clock and board on Ray: accuracy, logic, "
                                     "Fmax and images/s of every point, the Pareto front")
    p.add_argument("source", metavar="MODEL.pt2|MODEL.nir|NET", help="a torch.export program or NIR graph "
                   "(converted at each T and weight width; a fine-tuned model at its T) or a network file (as it is)")
    p.add_argument("--calib", metavar="DATA", help="calibration data for a model: digits or a path")
    p.add_argument("--calib-range", metavar="A:B", help="use images [A:B] of the calibration data")
    _image_options(p)
    p.add_argument("--timesteps", "-T", type=TIMESTEPS, nargs="+", metavar="T",
                   help="T values, 1-16 (default 8; a network file keeps its own)")
    p.add_argument("--weight-bits", type=WEIGHT_BITS, nargs="+", metavar="B",
                   help="weight widths, 2-16 (default 8; a network file keeps its own)")
    _normalisation_options(p)
    p.add_argument("--lane-budget", type=_lane_budget, nargs="+", default=[None], metavar="N",
                   help="lane budgets, or 'speed': build's choice for the board (default speed)")
    p.add_argument("--clock", type=_sweep_clock, nargs="+", default=[None], metavar="MHZ",
                   help="core clocks from the PLL in MHz, or 'osc': the board's oscillator (default osc)")
    p.add_argument("--board", required=True, nargs="+", choices=["icebreaker", "ulx3s-85f"], help="target boards")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for sweep.csv, sweep.json, sweep.png and builds/ (kept: a rerun builds only what is new)")
    p.add_argument("--estimate-only", action="store_true", help="size and estimate every point; run no FPGA tools")
    p.add_argument("--address", type=_ray_address, metavar="ADDRESS",
                   help="a Ray cluster: ray://host:10001 (Ray Client), host:6379 on one of its nodes, or auto "
                        "(the cluster `ray start` runs here); default local: a Ray instance of the sweep's own, "
                        "on loopback")
    p.add_argument("--jobs", type=_number(int, 1, 4096), metavar="N",
                   help="tasks at once (default: this machine's CPUs, or the cluster's)")
    p.add_argument("--seeds", type=_number(int, 1, 50), default=1, metavar="N",
                   help="placements per build, stopping at the first that meets the clock (default 1)")
    p.add_argument("--baud", type=_number(int, 300, 12_000_000), default=115200, help="UART baud rate (default 115200)")
    _common_options(p)
    p.set_defaults(func=cmd_sweep)


def main(argv: list[str] | None = None) -> int:
    # torch's own deprecation notices are noise for a command-line user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    parser = build_parser()
    args = parser.parse_args(argv)
    Terminated.received = False
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except SpikesmithError as exc:
        print(f"spikesmith: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if Terminated.received:
            print("spikesmith: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        print("spikesmith: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("SPIKESMITH_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_ERRORS:       # the machine's state, not a bug
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"spikesmith: error: {file_system_refusal(exc)}{where}", file=sys.stderr)
            return EXIT_ERROR
        print(f"spikesmith: internal error: {type(exc).__name__}: {exc} "
              f"(a bug; rerun with SPIKESMITH_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
