"""Passes over the float IR: each is a pure function ``Graph -> Graph`` (or to the next IR).

The order used by :func:`lower` is::

    check_finite -> drop_identities -> fold_batchnorm -> to_float_network

Each pass raises :class:`~spikeforge.errors.UnsupportedModelError` or
:class:`~spikeforge.errors.ConversionError` with a one-line message naming the layer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConversionError, UnsupportedModelError
from .ir import BatchNorm, Dense, Flatten, FloatLayer, FloatNetwork, Graph, Identity, ReLU

__all__ = ["check_finite", "drop_identities", "fold_batchnorm", "to_float_network", "lower"]


def _rewire(ops, removed: str, replacement: str):
    """Make every op that read ``removed`` read ``replacement`` instead."""
    return [dataclasses.replace(op, inputs=tuple(replacement if i == removed else i for i in op.inputs))
            for op in ops]


def check_finite(graph: Graph) -> Graph:
    """Refuse NaN or infinite parameters: they would poison thresholds and integer weights."""
    for op in graph.ops:
        for field in ("weight", "bias", "scale", "shift"):
            value = getattr(op, field, None)
            if value is None:
                continue
            bad = ~np.isfinite(value)
            if bad.any():
                n_nan = int(np.isnan(value).sum())
                n_inf = int(bad.sum()) - n_nan
                raise ConversionError(
                    f"layer {graph.describe(op)} has non-finite {field} values "
                    f"({n_nan} NaN, {n_inf} inf); fix or retrain the model before converting")
    return graph


def drop_identities(graph: Graph) -> Graph:
    """Remove ops that do nothing at inference (Dropout, Identity, clone)."""
    ops = list(graph.ops)
    output = graph.output
    for op in graph.ops:
        if isinstance(op, Identity):
            (source,) = op.inputs
            ops = _rewire([o for o in ops if o.name != op.name], op.name, source)
            if output == op.name:
                output = source
    return Graph(tuple(ops), output)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold each BatchNorm into the Dense layer that feeds it (and only it).

    ``BN(W x + b) = (scale * W) x + (scale * b + shift)`` per output feature.
    """
    ops = list(graph.ops)
    output = graph.output
    for bn in graph.ops:
        if not isinstance(bn, BatchNorm):
            continue
        (source_name,) = bn.inputs
        current = {op.name: op for op in ops}
        source = current[source_name]
        users = [op for op in ops if source_name in op.inputs]
        if not isinstance(source, Dense) or len(users) != 1 or source_name == output:
            raise UnsupportedModelError(
                f"{bn.source} '{bn.name}' does not directly follow a Linear layer; "
                f"spikeforge folds batch norm into the Linear layer before it")
        if source.out_features != bn.scale.shape[0]:
            raise UnsupportedModelError(
                f"{bn.source} '{bn.name}' has {bn.scale.shape[0]} features but follows "
                f"'{source.name}' with {source.out_features} outputs")
        folded = dataclasses.replace(
            source,
            weight=source.weight * bn.scale[:, None],
            bias=source.bias * bn.scale + bn.shift,
        )
        ops = [folded if op.name == source_name else op for op in ops if op.name != bn.name]
        ops = _rewire(ops, bn.name, source_name)
        if output == bn.name:
            output = source_name
    return Graph(tuple(ops), output)


SUPPORTED = "Linear, ReLU, Flatten, Dropout, Identity, BatchNorm1d (after a Linear layer)"


def to_float_network(graph: Graph) -> FloatNetwork:
    """Read a chain ``[Flatten] Dense ReLU ... Dense`` into a :class:`FloatNetwork`.

    Every hidden Dense layer must be followed by a ReLU (it becomes a firing iLIF layer);
    the last Dense layer gives the logits. A ReLU after the last layer is dropped: the
    output layer reports its integer logits and argmax is unchanged wherever a logit is
    positive.
    """
    # Walk the chain from the input to the output.
    inp = graph.input
    chain = []
    name = inp.name
    while True:
        users = graph.consumers(name)
        if not users:
            break
        if len(users) > 1:
            raise UnsupportedModelError(
                f"the value of {graph.describe(graph.op(name))} is used by {len(users)} layers; "
                f"branching graphs (residual adds) are not supported yet")
        (user,) = users
        if len(user.inputs) != 1:
            raise UnsupportedModelError(f"layer {graph.describe(user)} takes several inputs; not supported yet")
        chain.append(user)
        name = user.name
    if name != graph.output:
        raise UnsupportedModelError("the model output is not the end of its layer chain")

    shape = inp.shape
    layers: list[FloatLayer] = []
    pending: Dense | None = None
    for op in chain:
        if isinstance(op, Flatten):
            if pending is not None:
                raise UnsupportedModelError(
                    f"Flatten {graph.describe(op)} follows Linear '{pending.name}' without a ReLU")
            shape = (int(np.prod(shape)),)
        elif isinstance(op, Dense):
            if pending is not None:
                raise UnsupportedModelError(
                    f"Linear '{pending.name}' is followed by Linear '{op.name}' without a ReLU between them; "
                    f"every hidden layer must be a ReLU layer")
            if len(shape) > 1 and int(np.prod(shape[:-1])) != 1:
                raise UnsupportedModelError(
                    f"Linear '{op.name}' is applied to the last axis of a {'x'.join(map(str, shape))} "
                    f"tensor; flatten it first (torch.nn.Flatten)")
            if shape[-1] != op.in_features:
                raise UnsupportedModelError(
                    f"Linear '{op.name}' takes {op.in_features} inputs but receives {shape[-1]} values")
            pending = op
            shape = (op.out_features,)
        elif isinstance(op, ReLU):
            if pending is None:
                raise UnsupportedModelError(
                    f"ReLU {graph.describe(op)} does not follow a Linear layer")
            layers.append(FloatLayer(pending.name, pending.weight, pending.bias, relu=True, source=pending.source))
            pending = None
        else:
            raise UnsupportedModelError(
                f"unsupported layer {graph.describe(op)} at this point; supported: {SUPPORTED}")
    if pending is not None:
        layers.append(FloatLayer(pending.name, pending.weight, pending.bias, relu=False, source=pending.source))
    elif layers:
        last = layers[-1]
        layers[-1] = FloatLayer(last.name, last.weight, last.bias, relu=False, source=last.source)
    if not layers:
        raise UnsupportedModelError(f"the model has no Linear layer; supported: {SUPPORTED}")
    return FloatNetwork(input_shape=tuple(inp.shape), layers=tuple(layers))


def lower(graph: Graph) -> FloatNetwork:
    """Run the float-IR passes in order."""
    return to_float_network(fold_batchnorm(drop_identities(check_finite(graph))))
