"""NIR interchange (https://neuroir.org, PyPI ``nir``): a converted network out as a NIR graph, and a NIR
graph in as a float IR :class:`~spikesmith.gen.ir.Graph` that converts like a torch model.

Both directions read NIR's integrate-and-fire neurons by their rates. An ``IF`` with ``r`` and
threshold ``v_threshold``, driven by a constant input ``I`` per step, fires at the rate
``clip(r I / v_threshold, 0, 1)``: the clipped ReLU of the ANN the spiking network is equivalent to.

- :func:`export_graph`: ``Input -> IF(input threshold) -> [Flatten] -> Affine|Conv2d -> IF(lambda) -> ...
  -> Affine -> Output``, with the float weights of each layer scaled by the previous layer's
  full-scale activation (the next layer reads rates, not activations), so the graph's rate reading
  is the float SNN. The iLIF settings (k = 2, T, MSB-first binary codes, soft reset, temporal
  separation) are in the graph's metadata and each node's integer weights, biases and thresholds
  in its own metadata: what NIR's node types cannot say (docs/semantics.md, "NIR").
- :func:`import_graph`: ``Affine``/``Linear``/``Conv2d``/``AvgPool2d``/``SumPool2d``/``Flatten``
  nodes and ``IF``/``LIF`` neurons (zero reset and leak; a LIF is read as an IF) in a chain; each
  neuron becomes a ReLU whose rate scale ``r / v_threshold`` is folded into the affine node before
  it. Anything else is refused by name. Calibration then sets the iLIF thresholds as for a torch model.
- :func:`ann_equivalent`: the rate reading of a graph in numpy (with ``T`` from the metadata: the
  rates rounded to T-bit codes, as the converted network's are).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..contract.network import ConvGeometry, SpikingNetwork, convolve, encode_codes
from ..errors import ModelFileError, UnsupportedModelError
from ..fileio import write_atomic
from ..resources import MemoryBudget, MemoryBudgetError, reading_limit
from .ir import AvgPool2d, Conv2d, Dense, Graph, Input, ReLU, Reshape

__all__ = ["export_graph", "write_nir", "read_nir", "import_graph", "ann_equivalent", "MAX_NIR_BYTES", "MAX_NIR_NODES",
           "MAX_NIR_DEPTH"]

#: A NIR file is refused when its arrays would take more memory than this, read (HDF5 compresses them).
MAX_NIR_BYTES = 1 << 30
#: ... or when it holds more HDF5 objects (groups and datasets, counted at every path) than this,
MAX_NIR_NODES = 20_000
#: ... or nests groups deeper than this (NIR graphs nest a few levels).
MAX_NIR_DEPTH = 64


# ---------------------------------------------------------------------------- export

def _per_neuron(value, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (int(np.prod(shape)),)).reshape(shape).copy()


def _layer_nodes(nir, layer, scale_in: float | np.ndarray, shape: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
    """One layer's NIR nodes (its affine node, and its IF unless it is the output layer) and its output shape."""
    shadow = layer.shadow
    out_shape = (layer.out_size,) if layer.conv is None else layer.conv.geometry.out_shape
    nodes = []
    if layer.conv is not None:
        g = layer.conv.geometry
        if len(shape) != 3:
            raise UnsupportedModelError(f"convolution layer {layer.name} reads a flat layer's output: NIR has no "
                                        "node that gives it back its (C, H, W) shape")
        per_channel = np.broadcast_to(np.asarray(scale_in, dtype=np.float64).reshape(-1),
                                      (int(np.prod(g.in_shape)),)).reshape(g.in_shape[0], -1)[:, 0]
        kernel = shadow.kernel * per_channel[None, :, None, None]
        bias = shadow.bias.reshape(g.out_channels, -1)[:, 0]
        integer = {"integer_kernel": layer.conv.kernel.astype(np.int64),
                   "integer_bias": layer.bias.reshape(g.out_channels, -1)[:, 0].astype(np.int64)}
        nodes.append((f"{layer.name}", nir.Conv2d(input_shape=g.in_shape[1:], weight=kernel, stride=g.stride,
                                                  padding=g.padding, dilation=(1, 1), groups=1, bias=bias,
                                                  metadata=integer)))
    else:
        if len(shape) != 1:
            nodes.append((f"{layer.name}_flatten", nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0)))
        weight = shadow.weight * np.broadcast_to(np.asarray(scale_in, dtype=np.float64).reshape(-1),
                                                 (shadow.weight.shape[1],))[None, :]
        integer = {"integer_weight": layer.weight.astype(np.int64), "integer_bias": layer.bias.astype(np.int64)}
        nodes.append((f"{layer.name}", nir.Affine(weight=weight, bias=shadow.bias.astype(np.float64),
                                                  metadata=integer)))
    if layer.fires:
        lam = _per_neuron(shadow.activation_threshold, out_shape)
        nodes.append((f"{layer.name}_if", nir.IF(r=np.ones(out_shape), v_threshold=lam,
                                                  v_reset=np.zeros(out_shape),
                                                  metadata={"integer_threshold": _per_neuron(layer.threshold, out_shape)
                                                            .astype(np.int64)})))
    return nodes, out_shape


def export_graph(net: SpikingNetwork):
    """The converted network as a ``nir.NIRGraph`` (module docstring): refused when it has no float
    parameters or a max pool, which NIR cannot express."""
    import nir

    if any(layer.shadow is None for layer in net.layers):
        raise UnsupportedModelError("this network file carries no float parameters (the ANN it came from): "
                                    "its NIR graph would have nothing to read as rates")
    pooled = [layer.name for layer in net.layers if layer.pool is not None]
    if pooled:
        raise UnsupportedModelError(f"layer {pooled[0]} reads a max pool, which NIR has no node for "
                                    "(it has sum and average pooling only)")
    shape = tuple(net.input.shape)
    theta_in = float(net.input.threshold)
    nodes = [("input", nir.Input(input_type={"input": np.array(shape)})),
             ("input_if", nir.IF(r=np.ones(shape), v_threshold=np.full(shape, theta_in), v_reset=np.zeros(shape)))]
    scale_in: float | np.ndarray = theta_in
    for layer in net.layers:
        layer_nodes, shape = _layer_nodes(nir, layer, scale_in, shape)
        nodes += layer_nodes
        if layer.fires:
            scale_in = layer.shadow.activation_threshold
    nodes.append(("output", nir.Output(output_type={"output": np.array(shape)})))
    names = [name for name, _ in nodes]
    metadata = {"generator": f"spikesmith {__version__}", "neuron": "iLIF", "amplification": 2,
                "timesteps": net.timesteps, "coding": "MSB-first binary code of the clipped activation (T bits)",
                "reset": "soft (subtract the threshold)",
                "schedule": "temporal separation: each layer accumulates for T steps (V <- 2V + W s[t]), "
                            "then fires for T steps (V <- 2V; spike and subtract when V >= threshold)",
                "input_threshold": theta_in, "quantisation": "round",
                "weight_bits": int(max(layer.weight_bits for layer in net.layers))}
    return nir.NIRGraph(nodes=dict(nodes), edges=list(zip(names, names[1:])), metadata=metadata)


def write_nir(graph, path: str | os.PathLike) -> Path:
    """``nir.write`` into a temporary file beside ``path``, renamed over it once whole."""
    import io

    import nir

    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------------------- import

def read_nir(path: str | os.PathLike, budget: MemoryBudget | None = None):
    """A NIR graph from an HDF5 file, read by :func:`_read_tree` (deny by default: hard links only,
    numbers and strings only, every dataset counted against ``budget`` at each path that reaches it,
    before it is read) and built by NIR's own ``dict2NIRNode``, as ``nir.read`` does. ``budget``
    defaults to the smaller of the reading budget and :data:`MAX_NIR_BYTES`. Any refusal is one line."""
    import h5py
    import nir

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"NIR file not found: {path}")
    budget = MemoryBudget(min(reading_limit(), MAX_NIR_BYTES)) if budget is None else budget
    try:
        with h5py.File(path, "r") as f:
            tree = _read_tree(f, path, budget, path.stat().st_size)
    except MemoryBudgetError as exc:
        raise ModelFileError(str(exc)) from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:    # TypeError: a type numpy lacks
        raise ModelFileError(f"{path} is not a NIR file (HDF5): {_one_line(exc)}") from None
    unknown = sorted(set(tree) - {"node", "version"})
    if unknown or not isinstance(tree.get("node"), dict):
        raise ModelFileError(f"{path} is not a NIR file: it holds {unknown[0]!r}" if unknown else
                             f"{path} is not a NIR file: it has no node group")
    _check_node_values(tree["node"], path)
    try:
        return nir.dict2NIRNode({**tree["node"], "type_check": True})
    except Exception as exc:                  # NIR's constructors on hostile values: any failure is the file's
        raise ModelFileError(f"{path} is not a NIR graph nir {nir.version} can read: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None


def _check_node_values(graph: dict, path: Path) -> None:
    """Before NIR builds its nodes: every node is a group with a ``type`` string, and every parameter of
    it numbers (a Conv2d's padding may also be a string), so that a weight stored as text is refused
    naming its node rather than failing inside NIR's constructors. Nested graphs are walked alike."""
    pending = [graph]
    while pending:
        group = pending.pop()
        nodes = group.get("nodes", {})
        if not isinstance(nodes, dict):
            raise ModelFileError(f"{path}: its nodes are not a group")
        for name, node in nodes.items():
            kind = node.get("type") if isinstance(node, dict) else None
            if not isinstance(kind, str):
                raise ModelFileError(f"{path}: NIR node {name!r} is not a group with a type")
            if kind == "NIRGraph":
                pending.append(node)
                continue
            for field, value in node.items():
                if field in ("type", "metadata") or (field == "padding" and isinstance(value, str)):
                    continue
                if np.asarray(value).dtype.kind not in "biuf":
                    raise UnsupportedModelError(f"NIR {kind} node {name!r}: its {field} holds "
                                                f"{np.asarray(value).dtype} values; expected numbers")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _read_tree(f, path: Path, budget: MemoryBudget, file_bytes: int) -> dict:
    """The file's groups as nested dicts of its datasets' values, walked without recursion. Every link
    must be a hard link (soft and external links are refused unfollowed: never another file), every
    object is counted at every path that reaches it (at most :data:`MAX_NIR_NODES`; groups at most
    :data:`MAX_NIR_DEPTH` deep, so a group linked into itself ends there), and every dataset is
    checked and counted by :func:`_counted_dataset`; they are read once all of them are counted."""
    import h5py

    tree: dict = {}
    pending = [(f, "", 0, tree)]
    datasets: list = []
    objects = 0
    while pending:
        group, where, depth, values = pending.pop()
        for name in group:
            objects += 1
            if objects > MAX_NIR_NODES:
                raise ModelFileError(f"{path} holds more than {MAX_NIR_NODES:,} HDF5 objects")
            here = f"{where}/{name}"
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                kind = {"SoftLink": "a soft", "ExternalLink": "an external"}.get(type(link).__name__, f"a {type(link).__name__}")
                raise ModelFileError(f"{path}: {here[-120:]!r} is {kind} link; a NIR file holds hard links only "
                                     "(spikesmith follows no link to another path or file)")
            item = group[name]
            if isinstance(item, h5py.Group):
                if depth + 1 > MAX_NIR_DEPTH:
                    raise ModelFileError(f"{path}: {here[:80]!r}... nests groups deeper than {MAX_NIR_DEPTH}")
                values[name] = {}
                pending.append((item, here, depth + 1, values[name]))
            elif isinstance(item, h5py.Dataset):
                datasets.append((values, name, item, _counted_dataset(item, here, path, budget)))
            else:
                raise ModelFileError(f"{path}: {here[-120:]!r} is a {type(item).__name__}, not a group or dataset")
    for values, name, dataset, where in datasets:          # every path counted: now read
        values[name] = _dataset_value(dataset, where, budget, file_bytes)
    return tree


def _counted_dataset(dataset, here: str, path: Path, budget: MemoryBudget) -> str:
    """Check a dataset before reading it: numbers (bool, integer, float) or strings only, stored in this
    file; its size counted against ``budget`` (a variable-length string's pointers: see
    :func:`_dataset_value`). Returns how to name it in a message."""
    import h5py

    dtype = dataset.dtype
    numeric = dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None
    where = f"{path}: dataset {here[-120:]!r}"
    if not (numeric or h5py.check_string_dtype(dtype) is not None):
        raise ModelFileError(f"{where} holds {dtype} values, not numbers or text (references, compound "
                             "and variable-length arrays are refused)")
    if dataset.is_virtual or dataset.id.get_create_plist().get_external_count() > 0:
        raise ModelFileError(f"{where} keeps its values in other files")
    budget.take(dataset.size * dtype.itemsize, where)
    return where


def _dataset_value(dataset, where: str, budget: MemoryBudget, file_bytes: int):
    """A counted dataset's value, as ``nir.read`` gives it (a scalar string decoded). A variable-length
    string may be as long as the file: each is read once the budget has room for that, then counted."""
    if dataset.dtype.kind != "O":
        value = dataset[()]
    else:
        value = np.empty(dataset.shape, dtype=object)
        for index in np.ndindex(dataset.shape):
            if budget.used + file_bytes > budget.limit:
                budget.take(file_bytes, f"{where} (a string as long as the file)")
            string = dataset[index]
            budget.take(len(string), where)
            value[index] = string
        value = value[()] if dataset.shape == () else value
    return value.decode("utf8") if isinstance(value, bytes) else value


def _chain(graph) -> list[str]:
    """The node names from the input to the output: NIR graphs that branch are refused."""
    inputs = [name for name, node in graph.nodes.items() if type(node).__name__ == "Input"]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"the NIR graph has {len(inputs)} input nodes; spikesmith converts graphs with one")
    successors: dict[str, list[str]] = {}
    for source, target in graph.edges:
        successors.setdefault(source, []).append(target)
    order, name = [], inputs[0]
    while True:
        order.append(name)
        following = successors.get(name, [])
        if not following:
            return order
        if len(following) > 1 or following[0] in order:
            raise UnsupportedModelError(f"NIR node {name!r} feeds {len(following)} nodes {following}: spikesmith "
                                        "converts chains of layers (no branches or loops)")
        name = following[0]


def _pair(value, name: str) -> tuple[int, int]:
    array = np.atleast_1d(np.asarray(value)).astype(np.int64)
    if array.size == 1:
        return (int(array[0]), int(array[0]))
    if array.size == 2:
        return (int(array[0]), int(array[1]))
    raise UnsupportedModelError(f"NIR node {name!r}: expected one or two sizes, not {array.tolist()}")


def _rate_scale(name: str, node) -> np.ndarray:
    """``r / v_threshold`` of an IF or LIF neuron (its rate per unit of input), after checking what a
    ReLU can stand for: positive ``r`` and thresholds, zero reset (and zero leak)."""
    kind = type(node).__name__
    r, theta = np.asarray(node.r, dtype=np.float64), np.asarray(node.v_threshold, dtype=np.float64)
    if np.any(np.asarray(getattr(node, "v_reset", 0.0)) != 0):
        raise UnsupportedModelError(f"NIR {kind} node {name!r} resets to a nonzero potential; spikesmith reads "
                                    "IF and LIF neurons that reset to zero")
    if kind == "LIF" and np.any(np.asarray(node.v_leak) != 0):
        raise UnsupportedModelError(f"NIR LIF node {name!r} leaks towards a nonzero potential (v_leak)")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(theta)) and np.all(r > 0) and np.all(theta > 0)):
        raise UnsupportedModelError(f"NIR {kind} node {name!r} needs positive, finite r and v_threshold")
    return np.broadcast_to(r / theta, np.broadcast_shapes(r.shape, theta.shape))


def _fold_rows(op, scale: np.ndarray):
    """An affine op with its outputs scaled by ``scale`` (per output neuron or per channel): ``relu(s x) = s relu(x)``."""
    if isinstance(op, Conv2d):
        per_channel = scale.reshape(op.out_channels, -1)
        if not np.all(per_channel == per_channel[:, :1]):
            raise UnsupportedModelError(f"the neurons after convolution {op.name!r} have different r / v_threshold "
                                        "within a channel; a convolution has one per channel")
        s = per_channel[:, 0]
        return Conv2d(op.name, op.weight * s[:, None, None, None], op.bias * s, op.stride, op.padding, op.inputs,
                      op.source)
    s = np.broadcast_to(scale.reshape(-1), (len(op.bias),))
    return Dense(op.name, op.weight * s[:, None], op.bias * s, op.inputs, op.source)


def _scale_columns(op, scale: float):
    """An affine op reading inputs scaled by ``scale``."""
    if isinstance(op, Conv2d):
        return Conv2d(op.name, op.weight * scale, op.bias, op.stride, op.padding, op.inputs, op.source)
    return Dense(op.name, op.weight * scale, op.bias, op.inputs, op.source)


def _conv_op(name: str, node, shape: tuple[int, ...], previous: str) -> Conv2d:
    weight = np.asarray(node.weight, dtype=np.float64)
    groups, dilation = int(np.asarray(node.groups)), _pair(node.dilation, name)
    if weight.ndim != 4 or len(shape) != 3 or weight.shape[1] != shape[0]:
        raise UnsupportedModelError(f"NIR Conv2d node {name!r}: a (out, in, kh, kw) kernel on (C, H, W) values "
                                    f"expected, not {weight.shape} on {shape}")
    if groups != 1 or dilation != (1, 1):
        raise UnsupportedModelError(f"NIR Conv2d node {name!r} has groups {groups}, dilation {dilation}: "
                                    "spikesmith converts groups 1, dilation 1")
    padding = node.padding
    if isinstance(padding, (str, bytes)):
        padding = padding.decode() if isinstance(padding, bytes) else padding
        if padding != "valid":
            raise UnsupportedModelError(f"NIR Conv2d node {name!r}: padding {padding!r}; give it in pixels")
        padding = 0
    bias = np.zeros(weight.shape[0]) if node.bias is None else np.asarray(node.bias, dtype=np.float64).reshape(-1)
    if bias.size == 1:
        bias = np.full(weight.shape[0], float(bias[0]))
    return Conv2d(name, weight, bias, _pair(node.stride, name), _pair(padding, name), (previous,), "NIR Conv2d")


def _affine_op(name: str, node, kind: str, shape: tuple[int, ...], previous: str) -> Dense:
    weight = np.asarray(node.weight, dtype=np.float64)
    if weight.ndim != 2 or len(shape) != 1 or weight.shape[1] != shape[0]:
        raise UnsupportedModelError(f"NIR {kind} node {name!r}: a weight of {weight.shape} on values of shape {shape} "
                                    "(a Flatten goes before it)")
    bias = np.zeros(weight.shape[0]) if kind == "Linear" else np.broadcast_to(
        np.asarray(node.bias, dtype=np.float64).reshape(-1), (weight.shape[0],)).copy()
    return Dense(name, weight, bias, (previous,), f"NIR {kind}")


#: Bytes counted per value a node outputs (per image) when importing: lowering and conversion keep
#: per-neuron biases, scales, thresholds and bounds (a convolution's repeated over its pixels).
BYTES_PER_NEURON = 256

_NEURON_FIELDS = {"IF": ("r", "v_threshold", "v_reset"), "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset")}


def _numbers(name: str, kind: str, field: str, value, ndims: tuple[int, ...] = ()) -> np.ndarray:
    """Node ``name``'s parameter ``field``: finite numbers (bool, integer or float), of one of ``ndims``
    dimensions when given; anything else (strings, objects, a missing value) is refused naming the node."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf" or (ndims and array.ndim not in ndims) or not np.all(np.isfinite(array)):
        shape = "x".join(map(str, array.shape)) or "scalar"
        raise UnsupportedModelError(f"NIR {kind} node {name!r}: its {field} holds {array.dtype} values of shape "
                                    f"{shape}; expected finite numbers"
                                    + (f" in {' or '.join(map(str, ndims))} dimensions" if ndims else ""))
    return array


def _sized(name: str, kind: str, field: str, array: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """``array`` holding one of ``sizes`` values (one for all, or one per neuron or channel)."""
    if array.size not in sizes:
        raise UnsupportedModelError(f"NIR {kind} node {name!r}: its {field} has {array.size} values; expected "
                                    f"{' or '.join(map(str, sorted(set(sizes))))}")
    return array


def _check_parameters(name: str, node, kind: str, shape: tuple[int, ...]) -> None:
    """Every parameter of node ``name`` is numbers of the dimensions and sizes its type and the values of
    ``shape`` it reads allow, before anything is converted."""
    if kind == "Input":
        dims = _numbers(name, kind, "input shape", node.input_type.get("input"), (1,))
        if not (dims.dtype.kind in "iu" and 1 <= dims.size <= 3 and np.all(dims >= 1)):
            raise UnsupportedModelError(f"NIR Input node {name!r}: its shape {dims.tolist()} is not 1 to 3 sizes >= 1")
    elif kind in ("Affine", "Linear"):
        weight = _numbers(name, kind, "weight", node.weight, (2,))
        if kind == "Affine":
            _sized(name, kind, "bias", _numbers(name, kind, "bias", node.bias, (0, 1)), (1, weight.shape[0]))
    elif kind == "Conv2d":
        weight = _numbers(name, kind, "weight", node.weight, (4,))
        if node.bias is not None:
            _sized(name, kind, "bias", _numbers(name, kind, "bias", node.bias, (0, 1)), (1, weight.shape[0]))
        for field in ("stride", "dilation", "groups") + (() if isinstance(node.padding, (str, bytes)) else ("padding",)):
            _sized(name, kind, field, _numbers(name, kind, field, getattr(node, field), (0, 1)), (1, 2))
    elif kind in ("AvgPool2d", "SumPool2d"):
        for field in ("kernel_size", "stride", "padding"):
            _sized(name, kind, field, _numbers(name, kind, field, getattr(node, field), (0, 1)), (1, 2))
    elif kind in _NEURON_FIELDS:
        values = int(np.prod(shape))
        for field in _NEURON_FIELDS[kind]:
            _sized(name, kind, field, _numbers(name, kind, field, getattr(node, field, 0.0)), (1, values))


def import_graph(graph, source: str = "NIR", budget: MemoryBudget | None = None) -> Graph:
    """A NIR graph (a chain of the nodes the module docstring lists) as a float IR :class:`Graph`. Each
    node's parameters are checked (:func:`_check_parameters`) and the values it outputs counted against
    ``budget`` (default: a new :class:`MemoryBudget`) at :data:`BYTES_PER_NEURON` each, before converting."""
    budget = MemoryBudget() if budget is None else budget
    ops: list = []
    shape: tuple[int, ...] = ()
    pending = 1.0                       # a scale of the values the next affine node reads
    names = _chain(graph)
    for position, name in enumerate(names):
        node, previous = graph.nodes[name], ops[-1].name if ops else None
        kind = type(node).__name__
        _check_parameters(name, node, kind, shape)
        if kind == "Input":
            shape = tuple(int(d) for d in np.asarray(node.input_type["input"]).reshape(-1))
            ops.append(Input(name, shape, source=f"{source} Input"))
        elif kind in ("Affine", "Linear", "Conv2d"):
            op = _affine_op(name, node, kind, shape, previous) if kind != "Conv2d" else _conv_op(name, node, shape,
                                                                                                 previous)
            ops.append(_scale_columns(op, pending))
            pending, shape = 1.0, (len(op.bias),) if kind != "Conv2d" else op.output_shape(shape)
        elif kind in ("AvgPool2d", "SumPool2d"):
            if len(shape) != 3:
                raise UnsupportedModelError(f"NIR {kind} node {name!r} on values of shape {shape}, not (C, H, W)")
            op = AvgPool2d(name, _pair(node.kernel_size, name), _pair(node.stride, name), _pair(node.padding, name),
                           (previous,), f"NIR {kind}")
            pending *= op.kernel[0] * op.kernel[1] if kind == "SumPool2d" else 1.0
            ops.append(op)
            shape = op.output_shape(shape)
        elif kind == "Flatten":
            shape = (int(np.prod(shape)),)
            ops.append(Reshape(name, shape, (previous,), "NIR Flatten"))
        elif kind in ("IF", "LIF"):
            pending = _neuron(ops, name, kind, _rate_scale(name, node), names[position + 1:], graph, pending)
        elif kind != "Output":
            raise UnsupportedModelError(f"NIR node {name!r} is a {kind}, which spikesmith does not convert "
                                        "(it converts Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, IF, LIF)")
        if kind in ("Input", "Affine", "Linear", "Conv2d", "AvgPool2d", "SumPool2d"):
            _count_outputs(budget, name, kind, shape)
    if len(ops) < 2:
        raise UnsupportedModelError("the NIR graph has no layers between its input and output")
    return Graph(tuple(ops), ops[-1].name)


def _count_outputs(budget: MemoryBudget, name: str, kind: str, shape: tuple[int, ...]) -> None:
    values = math.prod(shape)
    try:
        budget.take(BYTES_PER_NEURON * values, f"NIR {kind} node {name!r} ({values:,} values out)")
    except MemoryBudgetError as exc:
        raise UnsupportedModelError(str(exc)) from None


def _neuron(ops: list, name: str, kind: str, scale: np.ndarray, rest: list[str], graph, pending: float) -> float:
    """An IF/LIF population: a ReLU with its rate scale folded into the affine op before it; on the input (a
    spike encoder of values >= 0: its ReLU is the identity) a scale of what the first layer reads; right
    before the output, the logits' scale. Returns the scale pending for the next affine op."""
    last = ops[-1]
    if isinstance(last, (Dense, Conv2d)):
        ops[-1] = _fold_rows(last, np.asarray(scale, dtype=np.float64))
        if not all(type(graph.nodes[later]).__name__ == "Output" for later in rest):
            ops.append(ReLU(name, (last.name,), f"NIR {kind}"))
        return pending
    if all(isinstance(op, (Input, Reshape, AvgPool2d)) for op in ops):
        if not np.all(scale == scale.reshape(-1)[0]):
            raise UnsupportedModelError(f"NIR {kind} node {name!r} on the input has different r / v_threshold per "
                                        "value; spikesmith reads input encoders with one")
        return pending * float(scale.reshape(-1)[0])
    raise UnsupportedModelError(f"NIR {kind} node {name!r} follows {last.source} {last.name!r}; spikesmith reads "
                                "neurons right after an Affine, Linear or Conv2d node (or on the input)")


# ---------------------------------------------------------------------------- the rate reading

def _pool(x: np.ndarray, shape: tuple[int, ...], node, name: str, average: bool) -> tuple[np.ndarray, tuple]:
    (kh, kw), (sh, sw), (ph, pw) = (_pair(node.kernel_size, name), _pair(node.stride, name), _pair(node.padding, name))
    c, h, w = shape
    padded = np.pad(x.reshape(len(x), c, h, w), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    pooled = windows.sum(axis=(-2, -1)) / (kh * kw if average else 1)
    return pooled.reshape(len(x), -1), pooled.shape[1:]


def ann_equivalent(graph, images: np.ndarray, timesteps: int | None = None, clip: bool = True) -> np.ndarray:
    """The graph's rate reading in numpy: ``(N, outputs)``. Each IF/LIF gives ``clip(r x / v_threshold, 0, 1)``;
    with ``timesteps`` (default: the metadata's ``timesteps``, if any) rounded to T-bit codes over ``2**T``.
    ``clip=False``: rates without the upper clip or rounding (the ReLU network an import converts)."""
    if clip:
        timesteps = timesteps or (int(graph.metadata["timesteps"]) if "timesteps" in (graph.metadata or {}) else None)
    x, shape = np.asarray(images, dtype=np.float64).reshape(len(images), -1), ()
    for name in _chain(graph):
        node = graph.nodes[name]
        kind = type(node).__name__
        if kind == "Input":
            shape = tuple(int(d) for d in np.asarray(node.input_type["input"]).reshape(-1))
        elif kind in ("Affine", "Linear"):
            x = x @ np.asarray(node.weight, dtype=np.float64).T + (0.0 if kind == "Linear" else node.bias)
            shape = (x.shape[1],)
        elif kind == "Conv2d":
            op = _conv_op(name, node, shape, "")
            geometry = ConvGeometry(shape, op.out_channels, tuple(op.weight.shape[2:]), op.stride, op.padding)
            x = convolve(x, geometry, op.weight) + np.repeat(op.bias, geometry.pixels)[None, :]
            shape = geometry.out_shape
        elif kind in ("AvgPool2d", "SumPool2d"):
            x, shape = _pool(x, shape, node, name, kind == "AvgPool2d")
        elif kind == "Flatten":
            shape = (int(np.prod(shape)),)
        elif kind in ("IF", "LIF"):
            r = np.broadcast_to(np.asarray(node.r, dtype=np.float64).reshape(-1), (x.shape[1],))
            theta = np.broadcast_to(np.asarray(node.v_threshold, dtype=np.float64).reshape(-1), (x.shape[1],))
            if not clip:
                x = np.maximum(x * r / theta, 0.0)
            elif timesteps:
                x = encode_codes(x * r / theta, 1.0, timesteps) / float(1 << timesteps)
            else:
                x = np.clip(x * r / theta, 0.0, 1.0)
    return x
