"""The embedded default models and a small, seeded trainer (CPU, seconds)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .datasets import Dataset

__all__ = ["digits_mlp", "digits_cnn", "BasicBlock", "small_resnet", "train_classifier", "accuracy"]


def digits_mlp() -> nn.Sequential:
    """64-64-32-10 ReLU MLP for the 8x8 digits (1x8x8 images)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


def digits_cnn() -> nn.Sequential:
    """A small CNN for the 8x8 digits: conv 8@3x3 + BN, pool 2, conv 16@3x3, pool 2, linear 64-10.

    spikesmith converts it to two convolution layers (the pools composed into the convolution or
    linear layer after them) and a dense output layer: 64-512-256-10 (docs/semantics.md).
    """
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity, or a 1x1 convolution with batch norm when the block changes the
    channel count or strides (``stride`` on the first 3x3 convolution, as torchvision does).
    """

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or channels_in != channels_out:
            self.downsample = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def small_resnet(channels_in: int, widths: tuple[int, ...], classes: int, blocks_per_stage: int = 1,
                 stem_pool: bool = False) -> nn.Sequential:
    """A ResNet for small images: a 3x3 stem (``widths[0]`` channels, batch norm, ReLU, optionally a
    2x2 max pool), ``blocks_per_stage`` basic blocks per width (stride 2 from the second stage on),
    global average pooling and one Linear layer. ``widths=(16, 32, 64)`` is a CIFAR-style ResNet-8."""
    layers = [nn.Conv2d(channels_in, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    if stem_pool:
        layers.append(nn.MaxPool2d(2))
    current = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            layers.append(BasicBlock(current, width, 2 if stage > 0 and block == 0 else 1))
            current = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(current, classes)]
    return nn.Sequential(*layers)


def train_classifier(model: nn.Module, data: Dataset, epochs: int = 60, lr: float = 2e-3,
                     batch_size: int = 32, seed: int = 0,
                     progress: Callable[[int, int, float], None] | None = None) -> nn.Module:
    """Adam + cross-entropy, seeded (model init and shuffling). Returns the model in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    x = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
    y = torch.from_numpy(data.labels)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        schedule.step()
        if progress:
            progress(epoch + 1, epochs, total / len(x))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset) -> float:
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32)))
    return float((logits.argmax(dim=1).numpy() == data.labels).mean())
