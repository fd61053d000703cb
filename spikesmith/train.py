"""Quantisation-aware fine-tuning: train the network with the SNN's own activations in the loop.

With k = 2 and temporal separation, T time steps carry exactly a T-bit code, so the converted
network is a network with T-bit activations. :class:`SpikingTwin` is that network in torch: the
converter's float network (batch norm folded, pools placed, :mod:`spikesmith.gen.passes`) with
every ReLU replaced by :class:`SpikeCode` (``spikesmith::spike_code``, a learnable full scale
λ, straight-through gradients), the image encoded the same way, and each layer's affine map on
the integer grid :mod:`spikesmith.gen.quantise` will put it on (weights, biases, thresholds). Fine-tune
it a few epochs (:func:`finetune`) and export it (:func:`export_twin`): ``convert`` reads the
spike codes' λ as thresholds and T as fixed, so the converted network computes what the
fine-tuned model computes (docs/semantics.md, "Fine-tuned models", says what still differs).

    network = lower(load_model_graph("m.pt2"))
    twin = finetune(network, initial_twin(network, train.images, options), train, options)
    save_program(export_twin(twin), "m-T3.pt2")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .datasets import Dataset
from .errors import SpikesmithError
from .gen.calibrate import calibrate
from .contract.network import check_images
from .gen.ir import FloatLayer, FloatNetwork
from .gen.quantise import MIN_CHANNEL_SCALE_RATIO, weight_scales
from .gen.spikecode import MAX_TIMESTEPS, spike_code

__all__ = ["SpikeCode", "TwinLayer", "SpikingTwin", "FinetuneOptions", "grid_scales", "fake_quantised",
           "class_nudges", "float_error_margins", "initial_twin", "finetune", "export_twin", "ann_logits",
           "twin_accuracy"]

#: Images per forward pass outside training (the ANN's outputs, test accuracy): bounds the memory.
BATCH = 1024
#: The smallest full scale a step may leave (λ is projected back above it: the code divides by it).
MIN_FULL_SCALE = 1e-6


class SpikeCode(nn.Module):
    """The quantised ReLU: ``clip(floor(x/λ·2^T + 1/2), 0, 2^T - 1)·λ/2^T``, λ learnable (``full_scale``)."""

    def __init__(self, full_scale: float, timesteps: int):
        super().__init__()
        if not 1 <= timesteps <= MAX_TIMESTEPS:
            raise SpikesmithError(f"timesteps must be between 1 and {MAX_TIMESTEPS}, not {timesteps}")
        self.full_scale = nn.Parameter(torch.tensor(float(full_scale), dtype=torch.float32))
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spike_code(x, self.full_scale, self.timesteps)


def grid_scales(weight: torch.Tensor, bits: int, per_channel: bool, own: torch.Tensor | None = None) -> torch.Tensor:
    """``(out,)``: the float value of one integer weight step per output row: conversion's own
    :func:`~spikesmith.gen.quantise.weight_scales` (``max |w_j| / (2^(bits-1) - 1)`` with a floor of 1/16 of
    the layer's, or one per layer), in ``weight``'s precision. ``own``: the rows that set the layer's scale
    (relay rows left out)."""
    rows = weight.detach().reshape(len(weight), -1).numpy()
    scales = weight_scales(rows, bits, per_channel, None if own is None else own.numpy())
    return torch.from_numpy(np.asarray(scales)).to(weight.dtype)


def class_nudges(classes: int) -> torch.Tensor:
    """``δ_k = 1/2 - (k + 1/2)/C`` membrane units, float64, for the C output neurons: what the twin adds to
    the output layer's integer bias ``B_k``. Each lies strictly inside (-1/2, 1/2), so conversion's
    ``rint`` gives ``B_k`` back; they fall by ``1/C`` from class to class, so ``V_k + δ_k`` orders the
    classes as the golden model does (larger ``V`` first, equal ``V``: the lower index) with a gap of at
    least ``1/C`` between any two (docs/semantics.md, "Fine-tuned models")."""
    return 0.5 - (torch.arange(classes, dtype=torch.float64) + 0.5) / classes


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row ``values`` shaped to broadcast over ``like`` (out, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def fake_quantised(weight: torch.Tensor, bits: int, per_channel: bool, own: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` (out, ...) rounded to conversion's grid (``rint(w / s_j)`` saturated to
    ``±(2^(bits-1) - 1)``, :func:`grid_scales`), with a straight-through gradient."""
    qmax = (1 << (bits - 1)) - 1
    scale = _rows(grid_scales(weight, bits, per_channel, own), weight)
    quantised = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
    return weight + (quantised - weight).detach()


class TwinLayer(nn.Module):
    """One layer of the float network: [max pool] affine [spike code], on flat ``(N, features)`` values.

    A firing layer with a convolution geometry is a ``conv2d`` (conversion keeps it a kernel, with
    one weight scale per output channel); every other layer is a ``linear`` over its matrix.

    With ``on_grid`` (training), the affine map is the one conversion will make of it, exactly:
    weights fake-quantised (inputs of several full scales weighted by ``λ_i/λ_ref`` first, as
    conversion does), the bias rounded as conversion rounds it (``B_j = rint(b_j/u_j +
    Θ_j/2^(T+1))``), and each row scaled by ``λ / (Θ_j·u_j)``, so that the spike code's ``x/λ``
    is the integer ``V/Θ_j`` of docs/semantics.md (``u_j``: one membrane unit, ``Θ_j = rint(λ/u_j)``).
    The bias sits ``1/2^(T+1)`` membrane units above ``B_j`` (conversion rounds it back to ``B_j``):
    the code's floor then never falls on a tie, where float sums and the integers could part, and
    moves by less than one step of ``2^T·V/Θ_j``, so it gives the integer code. The output layer's
    bias of class k sits :func:`class_nudges` ``δ_k`` units off ``B_k`` (earlier classes higher): equal
    integer logits then order as the golden model's first argmax does, whatever order a CPU sums in.

    Relay rows (a residual shortcut, gen/residual.py) stay as they are (weight 1 at the centre tap,
    bias 0, not trained) and their neurons' spike codes take their source's full scale, so they pass
    its code on unchanged. :meth:`bake` writes the on-grid weights, biases and the per-neuron full
    scales into the layer for export."""

    def __init__(self, layer: FloatLayer, full_scale: float | None, timesteps: int, weight_bits: int):
        super().__init__()
        self.name = layer.name
        self.pool = layer.pool
        self.geometry = layer.geometry if layer.relu and layer.geometry is not None else None
        if self.geometry is not None:
            weight, bias = layer.kernel, layer.bias.reshape(self.geometry.out_channels, -1)[:, 0]
            relay_rows = np.asarray(layer.relays if layer.relays is not None else [-1] * len(weight)) >= 0
        else:
            weight, bias = layer.matrix, layer.bias
            relay_rows = layer.relay_neurons() >= 0
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float32))
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float32))
        self.code = SpikeCode(full_scale, timesteps) if layer.relu else None
        self.timesteps, self.weight_bits = timesteps, weight_bits
        self.has_relays = bool(relay_rows.any())
        relay_neurons = layer.relay_neurons()
        self.register_buffer("relay_row", torch.from_numpy(relay_rows))
        self.register_buffer("relay_neuron", torch.from_numpy(relay_neurons >= 0))
        self.register_buffer("relay_source", torch.from_numpy(np.maximum(relay_neurons, 0)))
        self.register_buffer("baked_full_scales", None)
        self.on_grid = True

    def _columns(self, input_full_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``λ_i / λ_ref`` per weight column, broadcast over the weight; ``λ_ref``)."""
        reference = input_full_scales.max()
        if self.geometry is not None:
            per_channel = input_full_scales.reshape(self.geometry.in_shape[0], -1)[:, 0]
            return (per_channel / reference).reshape(1, -1, 1, 1), reference
        return (input_full_scales / reference).reshape(1, -1), reference

    def affine_on_grid(self, input_full_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) as conversion will make them (see the class docstring), straight-through."""
        steps, fires = float(1 << self.timesteps), self.code is not None
        column, reference = (value.detach() for value in self._columns(input_full_scales))
        own = ~self.relay_row if self.has_relays else None
        weight = fake_quantised(self.weight * column, self.weight_bits, fires, own) / column
        with torch.no_grad():
            unit = reference * grid_scales(self.weight * column, self.weight_bits, fires, own) / steps
            gain, half, nudge = torch.ones_like(unit), torch.zeros_like(unit), class_nudges(len(unit)).to(unit)
            if fires:
                full_scale = self.code.full_scale.detach()
                threshold = self._thresholds(full_scale / unit, self.weight * column, own)
                gain, half, nudge = full_scale / (threshold * unit), threshold / (2 * steps), 1 / (2 * steps)
            bias = (torch.round(self.bias / unit + half) - half + nudge) * unit
        return weight * _rows(gain, weight), (self.bias + (bias - self.bias).detach()) * gain

    def _thresholds(self, ratio: torch.Tensor, scaled: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
        """``Θ_j = max(1, rint(λ/u_j))``, except that no row's may pass ``16·Θ_min`` (the smallest of the
        layer's own rows) and a row on the 1/16 scale floor gets exactly that. Conversion reads the scale
        of a floored row from the layer's largest row after the gain ``λ/(Θ·u)``: ``λ·2^T/(16·λ_ref·Θ_min)``;
        with ``Θ_j = 16·Θ_min`` that is the row's own scale times its gain, so its integers come back."""
        threshold = torch.clamp(torch.round(ratio), min=1.0)
        qmax = (1 << (self.weight_bits - 1)) - 1
        rows = scaled.detach().reshape(len(scaled), -1).abs().amax(dim=1)
        floored = rows / qmax < grid_scales(scaled, self.weight_bits, True, own)
        mine = ~floored if own is None else ~floored & own
        if not mine.any():
            return threshold
        ceiling = threshold[mine].min() * round(1 / MIN_CHANNEL_SCALE_RATIO)
        return torch.where(floored, ceiling, torch.clamp(threshold, max=ceiling))

    def full_scales(self, input_full_scales: torch.Tensor) -> torch.Tensor | None:
        """The full scale of each neuron's code: the layer's, a relay's source's (None: the output layer)."""
        if self.code is None:
            return None
        if self.baked_full_scales is not None:
            return self.baked_full_scales
        if not self.has_relays:
            return self.code.full_scale
        return torch.where(self.relay_neuron, input_full_scales[self.relay_source], self.code.full_scale)

    def pooled(self, input_full_scales: torch.Tensor) -> torch.Tensor:
        """The full scales after this layer's max pool (per channel: a window lies in one channel)."""
        if self.pool is None:
            return input_full_scales
        (channels, _, _), (_, height, width) = self.pool.in_shape, self.pool.out_shape
        return input_full_scales.reshape(channels, -1)[:, 0].repeat_interleave(height * width)

    def layer_input(self, x: torch.Tensor, input_full_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The values the affine map reads (max-pooled, shaped ``(N, C, H, W)`` for a convolution) and
        their full scales. Called by the network, so that the layer's first op is its affine map (whose
        name the converted layer takes)."""
        if self.pool is not None:
            p = self.pool
            x = F.max_pool2d(x.reshape(-1, *p.in_shape), p.kernel, p.stride, p.padding, p.dilation,
                             p.ceil_mode).flatten(1)
            input_full_scales = self.pooled(input_full_scales)
        return (x if self.geometry is None else x.reshape(-1, *self.geometry.in_shape)), input_full_scales

    def forward(self, x: torch.Tensor, input_full_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's flat output values and their per-neuron full scales, from :meth:`layer_input`'s."""
        weight, bias = self.affine_on_grid(input_full_scales) if self.on_grid else (self.weight, self.bias)
        if self.has_relays:       # a relay row passes its source on: as it is, never trained
            weight = torch.where(_rows(self.relay_row, weight), self.weight.detach(), weight)
            bias = torch.where(self.relay_row, self.bias.detach(), bias)
        if self.geometry is not None:
            x = F.conv2d(x, weight, bias, self.geometry.stride, self.geometry.padding).flatten(1)
        else:
            x = F.linear(x, weight, bias)
        scales = self.full_scales(input_full_scales)
        if scales is None:
            return x, None
        return spike_code(x, scales, self.timesteps), scales.expand(x.shape[1])

    @torch.no_grad()
    def bake(self, input_full_scales: torch.Tensor) -> torch.Tensor | None:
        """Write the on-grid weights and bias into the parameters, and the per-neuron full scales (where
        relays make them differ) into ``baked_full_scales``: the layer is then a plain affine map and a
        spike code of constants. Returns its full scales, for the next layer's bake."""
        input_full_scales = self.pooled(input_full_scales)
        if self.on_grid:
            weight, bias = self.affine_on_grid(input_full_scales)
            relay = self.relay_row
            self.weight.copy_(torch.where(_rows(relay, weight), self.weight, weight))
            self.bias.copy_(torch.where(relay, self.bias, bias))
            self.on_grid = False
        scales = self.full_scales(input_full_scales)
        if scales is not None and self.has_relays:
            self.baked_full_scales = scales.detach().clone()
        return None if scales is None else scales.expand(self.weight.shape[0] if self.geometry is None else
                                                         int(np.prod(self.geometry.out_shape)))

    @torch.no_grad()
    def float_error(self, input_full_scales: torch.Tensor) -> tuple[float, float]:
        """(bound, margin) in membrane units, of a baked layer in float64: the most any neuron's value (its
        spike code's ``x/λ·2^T + 1/2``, or its logit) can be off the exact one, in any summation order,
        and how far the bias's nudge keeps the exact one from where the integers and the floats could part
        (a code boundary: ``1/2^(T+1)``; another class's logit: half the ``1/C`` gap of
        :func:`class_nudges`). Relay rows are exact (weight 1, zeros, bias 0) and left out.

        With ``u = 2^-53``, ``K`` products and one bias summed: ``|error| <= γ_(K+1)·Σ|terms|``
        (``γ_n = n·u/(1 - n·u)``, whatever the order or blocking), the weights, bias and codes off
        conversion's integers by a few ``u`` each, and the spike code's division and addition two more;
        ``(K + 16)·2^-52·(Σ|terms| + 2Θ + 1)`` membrane units bounds it all (terms at the inputs' full
        scales, an upper bound of their largest codes)."""
        assert not self.on_grid and self.weight.dtype == torch.float64, "bound a baked, float64 layer"
        input_full_scales = self.pooled(input_full_scales).to(torch.float64)
        column, reference = self._columns(input_full_scales)
        fires, rows = self.code is not None, self.weight.reshape(len(self.weight), -1)
        own = ~self.relay_row if self.has_relays else None
        unit = reference * grid_scales(self.weight * column, self.weight_bits, fires, own) / (1 << self.timesteps)
        largest = (self.weight.abs() * (column * reference)).reshape(len(rows), -1).sum(dim=1)
        terms = (largest + self.bias.abs()) / unit
        if fires:
            full_scales = torch.as_tensor(self.code.full_scale, dtype=torch.float64).expand(len(unit))
            terms = terms + 2 * torch.round(full_scales / unit) + 1
            margin = 1 / (1 << (self.timesteps + 1))
        else:
            margin = 1 / (2 * len(unit))
        bound = (rows.shape[1] + 16) * 2.0 ** -52 * terms
        if own is not None:
            bound = bound[own]
        return float(bound.max()), margin


class SpikingTwin(nn.Module):
    """The float network with spike codes for ReLUs: what the converted network computes, in torch."""

    def __init__(self, network: FloatNetwork, input_full_scale: float, full_scales: tuple[float, ...],
                 timesteps: int, weight_bits: int = 8):
        super().__init__()
        self.input_shape = tuple(network.input_shape)
        self.timesteps = timesteps
        self.input_code = SpikeCode(input_full_scale, timesteps)
        scales = iter(full_scales)
        self.layers = nn.ModuleList(TwinLayer(layer, next(scales) if layer.relu else None, timesteps, weight_bits)
                                    for layer in network.layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.input_code(images.flatten(1))
        scales = self.input_code.full_scale.expand(x.shape[1])
        for layer in self.layers:
            x, scales = layer(*layer.layer_input(x, scales))
        return x

    def codes(self) -> list[SpikeCode]:
        return [self.input_code] + [layer.code for layer in self.layers if layer.code is not None]


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning knobs; the defaults fine-tune the digits MLP in seconds."""
    timesteps: int = 4            # T of every spike code
    epochs: int = 20
    learning_rate: float = 1e-3   # Adam, cosine schedule to zero
    batch_size: int = 64
    distill: float = 1.0          # weight of distillation from the float ANN (the rest: cross-entropy on labels)
    temperature: float = 2.0      # of the distillation's softmax
    weight_bits: int = 8          # the grid weights are fake-quantised to (convert with the same --weight-bits)
    on_grid: bool = True          # train on conversion's integer grid (weights, biases, thresholds)
    seed: int = 0


def initial_twin(network: FloatNetwork, calib_images: np.ndarray, options: FinetuneOptions) -> SpikingTwin:
    """The twin of ``network`` with its full scales from calibration (the converter's threshold search at T)."""
    calibration = calibrate(network, check_images(calib_images, network.input_shape, "calibration images"),
                            options.timesteps)
    twin = SpikingTwin(network, calibration.input_threshold, calibration.activation_thresholds,
                       options.timesteps, options.weight_bits)
    for layer in twin.layers:
        layer.on_grid = options.on_grid
    return twin


def finetune(network: FloatNetwork, twin: SpikingTwin, train: Dataset, options: FinetuneOptions = FinetuneOptions(),
             progress: Callable[[int, int, float], None] | None = None) -> SpikingTwin:
    """Fine-tune ``twin`` (:func:`initial_twin` of ``network``) on ``train`` in place; returns it in eval mode.

    The loss distils the float ANN (``network``, the model as given): the KL divergence of the
    twin's softened outputs from the ANN's (``temperature``), times ``distill``, plus cross-entropy
    on the labels times ``1 - distill``; Adam, cosine schedule, seeded. A trained ANN fits its
    training set, so its labels alone leave little to learn; its outputs carry more. ``progress`` is
    called after every batch with (batches done, batches in all, mean loss of the epoch so far)."""
    torch.manual_seed(options.seed)
    images = check_images(train.images, twin.input_shape, "training images")
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(train.labels)
    teacher = torch.from_numpy(ann_logits(network, images).astype(np.float32))
    tau = options.temperature
    generator = torch.Generator().manual_seed(options.seed)
    optimiser = torch.optim.Adam(twin.parameters(), lr=options.learning_rate)
    batches = -(-len(x) // options.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, options.epochs * batches)
    twin.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for batch, start in enumerate(range(0, len(x), options.batch_size)):
            idx = order[start:start + options.batch_size]
            optimiser.zero_grad()
            logits = twin(x[idx])
            soft = F.kl_div(F.log_softmax(logits / tau, dim=1), F.softmax(teacher[idx] / tau, dim=1),
                            reduction="batchmean")
            loss = options.distill * tau * tau * soft + (1 - options.distill) * F.cross_entropy(logits, y[idx])
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                for code in twin.codes():
                    code.full_scale.clamp_(min=MIN_FULL_SCALE)
            total += loss.item() * len(idx)
            if progress:
                progress(epoch * batches + batch + 1, options.epochs * batches, total / min(len(x), start + len(idx)))
    return twin.eval()


def ann_logits(network: FloatNetwork, images: np.ndarray) -> np.ndarray:
    """``(N, classes)`` float64: the float ANN's outputs, :data:`BATCH` images at a time."""
    return np.concatenate([network.forward(images[start:start + BATCH])[-1] for start in range(0, len(images), BATCH)])


@torch.no_grad()
def twin_accuracy(twin: nn.Module, data: Dataset) -> float:
    """Test accuracy of a twin (or any module taking the data's images)."""
    twin.eval()
    images = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
    classes = torch.cat([twin(images[start:start + BATCH]).argmax(dim=1) for start in range(0, len(images), BATCH)])
    return float((classes.numpy() == data.labels).mean())


def float_error_margins(twin: SpikingTwin) -> list[tuple[float, float]]:
    """Per layer of a baked float64 twin (:func:`export_twin`): (bound, margin) of :meth:`TwinLayer.float_error`."""
    scales, margins = twin.input_code.full_scale.expand(int(np.prod(twin.input_shape))), []
    for layer in twin.layers:
        margins.append(layer.float_error(scales))
        scales = layer.full_scales(layer.pooled(scales))
        scales = None if scales is None else scales.expand(len(layer.weight) if layer.geometry is None else
                                                           int(np.prod(layer.geometry.out_shape)))
    return margins


@torch.no_grad()
def export_twin(twin: SpikingTwin) -> torch.export.ExportedProgram:
    """The twin as a ``torch.export`` program of any batch size: the on-grid weights and biases baked in
    (:meth:`TwinLayer.bake`; the twin keeps them), activations as ``spikesmith::spike_code`` nodes.

    The twin becomes float64 first (its float32 values are float64 values: conversion reads the same
    numbers), so the program lifts the float32 images to float64 at its first spike code and computes in
    float64 on every CPU; :func:`float_error_margins` then proves every value's float error below its
    nudge's margin, so its spike codes and its class are the golden model's (docs/semantics.md,
    "Fine-tuned models"). A network too large for that proof is refused, naming the layer."""
    twin.double()
    scales = twin.input_code.full_scale.expand(int(np.prod(twin.input_shape)))
    for layer in twin.layers:
        scales = layer.bake(scales)
    for layer, (bound, margin) in zip(twin.layers, float_error_margins(twin)):
        if not bound < margin:
            raise SpikesmithError(f"layer '{layer.name}': its float64 sums may be off by {bound:.3g} membrane units, "
                                  f"more than the {margin:.3g} that keeps the exported model equal to the "
                                  f"converted one; use fewer weight bits or timesteps")
    twin.eval()
    example = torch.zeros((2, *twin.input_shape), dtype=torch.float32)
    return torch.export.export(twin, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
