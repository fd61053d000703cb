"""The operators spikesmith reads in a model, by name: everything else is refused (deny by default).

Names are as ``torch.export`` writes a node's target (``aten.conv2d.default`` for
``torch.ops.aten.conv2d.default``). :data:`LAYERS` are the ops the importer converts; :data:`FOLDED`
the pure tensor ops it may evaluate when every operand is a parameter or a constant (a weight
transposed, a parametrised weight); :data:`CHECKS` the shape assertions torch leaves as dead code
(never run). Nothing outside these sets is resolved, run or folded, so no operator that touches files,
the network or the process (``aten.from_file``, ``aten._fft``, ...) is ever evaluated.
This module imports nothing: the archive check reads it before torch sees a file.
"""

from __future__ import annotations

__all__ = ["LAYERS", "FOLDED", "CHECKS", "GETITEM", "RESIDUAL_ADD", "READ", "target_name"]

#: Ops the importer converts into IR layers (gen/importer.py has one handler for each).
LAYERS = frozenset({
    "aten.linear.default", "aten.addmm.default", "aten.conv2d.default", "aten.convolution.default",
    "aten.avg_pool2d.default", "aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default",
    "aten.mean.dim", "aten.max_pool2d.default", "aten.max_pool2d_with_indices.default",
    "aten.relu.default", "aten.relu_.default", "spikesmith.spike_code.default",
    "aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
    "aten.dropout.default", "aten.dropout_.default", "aten.feature_dropout.default",
    "aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.contiguous.default",
    "aten.flatten.using_ints", "aten.unflatten.int", "aten.view.default", "aten.reshape.default",
    "aten._unsafe_view.default", "aten.squeeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
    "aten.unsqueeze.default", "aten.permute.default", "aten.transpose.int", "aten.t.default",
})
#: The residual join ``a + b`` of two activations (also a foldable op on constants).
RESIDUAL_ADD = frozenset({"aten.add.Tensor", "aten.add_.Tensor"})
#: Pure tensor ops evaluated on parameters and constants only, their result's size counted first.
FOLDED = frozenset({
    "aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.contiguous.default",
    "aten.flatten.using_ints", "aten.unflatten.int", "aten.view.default", "aten.reshape.default",
    "aten._unsafe_view.default", "aten.squeeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
    "aten.unsqueeze.default", "aten.permute.default", "aten.transpose.int", "aten.t.default",
    "aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor", "aten.neg.default",
    "aten.mul.Scalar", "aten.div.Scalar", "aten.add.Scalar", "aten.sub.Scalar",
    "aten.sqrt.default", "aten.rsqrt.default", "aten.reciprocal.default",
    "aten._to_copy.default", "aten.to.dtype", "aten.expand.default", "aten.repeat.default",
    "aten.repeat_interleave.self_int", "aten.select.int", "aten.slice.Tensor", "aten.ones_like.default",
    "aten.zeros_like.default", "aten.full_like.default", "aten.clamp.default", "aten.abs.default",
    "aten.maximum.default", "aten.minimum.default", "aten.where.self",
})
#: Shape and metadata assertions torch.export leaves in a graph; they have no users and never run.
CHECKS = frozenset({
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
})
#: Python's ``operator.getitem`` (item 0 of batch norm's or max pooling's tuple).
GETITEM = "_operator.getitem"
#: Every operator name a model file may mention.
READ = LAYERS | RESIDUAL_ADD | FOLDED | CHECKS | {GETITEM}


def target_name(serialized: str) -> str:
    """``aten.conv2d.default`` for the archive's ``torch.ops.aten.conv2d.default``."""
    return serialized[len("torch.ops."):] if serialized.startswith("torch.ops.") else serialized
