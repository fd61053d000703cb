"""Residual blocks as a chain: the shortcut rides along the main branch in relay channels.

A block ``y = relu(F(x) + S(x))`` with main branch ``F = L_k . relu . ... . relu . L_1``
(Linear or Conv2d layers, batch norm already folded) and shortcut ``S`` the identity or one
Linear / 1x1 convolution becomes the chain

    L_1' = [L_1 ; relay x]  ->  relu  ->  ...  ->  L_k' = [L_k | S]  ->  relu

Each ``L_i'`` (``i < k``) gets one extra output channel per channel of ``x``: a *relay* that
reads its source at the kernel's centre tap with weight 1 (a convolution's centre tap at
stride ``s`` is the 1x1 stride-``s`` sample of its input). ``x >= 0`` (a ReLU, pool or input
value), so the ReLU after a relay changes nothing and the float network computes exactly the
model's function. Quantisation then gives a relay weight 1, threshold ``2^T`` and bias 0, so
its spike train is its source's code, one layer later, bit for bit (docs/semantics.md,
"Residual blocks"): the shortcut reaches ``L_k'`` in step with the main branch, and the
hardware needs nothing new. ``k = 1``: ``L_1`` and ``S`` read the same ``x``, so their maps add.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UnsupportedModelError
from .ir import Add, Conv2d, Dense, Graph, Input, MaxPool2d, ReLU

__all__ = ["relay_residuals"]


def relay_residuals(graph: Graph) -> Graph:
    """Rewrite every residual add (with the ReLU after it) into a chain with relay channels."""
    while True:
        add = next((op for op in graph.ops if isinstance(op, Add)), None)
        if add is None:
            return graph
        graph = _relay_block(graph, add)


def _branch(graph: Graph, add: Add, name: str) -> tuple[str, list]:
    """Walk back from ``name`` (an operand of ``add``) to the value the block forks from:
    ``(fork, ops from the fork to name)``."""
    ops = []
    while not isinstance(graph.op(name), Input) and len(graph.consumers(name)) == 1:
        op = graph.op(name)
        if not isinstance(op, (Dense, Conv2d, ReLU)):
            raise UnsupportedModelError(
                f"residual add '{add.name}': its branch holds {graph.describe(op)}; spikesmith converts branches "
                f"of Linear or Conv2d layers (batch norm folded) with ReLU between them")
        ops.insert(0, op)
        name = op.inputs[0]
    return name, ops


def _main_branch_rank(ops: list) -> tuple[bool, int, bool]:
    """The main branch has the ReLUs, else more layers, else is not a 1x1 convolution (the shortcut is)."""
    one_by_one = len(ops) == 1 and isinstance(ops[0], Conv2d) and ops[0].weight.shape[2:] == (1, 1)
    return any(isinstance(op, ReLU) for op in ops), len(ops), not one_by_one


def _relay_block(graph: Graph, add: Add) -> Graph:
    where = f"residual add '{add.name}'"
    users = graph.consumers(add.name)
    if len(users) != 1 or not isinstance(users[0], ReLU) or graph.output == add.name:
        raise UnsupportedModelError(f"{where} is not followed by a ReLU; spikesmith converts y = relu(F(x) + S(x))")
    (fork_a, a), (fork_b, b) = (_branch(graph, add, name) for name in add.inputs)
    if fork_a != fork_b:
        raise UnsupportedModelError(f"{where}: its two branches start from different values; spikesmith converts "
                                    f"blocks whose branches both read the block's input")
    main, shortcut = sorted((a, b), key=_main_branch_rank, reverse=True)
    if any(isinstance(op, ReLU) for op in shortcut) or len(shortcut) > 1:
        raise UnsupportedModelError(f"{where}: its shortcut has {len(shortcut)} layers with a ReLU; spikesmith converts "
                                    f"the identity or one Linear / 1x1 Conv2d (with batch norm) as a shortcut")
    source = graph.op(fork_a)
    if not isinstance(source, (ReLU, Input, MaxPool2d)):
        raise UnsupportedModelError(f"{where}: the block's input comes from {graph.describe(source)}; it must be a "
                                    f"ReLU, max-pool or input value (spike codes)")
    layers = main[0::2]
    if not main or any(isinstance(op, ReLU) for op in layers) or any(not isinstance(op, ReLU) for op in main[1::2]) \
            or isinstance(main[-1], ReLU):
        raise UnsupportedModelError(f"{where}: its main branch must alternate Linear/Conv2d layers and ReLUs, "
                                    f"ending in a layer")
    kinds = {type(op) for op in layers + shortcut}
    if len(kinds) != 1:
        raise UnsupportedModelError(f"{where} mixes Linear and Conv2d layers; spikesmith relays within one kind")
    relay = _ConvRelay(where) if Conv2d in kinds else _DenseRelay()
    shortcut_op = shortcut[0] if shortcut else None
    width = relay.width(shortcut_op, layers[0])         # channels (features) of x
    rewritten = {}
    carried = 0                                         # this layer's input channels before the relays
    for index, layer in enumerate(layers[:-1]):
        rewritten[layer.name] = relay.with_relays(layer, width, carried if index else None)
        carried = relay.outputs(layer)
    last = layers[-1]
    rewritten[last.name] = relay.join(last, shortcut_op, width, carried if len(layers) > 1 else None)
    relay.check_strides(layers, shortcut_op)
    dropped = {add.name} | ({shortcut_op.name} if shortcut_op else set())
    ops = []
    for op in graph.ops:
        if op.name in dropped:
            continue
        op = rewritten.get(op.name, op)
        if op is users[0]:
            op = dataclasses.replace(op, inputs=(last.name,))
        ops.append(op)
    return Graph(tuple(ops), graph.output)


def _kept_relays(layer, outputs: int) -> tuple[int, ...]:
    """The layer's own relay entries (an inner block's, rewritten first), or none: its channels stay what they were."""
    return tuple(layer.relays) if layer.relays is not None else (-1,) * outputs


class _DenseRelay:
    """Relays of a Linear block: identity rows (features)."""

    def width(self, shortcut, first) -> int:
        return first.weight.shape[1]

    def outputs(self, layer) -> int:
        return layer.weight.shape[0]

    def with_relays(self, layer: Dense, width: int, carried: int | None) -> Dense:
        """``layer`` reading ``[h ; x]`` (or ``x``) and also passing ``x`` on."""
        weight = layer.weight if carried is None else np.hstack([layer.weight, np.zeros((len(layer.weight), width))])
        start = 0 if carried is None else carried
        relays = np.zeros((width, weight.shape[1]))
        relays[np.arange(width), start + np.arange(width)] = 1.0
        return dataclasses.replace(layer, weight=np.vstack([weight, relays]), bias=np.concatenate([layer.bias, np.zeros(width)]),
                                   relays=_kept_relays(layer, len(layer.weight)) + tuple(start + r for r in range(width)))

    def join(self, layer: Dense, shortcut: Dense | None, width: int, carried: int | None) -> Dense:
        """The block's last layer plus the shortcut, on ``[h ; x relayed]`` (or on ``x`` itself)."""
        s = shortcut.weight if shortcut is not None else np.eye(width)
        bias = layer.bias + (shortcut.bias if shortcut is not None else 0.0)
        if s.shape[0] != layer.weight.shape[0]:
            raise UnsupportedModelError(f"the shortcut gives {s.shape[0]} values, the main branch {layer.weight.shape[0]}")
        weight = layer.weight + s if carried is None else np.hstack([layer.weight, s])
        return dataclasses.replace(layer, weight=weight, bias=bias, source=f"{layer.source}+shortcut")

    def check_strides(self, layers, shortcut) -> None:
        return None


class _ConvRelay:
    """Relays of a convolution block: one channel per channel of ``x``, weight 1 at the centre tap."""

    def __init__(self, where: str):
        self.where = where

    def _centre(self, layer: Conv2d) -> tuple[int, int]:
        kh, kw = layer.weight.shape[2:]
        if kh % 2 == 0 or kw % 2 == 0 or tuple(layer.padding) != (kh // 2, kw // 2):
            raise UnsupportedModelError(
                f"{self.where}: Conv2d '{layer.name}' has a {kh}x{kw} kernel with padding {tuple(layer.padding)}; "
                f"the shortcut rides its centre tap, which needs an odd kernel and padding kernel // 2")
        return kh // 2, kw // 2

    def width(self, shortcut, first) -> int:
        return shortcut.in_channels if shortcut is not None else first.in_channels

    def outputs(self, layer) -> int:
        return layer.out_channels

    def with_relays(self, layer: Conv2d, width: int, carried: int | None) -> Conv2d:
        cy, cx = self._centre(layer)
        kernel = layer.weight
        if carried is not None:
            kernel = np.concatenate([kernel, np.zeros((len(kernel), width, *kernel.shape[2:]))], axis=1)
        start = 0 if carried is None else carried
        relays = np.zeros((width, kernel.shape[1], *kernel.shape[2:]))
        relays[np.arange(width), start + np.arange(width), cy, cx] = 1.0
        return dataclasses.replace(layer, weight=np.concatenate([kernel, relays]),
                                   bias=np.concatenate([layer.bias, np.zeros(width)]),
                                   relays=_kept_relays(layer, len(layer.weight)) + tuple(start + r for r in range(width)))

    def join(self, layer: Conv2d, shortcut: Conv2d | None, width: int, carried: int | None) -> Conv2d:
        cy, cx = self._centre(layer)
        if shortcut is not None:
            if shortcut.weight.shape[2:] != (1, 1) or tuple(shortcut.padding) != (0, 0):
                raise UnsupportedModelError(
                    f"{self.where}: the shortcut Conv2d '{shortcut.name}' must be 1x1 with no padding")
            s, bias = shortcut.weight[:, :, 0, 0], layer.bias + shortcut.bias
        else:
            s, bias = np.eye(width), layer.bias
        if s.shape[0] != layer.out_channels:
            raise UnsupportedModelError(f"{self.where}: the shortcut gives {s.shape[0]} channels, "
                                        f"the main branch {layer.out_channels}")
        extra = np.zeros((layer.out_channels, width, *layer.weight.shape[2:]))
        extra[:, :, cy, cx] = s
        kernel = layer.weight + extra if carried is None else np.concatenate([layer.weight, extra], axis=1)
        return dataclasses.replace(layer, weight=kernel, bias=bias, source=f"{layer.source}+shortcut")

    def check_strides(self, layers, shortcut) -> None:
        """The relay path samples ``x`` every (product of the branch's strides): the shortcut's stride."""
        total = tuple(int(np.prod([layer.stride[a] for layer in layers])) for a in range(2))
        want = tuple(shortcut.stride) if shortcut is not None else (1, 1)
        if total != want:
            raise UnsupportedModelError(f"{self.where}: the main branch strides by {total}, the shortcut by {want}")
