"""``spikesmith::spike_code``: the activation a converted layer emits, as a torch operator.

    y = clip(floor(x / λ · 2^T + 1/2), 0, 2^T - 1) · λ / 2^T

is the value the T-bit spike train of ``x`` stands for (docs/semantics.md, "Input encoding"
and the float SNN): a ReLU clipped at ``λ·(2^T - 1)/2^T`` and rounded to ``λ/2^T`` steps. A
model whose ReLUs are this operator (``spikesmith finetune`` writes such models) converts
with its own full scales ``λ`` as thresholds, no calibration search, and T fixed.

The code is computed in float64 in the contract's order (``x/λ``, times ``2^T``, plus 1/2,
floor: ``contract.network.encode_codes``), whatever ``x``'s type; the result has the wider of
``x``'s and ``λ``'s types, so a float64 ``λ`` lifts float32 images to float64 (an exported
fine-tuned program runs in float64, docs/semantics.md "Fine-tuned models"). A custom operator
(``torch.library``), so that ``torch.export`` keeps it as one node the
importer can recognise. Its gradient is straight-through: ``dy/dx = 1`` where ``x`` lies in
``[0, λ·(2^T - 1)/2^T]`` (0 outside), and ``dy/dλ`` is LSQ's (``(q - x·2^T/λ) / 2^T`` inside,
``(2^T - 1)/2^T`` above full scale, 0 below zero). Importing this module registers the operator;
a program that uses it loads only where spikesmith is installed (``import spikesmith.gen.spikecode``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spike_code", "MAX_TIMESTEPS"]

#: The converter's largest T (codes are at most 16 bits).
MAX_TIMESTEPS = 16


@torch.library.custom_op("spikesmith::spike_code", mutates_args=())
def spike_code(x: Tensor, full_scale: Tensor, timesteps: int) -> Tensor:
    """``x`` rounded to its T-bit code, in ``x``'s units; ``full_scale`` (λ) positive: a scalar, or one per
    feature of ``x`` (broadcast over the batch). Of the wider type of ``x`` and ``full_scale``."""
    steps = float(1 << timesteps)
    wide, scale = x.to(torch.float64), full_scale.to(torch.float64)   # the contract's float64, in its order
    code = torch.clamp(torch.floor(wide / scale * steps + 0.5), 0.0, steps - 1.0)
    return (code * (scale / steps)).to(torch.promote_types(x.dtype, full_scale.dtype))


@spike_code.register_fake
def _spike_code_shape(x: Tensor, full_scale: Tensor, timesteps: int) -> Tensor:
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, full_scale.dtype))


def _save_inputs(ctx, inputs, output) -> None:
    x, full_scale, timesteps = inputs
    ctx.save_for_backward(x, full_scale)
    ctx.timesteps = timesteps


def _straight_through(ctx, grad: Tensor):
    x, full_scale = ctx.saved_tensors
    steps = float(1 << ctx.timesteps)
    scaled = x / full_scale * steps
    inside = (scaled >= 0.0) & (scaled <= steps - 1.0)
    code = torch.clamp(torch.floor(scaled + 0.5), 0.0, steps - 1.0)
    d_scale = torch.where(inside, (code - scaled) / steps,
                          torch.where(scaled > steps - 1.0, torch.full_like(scaled, (steps - 1.0) / steps),
                                      torch.zeros_like(scaled)))
    return (grad * inside).to(x.dtype), (grad * d_scale).sum_to_size(full_scale.shape).to(full_scale.dtype), None


spike_code.register_autograd(_straight_through, setup_context=_save_inputs)
