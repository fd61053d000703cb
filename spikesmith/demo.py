"""``spikesmith demo``: train the digits MLP and CNN, convert them at several T, compare accuracies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .datasets import digits
from .errors import SpikesmithError


MODELS = {"mlp": ("digits-mlp", "MLP"), "cnn": ("digits-cnn", "CNN")}


def run_demo(timesteps: int = 8, sweep: tuple[int, ...] = (2, 4, 6, 8, 12, 16), epochs: int = 60,
             out_dir: Path | None = None, progress: Callable[[str], None] = lambda message: None,
             models: tuple[str, ...] = ("mlp", "cnn")) -> dict:
    """Train, convert and evaluate each of ``models``; the MLP's figures at the top level, others by key."""
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise SpikesmithError(f"-o {out_dir}: it is a file; the demo writes its models into a folder")
    if out_dir is not None and not out_dir.is_dir():
        raise SpikesmithError(f"output folder {out_dir} does not exist")
    for t in (timesteps, *sweep):
        if not 1 <= t <= 16:
            raise SpikesmithError(f"timesteps must be between 1 and 16, not {t}")
    start = time.perf_counter()
    results = {key: _train_and_convert(key, timesteps, sweep, epochs, out_dir, progress) for key in models}
    first = results[models[0]]
    return {**first, **{key: results[key] for key in models[1:]}, "seconds": time.perf_counter() - start}


def _train_and_convert(key: str, timesteps: int, sweep: tuple[int, ...], epochs: int, out_dir: Path | None,
                       progress: Callable[[str], None]) -> dict:
    # torch (through the importer and the models): seconds to import, so only when the demo runs.
    from .gen.convert import ConversionOptions, convert_float_network
    from .gen.importer import export_module, import_program, save_program
    from .gen.netfile import save_network
    from .gen.passes import lower
    from .models import accuracy, digits_cnn, digits_mlp, train_classifier
    from .sim.evaluate import evaluate

    stem, kind = MODELS[key]
    train, test = digits("train"), digits("test")
    model = digits_mlp() if key == "mlp" else digits_cnn()
    progress(f"training the digits {kind} on {len(train)} images ({epochs} epochs)")

    def on_epoch(epoch, total, loss):
        if epoch % 10 == 0 or epoch == total:
            progress(f"  epoch {epoch}/{total}  loss {loss:.4f}")

    train_classifier(model, train, epochs=epochs, progress=on_epoch)
    ann = accuracy(model, test)
    progress(f"ANN test accuracy {100 * ann:.2f}%; exporting with torch.export")
    program = export_module(model, train.image_shape)
    network = lower(import_program(program))

    rows = {}
    nets = {}
    for t in sorted(set(sweep) | {timesteps}):
        options = ConversionOptions(timesteps=t)
        net = convert_float_network(network, train.images, options, source=f"spikesmith demo: digits {kind}")
        result = evaluate(net, test.images, test.labels)
        rows[str(t)] = {"snn_float_accuracy": result.snn_float_accuracy,
                        "golden_accuracy": result.golden_accuracy,
                        "golden_vs_ann_agreement": result.golden_vs_ann_agreement}
        nets[t] = net
        progress(f"converted at T={t:<2}: SNN golden accuracy {100 * result.golden_accuracy:.2f}%")

    files = {}
    if out_dir is not None:
        model_path = out_dir / f"{stem}.pt2"
        net_path = out_dir / f"{stem}.net.npz"
        save_program(program, model_path)
        save_network(nets[timesteps], net_path)
        files = {"model": str(model_path), "network": str(net_path)}
    return {
        "model": f"{kind} " + nets[timesteps].describe() + (
            f" ({', '.join(layer.kind for layer in nets[timesteps].layers)})"
            if any(layer.conv is not None for layer in nets[timesteps].layers) else ""),
        "train_images": len(train), "test_images": len(test),
        "ann_accuracy": ann,
        "main_timesteps": timesteps,
        "weight_bits": ConversionOptions().weight_bits,
        "timesteps": rows,
        "files": files,
    }
