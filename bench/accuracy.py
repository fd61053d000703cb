"""Accuracy vs time steps: spikesmith's iLIF k=2 temporal separation against rate-coded IF.

    python bench/accuracy.py            # digits MLP, 6-layer digits MLP, MNIST LeNet-5 and ResNet (~30 min)

The same trained ANN, converted three ways: spikesmith (integer golden model, T <= 16: the
code is T bits wide), rate-coded IF with soft reset (bench/baselines.py, float64, T up to
512), and SpikingJelly's ann2snn when it is installed (``pip install spikingjelly``; its
RateCodingRecipe, 99.9 % normalisation). Writes
bench/results/accuracy.json, bench/plots/accuracy_vs_T.png and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time


from baselines import rate_if_accuracy
from common import PLOTS, log, pyplot, save
from nets import first_within, train

ILIF_T = [2, 3, 4, 5, 6, 8, 10, 12, 16]
RATE_T = [2, 4, 8, 16, 32, 64, 128, 256, 512]
#: Rate coding on the MNIST convolutional nets stops here (float64 dense matrices: minutes per T beyond).
RATE_T_MNIST = [2, 4, 8, 16, 32, 64]
FINETUNE_T = [2, 3, 4, 5, 6, 8]
#: T at which fine-tuning is repeated with seeds 1-3 (the batch order), for its spread.
SEEDS_T = [2, 3, 4]


def finetuned_once(trained, t: int, seed: int = 0) -> tuple[float, float]:
    """``spikesmith finetune`` (default options, ``seed``) at T, then ``convert`` with no calibration data:
    the golden model's test accuracy, and the share of test images where it and the fine-tuned torch
    program (run by torch) predict the same class."""
    import numpy as np
    import torch

    from spikesmith.gen.convert import ConversionOptions, convert_graph
    from spikesmith.gen.importer import import_program
    from spikesmith.sim import golden
    from spikesmith.train import FinetuneOptions, export_twin, finetune, initial_twin

    options = FinetuneOptions(timesteps=t, seed=seed)
    twin = finetune(trained.network, initial_twin(trained.network, trained.train.images, options), trained.train,
                    options)
    program = export_twin(twin)
    net = convert_graph(import_program(program), None, ConversionOptions(timesteps=t))
    predictions = golden.run_images(net, trained.test.images).predictions
    with torch.no_grad():
        tuned = program.module()(torch.from_numpy(trained.test.images)).argmax(dim=1).numpy()
    return float(np.mean(predictions == trained.test.labels)), float(np.mean(predictions == tuned))


def finetuned_accuracy(trained) -> tuple[dict, dict, dict]:
    """Fine-tuned golden accuracy and agreement by T (:data:`FINETUNE_T`), and accuracy over seeds 0-3 at
    :data:`SEEDS_T`."""
    accuracy, agreement, seeds = {}, {}, {}
    for t in FINETUNE_T:
        accuracy[str(t)], agreement[str(t)] = finetuned_once(trained, t)
        log(f"  fine-tuned T={t:<3} {100 * accuracy[str(t)]:.2f}%  (golden = fine-tuned model on "
            f"{100 * agreement[str(t)]:.2f}% of images)")
    for t in SEEDS_T:
        others = [finetuned_once(trained, t, seed) for seed in (1, 2, 3)]
        seeds[str(t)] = [accuracy[str(t)]] + [a for a, _ in others]
        agreement[str(t)] = min([agreement[str(t)]] + [a for _, a in others])
        log(f"  fine-tuned T={t:<3} seeds 0-3: {', '.join(f'{100 * a:.2f}%' for a in seeds[str(t)])}")
    return accuracy, agreement, seeds


def spikingjelly_accuracy(trained, timesteps: list[int]) -> dict | None:
    """SpikingJelly ann2snn (rate coding, 99.9 % normalisation, IF soft reset, analog input); None if absent."""
    try:
        import torch
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError:
        return None
    import copy

    calib = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(trained.train.images), torch.from_numpy(trained.train.labels)),
        batch_size=256)
    recipe = ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%")
    snn = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(copy.deepcopy(trained.module).eval())
    x = torch.from_numpy(trained.test.images)
    out, total = {}, None
    with torch.no_grad():
        functional.reset_net(snn)
        for t in range(1, max(timesteps) + 1):
            step = snn(x)
            total = step if total is None else total + step
            if t in timesteps:
                out[str(t)] = float((total.argmax(1).numpy() == trained.test.labels).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["digits-mlp", "digits-deep", "mnist-lenet", "mnist-resnet"])
    args = parser.parse_args()
    started = time.time()
    figures = {key: network_figures(key) for key in args.nets}
    plot(figures)
    save("accuracy", figures, started)


def network_figures(key: str) -> dict:
    """One network: ANN, iLIF by T, fine-tuned by T, rate-coded IF and SpikingJelly by T."""
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.sim.evaluate import evaluate

    log(f"training {key}")
    trained = train(key)
    log(f"{trained.title}: ANN {100 * trained.ann_accuracy:.2f}%")
    ilif = {}
    for t in ILIF_T:
        net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=t))
        ilif[str(t)] = evaluate(net, trained.test.images, trained.test.labels).golden_accuracy
        log(f"  iLIF k=2  T={t:<3} {100 * ilif[str(t)]:.2f}%")
    tuned, agreement, seeds = finetuned_accuracy(trained)
    rate_t = RATE_T_MNIST if key.startswith("mnist") else RATE_T
    rate = None           # the rate-coded baseline has no max pool (a max of spike trains is not the max's train)
    if all(layer.pool is None for layer in trained.network.layers):
        rate = {}
        for t in rate_t:
            rate[str(t)] = rate_if_accuracy(trained.network, trained.train.images, trained.test.images,
                                            trained.test.labels, t)
            log(f"  rate IF   T={t:<3} {100 * rate[str(t)]:.2f}%")
    try:
        jelly = spikingjelly_accuracy(trained, rate_t)
    except Exception as exc:          # SpikingJelly's converter refuses some graphs; the bench goes on
        log(f"  SpikingJelly failed: {exc}")
        jelly = {}
    target = trained.ann_accuracy - 0.005
    return {
        "title": trained.title, "train": trained.train.name, "test": trained.test.name,
        "test_images": len(trained.test), "ann_accuracy": trained.ann_accuracy, "ilif": ilif, "finetuned": tuned,
        "finetuned_agreement": agreement, "finetuned_seeds": seeds, "rate_if": rate, "rate_t": rate_t,
        "spikingjelly": jelly,
        "smallest_t_within_half_point": {"ilif": first_within(ilif, target), "finetuned": first_within(tuned, target),
                                         "rate_if": first_within(rate, target) if rate else None,
                                         "spikingjelly": first_within(jelly, target) if jelly else None},
    }


def plot(figures: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(figures), figsize=(6 * len(figures), 4.2), squeeze=False)
    for ax, entry in zip(axes[0], figures.values()):
        ax.axhline(100 * entry["ann_accuracy"], color="black", lw=1, ls="--", label="ANN")
        ax.axhline(100 * entry["ann_accuracy"] - 0.5, color="grey", lw=0.8, ls=":", label="ANN - 0.5 points")
        for name, key, style in (("spikesmith iLIF k=2 (integer golden model)", "ilif", "o-"),
                                 ("spikesmith after finetune (golden model)", "finetuned", "D-"),
                                 ("rate-coded IF, soft reset", "rate_if", "s-"),
                                 ("SpikingJelly ann2snn", "spikingjelly", "^-")):
            points = entry.get(key)
            if points:
                ts = sorted(int(t) for t in points)
                ax.plot(ts, [100 * points[str(t)] for t in ts], style, label=name, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0, 100 * entry["ann_accuracy"] - 40), 100)
        ax.set_title(entry["title"], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOTS / "accuracy_vs_T.png", dpi=120)


if __name__ == "__main__":
    main()
