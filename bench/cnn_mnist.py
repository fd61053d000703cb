"""A LeNet-5 with max pooling on MNIST: the ANN against the SNN golden model at T = 2, 4, 6, 8.

    python bench/cnn_mnist.py           # trains in a few minutes on 2 cores

Data: the shared MNIST t10k set (../shared/data/mnist): images 0-7999 train and calibrate,
8000-9999 test (not the standard 60k/10k split). The SNN column is the golden model, which
every hardware output matches bit for bit; the core's max-pooling stage is not built yet, so
there is no hardware column here. Writes bench/results/cnn_mnist.json and BENCHMARKS.md.
"""

from __future__ import annotations

import time

from common import log, save
from nets import train


def main() -> None:
    started = time.time()
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.sim.evaluate import evaluate

    log("training a LeNet-5 with max pooling on MNIST t10k images 0-7999")
    t = time.time()
    trained = train("mnist-lenet")
    train_seconds = time.time() - t
    log(f"ANN {100 * trained.ann_accuracy:.2f}% on images 8000-9999 ({train_seconds:.0f} s)")
    points = {}
    for timesteps in (2, 4, 6, 8):
        net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=timesteps))
        result = evaluate(net, trained.test.images, trained.test.labels)
        points[timesteps] = {"golden": result.golden_accuracy, "snn_float": result.snn_float_accuracy,
                             "agreement_with_ann": result.golden_vs_ann_agreement}
        log(f"T={timesteps}: SNN golden {100 * result.golden_accuracy:.2f}%")
    figures = {"network": trained.title, "train": trained.train.name, "test": trained.test.name,
               "ann_accuracy": trained.ann_accuracy, "train_seconds": train_seconds,
               "pooled_layers": [layer.name for layer in net.layers if layer.pool is not None], "points": points}
    save("cnn_mnist", figures, started)


if __name__ == "__main__":
    main()
