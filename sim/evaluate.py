"""Accuracy of a converted network three ways: float ANN, float SNN, integer golden model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..contract.network import SpikingNetwork
from . import golden
from .floatsim import ann_logits, snn_float_logits

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    images: int
    ann_accuracy: float | None        # float ANN (None if the file has no float parameters)
    snn_float_accuracy: float | None  # float weights, spiking activations: conversion error only
    golden_accuracy: float            # integer golden model: conversion + quantisation
    golden_vs_ann_agreement: float | None  # share of images where golden and ANN predict the same class
    # ... golden and float SNN: for a fine-tuned model (spike codes), the fine-tuned model's own predictions
    golden_vs_snn_float_agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(net: SpikingNetwork, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    labels = np.asarray(labels)
    result = golden.run_images(net, images)
    has_float = all(layer.shadow is not None for layer in net.layers)
    ann = snn = agree = agree_snn = None
    if has_float:
        ann_pred = ann_logits(net, images).argmax(axis=1)
        snn_pred = snn_float_logits(net, images).argmax(axis=1)
        ann = float(np.mean(ann_pred == labels))
        snn = float(np.mean(snn_pred == labels))
        agree = float(np.mean(ann_pred == result.predictions))
        agree_snn = float(np.mean(snn_pred == result.predictions))
    return Evaluation(len(labels), ann, snn, float(np.mean(result.predictions == labels)), agree, agree_snn)
