"""The benchmark networks, trained here with the package's seeded trainer (CPU, seconds to a minute)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Trained:
    key: str
    title: str
    module: nn.Module
    network: object            # spikesmith FloatNetwork (the imported ANN)
    ann_accuracy: float
    train: object              # Dataset: training and calibration images
    test: object


def deep_digits_mlp() -> nn.Sequential:
    """Six affine layers on the 8x8 digits: 64-128-128-64-64-32-10."""
    return mlp([64, 128, 128, 64, 64, 32, 10])


def mlp(sizes: list[int]) -> nn.Sequential:
    """Affine layers of ``sizes`` (inputs first) with ReLU between them."""
    layers: list[nn.Module] = [nn.Flatten()]
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mnist_mlp() -> nn.Sequential:
    """784-128-10 for the 28x28 MNIST images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def mnist_lenet() -> nn.Sequential:
    """LeNet-5 style for 28x28 MNIST: conv 6@5x5 (padding 2), max pool 2, conv 16@5x5, max pool 2, 120, 84, 10."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def mnist_resnet():
    """A small ResNet for 28x28 MNIST: 3x3 stem of 8 channels, 2x2 max pool, two basic blocks (8, then
    8 -> 16 with stride 2 and a 1x1 shortcut), global average pooling, Linear 16 -> 10."""
    from spikesmith.models import small_resnet

    return small_resnet(1, (8, 16), 10, stem_pool=True)


def _import(module, shape):
    from spikesmith.gen.importer import export_module, import_program
    from spikesmith.gen.passes import lower

    return lower(import_program(export_module(module, shape)))


def train(key: str, epochs: int | None = None) -> Trained:
    from spikesmith.datasets import digits
    from spikesmith.models import accuracy, digits_cnn, digits_mlp, train_classifier

    if key == "digits-mlp":
        module, title, (train_set, test_set) = digits_mlp(), "digits MLP 64-64-32-10", (digits("train"), digits("test"))
        epochs = epochs or 60
    elif key == "digits-cnn":
        module, title, (train_set, test_set) = digits_cnn(), "digits CNN 64-512-256-10 (conv, conv, dense)", (
            digits("train"), digits("test"))
        epochs = epochs or 60
    elif key == "digits-deep":
        module, title = deep_digits_mlp(), "digits deep MLP 64-128-128-64-64-32-10 (6 layers)"
        train_set, test_set = digits("train"), digits("test")
        epochs = epochs or 60
    elif key.startswith("digits-mlp-"):                 # e.g. digits-mlp-64-37-10: an MLP of these sizes
        sizes = [int(size) for size in key.removeprefix("digits-mlp-").split("-")]
        module, title = mlp(sizes), f"digits MLP {'-'.join(map(str, sizes))}"
        train_set, test_set = digits("train"), digits("test")
        epochs = epochs or 60
    elif key == "mnist-mlp":
        module, title = mnist_mlp(), "MNIST MLP 784-128-10"
        train_set, test_set = mnist_split()
        epochs = epochs or 30
    elif key == "mnist-resnet":
        module, title = mnist_resnet(), ("MNIST ResNet (conv 8 + max pool, basic blocks 8 and 8->16 stride 2, "
                                         "global average pool, 10)")
        train_set, test_set = mnist_split()
        epochs = epochs or 15
    elif key == "mnist-lenet":
        module, title = mnist_lenet(), "MNIST LeNet-5 (conv 6, max pool, conv 16, max pool, 120, 84, 10)"
        train_set, test_set = mnist_split()
        epochs = epochs or 15
    else:
        raise KeyError(key)
    train_classifier(module, train_set, epochs=epochs)
    return Trained(key, title, module, _import(module, train_set.image_shape), accuracy(module, test_set),
                   train_set, test_set)


def mnist_split():
    """The shared MNIST t10k set: images 0-7999 train and calibrate, 8000-9999 test."""
    from spikesmith.datasets import Dataset, load_mnist

    from common import MNIST

    data = load_mnist(MNIST / "t10k-images-idx3-ubyte.gz")
    cut = 8000
    return (Dataset("mnist-t10k[0:8000]", data.images[:cut], data.labels[:cut]),
            Dataset("mnist-t10k[8000:10000]", data.images[cut:], data.labels[cut:]))


def first_within(points: dict, target: float) -> int | None:
    """Smallest T whose accuracy is at least ``target``."""
    good = [int(t) for t, acc in points.items() if acc is not None and acc >= target - 1e-12]
    return min(good) if good else None


__all__ = ["Trained", "train", "mnist_split", "first_within", "deep_digits_mlp", "mnist_mlp", "mnist_lenet", "mnist_resnet"]
