"""Model import: a ``torch.nn.Module`` or a ``torch.export`` program file -> float IR.

Both paths go through ``torch.export``: a module is exported with one example input,
a ``.pt2`` file is first read by :func:`~.archive.checked_program_archive` (only the members, JSON
fields, operators and symbolic sizes it allows; a new archive of the checked parts), and torch loads
that, with every unpickling path refused as a second wall. The importer then walks the exported ATen
graph and emits typed ops of :mod:`spikesmith.gen.ir`, running no operator outside
:mod:`.operators`; error messages name the user's layer through ``nn_module_stack``.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelFileError, UnsupportedModelError
from ..resources import MemoryBudget
from ..fileio import write_atomic
from .archive import checked_program_archive
from . import operators
from .ir import Add, AvgPool2d, BatchNorm, Conv2d, Dense, Graph, Identity, Input, MaxPool2d, ReLU, Reshape, SpikeCode
from .shapes import SQUEEZE_OPS, check_batch_axis, keeps_order, permutation
from .passes import SUPPORTED
from .spikecode import MAX_TIMESTEPS  # importing it registers spikesmith::spike_code before any load

__all__ = ["export_module", "load_program", "save_program", "import_program", "import_module"]

aten = torch.ops.aten


def export_module(module: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """Export ``module`` in inference mode for one image of ``input_shape`` (batch of 1)."""
    was_training = module.training
    module.eval()
    try:
        example = torch.zeros((1, *input_shape), dtype=torch.float32)
        return torch.export.export(module, (example,))
    except Exception as exc:  # torch raises many types; the user needs the first line
        raise UnsupportedModelError(f"torch.export could not trace the model: {_first_line(exc)}") from exc
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _refuse_unpickling(path: Path):
    """Inside this context ``torch.export.load`` can read tensors and graphs, never Python objects."""
    from torch.export.pt2_archive import _package     # a private torch module: looked up only when loading

    def refuse(*args, **kwargs):
        raise ModelFileError(
            f"{path} contains pickled Python objects; spikesmith never unpickles model files "
            f"(export the model with plain tensors: torch.export.save)")

    real_load = torch.load

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(f, *args, **kwargs)
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path}: refused to unpickle an object that is not a plain tensor "
                                 f"({_first_line(exc)})") from exc

    class _NoPickle:
        loads = staticmethod(refuse)
        load = staticmethod(refuse)

    saved = [(torch, "load", torch.load), (torch._C, "_pickle_load_obj", torch._C._pickle_load_obj),
             (_package, "pickle", _package.pickle)]
    torch.load = weights_only_load
    torch._C._pickle_load_obj = refuse
    _package.pickle = _NoPickle
    try:
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch logs a traceback of its own before raising on a bad archive; our one-line error says it all."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_program(path: str | os.PathLike, budget: MemoryBudget | None = None) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` file written by ``torch.export.save``: torch reads only the checked archive."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    checked = io.BytesIO(checked_program_archive(path, budget))
    try:
        with _refuse_unpickling(path), _quiet_torch_logs():
            program = torch.export.load(checked)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable torch.export program (.pt2): {_first_line(exc)}") from exc
    if not isinstance(program, torch.export.ExportedProgram):
        raise ModelFileError(f"{path} does not hold an exported program")
    return program


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """``torch.export.save`` into memory, then written whole (:func:`~spikesmith.fileio.write_atomic`: a
    temporary file moved in, the mode a new file gets under the umask), so a failure leaves no partial file."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return write_atomic(path, buffer.getvalue())


def import_module(module: torch.nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """Export ``module`` and import its graph."""
    return import_program(export_module(module, tuple(input_shape)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _layer_of(node: torch.fx.Node) -> tuple[str, str]:
    """(path, class name) of the innermost user module that produced ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, type_name = list(stack.values())[-1]
        cls = type_name.rsplit(".", 1)[-1] if isinstance(type_name, str) else getattr(type_name, "__name__", "?")
        if path:
            return path, cls
    return node.name, "function"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy().copy()


class _Act:
    """An activation value flowing through the graph: the IR op that produces it, and its per-sample shape."""

    def __init__(self, op_name: str, shape: tuple[int, ...]):
        self.op_name = op_name
        self.shape = shape


class _TupleAct(_Act):
    """An op that returns a tuple whose item 0 is its output (batch norm's statistics, max pooling's
    indices); ``other`` says what using another item means."""

    def __init__(self, op_name: str, shape: tuple[int, ...], other: str = "uses batch statistics; export in eval mode"):
        super().__init__(op_name, shape)
        self.other = other


def import_program(program: torch.export.ExportedProgram) -> Graph:
    """Walk an exported ATen graph and emit the float IR."""
    return _GraphWalk(program).run()


def _pair(value) -> tuple[int, int]:
    """A 2-D size from an int or a one- or two-element list."""
    return (int(value[0]), int(value[-1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class _Layer:
    """The op being imported: its graph node, activation input, IR name, and the user's layer (for messages)."""

    def __init__(self, node: torch.fx.Node, x: _Act, name: str, path: str, cls: str):
        self.node, self.x, self.name, self.path, self.cls = node, x, name, path, cls


class _GraphWalk:
    """One walk over an exported program.

    ``values`` maps graph names to tensors (parameters, folded constants) or activations
    (:class:`_Act`); ``ops`` collects the IR. Each supported ATen target has one handler,
    which appends its op and returns the activation it produces.
    """

    def __init__(self, program: torch.export.ExportedProgram, budget: MemoryBudget | None = None):
        self.program = program
        self.budget = budget or MemoryBudget()
        self.values: dict[str, Any] = {}
        self.ops: list = []
        self.batched = True
        self.handlers = {
            aten.linear.default: self._linear, aten.addmm.default: self._addmm,
            aten.conv2d.default: self._conv, aten.convolution.default: self._conv,
            aten.avg_pool2d.default: self._avg_pool,
            aten.adaptive_avg_pool2d.default: self._adaptive_avg_pool,
            aten._adaptive_avg_pool2d.default: self._adaptive_avg_pool,
            aten.mean.dim: self._spatial_mean,
            aten.max_pool2d.default: self._max_pool, aten.max_pool2d_with_indices.default: self._max_pool,
            aten.relu.default: self._relu, aten.relu_.default: self._relu,
            torch.ops.spikesmith.spike_code.default: self._spike_code,
            aten.batch_norm.default: self._batch_norm, aten._native_batch_norm_legit_no_training.default: self._batch_norm,
            aten.dropout.default: self._dropout, aten.dropout_.default: self._dropout,
            aten.feature_dropout.default: self._dropout,
            aten.clone.default: self._identity, aten.alias.default: self._identity,
            aten.detach.default: self._identity, aten.contiguous.default: self._identity,
            aten.flatten.using_ints: self._reshape, aten.unflatten.int: self._reshape,
            aten.view.default: self._reshape, aten.reshape.default: self._reshape, aten._unsafe_view.default: self._reshape,
            aten.squeeze.default: self._reshape, aten.squeeze.dim: self._reshape, aten.squeeze.dims: self._reshape,
            aten.unsqueeze.default: self._reshape,
            aten.permute.default: self._permute, aten.transpose.int: self._permute, aten.t.default: self._permute,
        }

    def run(self) -> Graph:
        self._inputs()
        for node in self.program.graph.nodes:
            if node.op == "call_function" and node.users:     # no users: dead code (e.g. shape assertions)
                self._call(node)
        output_node = next(n for n in self.program.graph.nodes if n.op == "output")
        outs = output_node.args[0]
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if len(outs) != 1 or not isinstance(self.values.get(outs[0].name), _Act):
            raise UnsupportedModelError("the model must return one tensor (the logits)")
        return Graph(tuple(self.ops), self.values[outs[0].name].op_name)

    def _inputs(self) -> None:
        from torch.export.graph_signature import InputKind     # loads torch.export's graph machinery on first use

        state, constants, values = self.program.state_dict, self.program.constants, self.values
        for spec in self.program.graph_signature.input_specs:
            name = spec.arg.name
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                values[name] = state[spec.target] if spec.target in state else constants[spec.target]
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                values[name] = constants[spec.target]
            elif spec.kind == InputKind.USER_INPUT:
                if any(isinstance(v, _Act) for v in values.values()):
                    raise UnsupportedModelError("the model takes several inputs; spikesmith converts one-input models")
                node = next(n for n in self.program.graph.nodes if n.op == "placeholder" and n.name == name)
                val = node.meta.get("val")
                if val is None or not hasattr(val, "shape"):
                    raise UnsupportedModelError("the model input is not a tensor")
                shape = tuple(int(d) for d in val.shape)
                self.batched = len(shape) >= 2
                per_sample = shape[1:] if self.batched else shape
                self.ops.append(Input("input", per_sample))
                values[name] = _Act("input", per_sample)
            else:
                raise UnsupportedModelError(f"unsupported model input kind {spec.kind.name}")

    def _arg(self, node, i, default=None):
        """Argument ``i`` of ``node``: a tensor or activation for a graph node, else the literal."""
        if i >= len(node.args):
            return default
        a = node.args[i]
        return self.values[a.name] if isinstance(a, torch.fx.Node) else a

    def _call(self, node) -> None:
        path, cls = _layer_of(node)
        name = _operator_name(node)
        operands: list[torch.fx.Node] = []
        torch.fx.node.map_arg(node.args, operands.append)          # graph nodes, also inside lists (torch.cat)
        acts = [self.values[a.name] for a in operands if isinstance(self.values.get(a.name), _Act)]
        if name == "aten.cat.default" and acts:
            raise UnsupportedModelError(f"concatenation '{path}' ({cls}: torch.cat) is not supported yet")
        if name not in operators.READ:
            raise UnsupportedModelError(f"unsupported layer '{path}' ({cls}: {name}); supported: {SUPPORTED}")
        if not acts:
            self.values[node.name] = self._fold(node, name, path, cls)
            return
        x = acts[0]
        if node.target is operator.getitem and isinstance(x, _TupleAct):
            if node.args[1] != 0:
                raise UnsupportedModelError(f"layer '{path}' ({cls}) {x.other}")
            self.values[node.name] = _Act(x.op_name, x.shape)
            return
        if node.target in (aten.add.Tensor, aten.add_.Tensor) and len(acts) == 2:
            self.values[node.name] = self._residual_add(_Layer(node, x, _unique(path, self.ops), path, cls), acts)
            return
        handler = self.handlers.get(node.target)
        if len(acts) != 1 or handler is None:
            target = node.target if len(acts) != 1 else str(node.target).replace("aten::", "aten.")
            raise UnsupportedModelError(f"unsupported layer '{path}' ({cls}: {target}); supported: {SUPPORTED}")
        self.values[node.name] = handler(_Layer(node, x, _unique(path, self.ops), path, cls))

    def _fold(self, node, name: str, path: str, cls: str) -> torch.Tensor:
        """Every operand is a parameter or a constant: evaluate a pure op of :data:`operators.FOLDED` now (a
        weight transposed), its result's size counted against the budget first; any other op is refused."""
        if name not in operators.FOLDED:
            raise UnsupportedModelError(f"layer '{path}' ({cls}: {name}) computes on constants with an operator "
                                        "spikesmith does not evaluate; supported on constants: shape ops and "
                                        "elementwise arithmetic")
        result = node.meta.get("val")
        if not isinstance(result, torch.Tensor):
            raise UnsupportedModelError(f"layer '{path}' ({cls}: {name}) on constants has no traced tensor result")
        self.budget.take(result.numel() * result.element_size(), f"layer '{path}' ({cls}: {name}) on constants")
        args = torch.fx.node.map_arg(node.args, lambda a: self.values[a.name])
        with torch.no_grad():
            return node.target(*args, **node.kwargs)

    def _add(self, op, shape: tuple[int, ...]) -> _Act:
        self.ops.append(op)
        return _Act(op.name, shape)

    def _linear(self, layer: _Layer) -> _Act:
        weight, bias = self._arg(layer.node, 1), self._arg(layer.node, 2)
        w = _to_numpy(weight)
        b = _to_numpy(bias) if bias is not None else np.zeros(w.shape[0])
        return self._add(Dense(layer.name, w, b, inputs=(layer.x.op_name,), source=layer.cls), (w.shape[0],))

    def _addmm(self, layer: _Layer) -> _Act:
        """A decomposed linear: ``addmm(bias, x, weight.T)``."""
        node = layer.node
        bias, wt = self._arg(node, 0), self._arg(node, 2)
        if not (isinstance(node.args[1], torch.fx.Node) and self.values.get(node.args[1].name) is layer.x) \
                or isinstance(bias, _Act) or isinstance(wt, _Act) or node.kwargs.get("beta", 1) != 1 \
                or node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedModelError(f"unsupported matrix product in '{layer.path}' ({layer.cls}); "
                                        f"supported: {SUPPORTED}")
        w = _to_numpy(wt).T
        return self._add(Dense(layer.name, w, np.broadcast_to(_to_numpy(bias), (w.shape[0],)).copy(),
                               inputs=(layer.x.op_name,), source=layer.cls), (w.shape[0],))

    def _conv(self, layer: _Layer) -> _Act:
        node, x, path, cls = layer.node, layer.x, layer.path, layer.cls
        if len(x.shape) != 3:
            raise UnsupportedModelError(f"convolution '{path}' ({cls}) needs a (C, H, W) input, not {x.shape}")
        w, bias = _to_numpy(self._arg(node, 1)), self._arg(node, 2)
        if w.ndim != 4:
            raise UnsupportedModelError(f"'{path}' ({cls}) is not a 2-D convolution; supported: {SUPPORTED}")
        if node.target == aten.conv2d.default:
            stride, padding, dilation, groups = (self._arg(node, 3, [1, 1]), self._arg(node, 4, [0, 0]),
                                                 self._arg(node, 5, [1, 1]), self._arg(node, 6, 1))
            transposed = False
        else:
            stride, padding, dilation, transposed, _, groups = (self._arg(node, i) for i in range(3, 9))
        if isinstance(padding, str):
            raise UnsupportedModelError(f"convolution '{path}' uses padding='{padding}'; give the padding in "
                                        "pixels (e.g. padding=1 for a 3x3 kernel)")
        if transposed or groups != 1 or _pair(dilation) != (1, 1):
            raise UnsupportedModelError(
                f"convolution '{path}' ({cls}) has groups={groups}, dilation={list(_pair(dilation))}"
                f"{', transposed' if transposed else ''}; spikesmith converts groups=1, dilation 1, not transposed")
        b = _to_numpy(bias) if bias is not None else np.zeros(w.shape[0])
        op = Conv2d(layer.name, w, b, _pair(stride), _pair(padding), inputs=(x.op_name,), source=cls)
        if x.shape[0] != op.in_channels:
            raise UnsupportedModelError(f"convolution '{path}' takes {op.in_channels} channels, "
                                        f"receives {x.shape[0]}")
        out = op.output_shape(x.shape)
        if min(out[1:]) < 1:
            raise UnsupportedModelError(f"convolution '{path}' leaves no output pixels for a {x.shape} input")
        return self._add(op, out)

    def _avg_pool(self, layer: _Layer) -> _Act:
        node = layer.node
        kernel = self._arg(node, 1)
        stride = self._arg(node, 2) or kernel
        padding, ceil_mode = self._arg(node, 3, [0, 0]), self._arg(node, 4, False)
        include_pad, divisor = self._arg(node, 5, True), self._arg(node, 6, None)
        if ceil_mode or divisor is not None or (not include_pad and _pair(padding) != (0, 0)):
            raise UnsupportedModelError(f"average pooling '{layer.path}' uses ceil_mode, divisor_override or "
                                        "count_include_pad=False; spikesmith folds plain average pooling")
        op = AvgPool2d(layer.name, _pair(kernel), _pair(stride), _pair(padding), inputs=(layer.x.op_name,),
                       source=layer.cls)
        return self._add(op, op.output_shape(layer.x.shape))

    def _global_pool(self, layer: _Layer, out_size: tuple[int, int], what: str) -> _Act:
        """Average pooling to ``out_size`` as equal windows (kernel = stride = input / output): linear."""
        if len(layer.x.shape) != 3:
            raise UnsupportedModelError(f"{what} '{layer.path}' needs (C, H, W) values, not {layer.x.shape}")
        _, h, w = layer.x.shape
        oh, ow = (h if out_size[0] is None else out_size[0]), (w if out_size[1] is None else out_size[1])
        if oh < 1 or ow < 1 or h % oh or w % ow:
            raise UnsupportedModelError(
                f"{what} '{layer.path}' from {h}x{w} to {oh}x{ow}: spikesmith folds adaptive average pooling "
                f"when the output size divides the input size (windows of one size)")
        kernel = (h // oh, w // ow)
        op = AvgPool2d(layer.name, kernel, kernel, (0, 0), inputs=(layer.x.op_name,), source=layer.cls)
        return self._add(op, op.output_shape(layer.x.shape))

    def _adaptive_avg_pool(self, layer: _Layer) -> _Act:
        size = self._arg(layer.node, 1)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return self._global_pool(layer, (size[0], size[-1]), "adaptive average pooling")

    def _spatial_mean(self, layer: _Layer) -> _Act:
        """``x.mean((2, 3))`` (or ``(-2, -1)``): global average pooling, then a squeeze unless ``keepdim``."""
        rank = len(layer.x.shape) + (1 if self.batched else 0)
        dims = sorted(int(d) % rank for d in self._arg(layer.node, 1))
        keepdim = bool(self._arg(layer.node, 2, False))
        if len(layer.x.shape) != 3 or dims != [rank - 2, rank - 1]:
            raise UnsupportedModelError(f"mean '{layer.path}' over axes {dims}: spikesmith folds a mean over the "
                                        f"two spatial axes of (C, H, W) values (global average pooling)")
        pooled = self._global_pool(layer, (1, 1), "mean")
        if keepdim:
            return pooled
        shape = (layer.x.shape[0],)
        return self._add(Reshape(f"{layer.name}.squeeze", shape, inputs=(pooled.op_name,), source=layer.cls), shape)

    def _max_pool(self, layer: _Layer) -> _Act:
        node = layer.node
        kernel = _pair(self._arg(node, 1))
        stride = self._arg(node, 2) or kernel
        padding, dilation = _pair(self._arg(node, 3, 0)), _pair(self._arg(node, 4, 1))
        op = MaxPool2d(layer.name, kernel, _pair(stride), padding, dilation, bool(self._arg(node, 5, False)),
                       inputs=(layer.x.op_name,), source=layer.cls)
        if len(layer.x.shape) != 3:
            raise UnsupportedModelError(f"max pooling '{layer.path}' needs (C, H, W) values, not {layer.x.shape}")
        geometry = op.pool_geometry(layer.x.shape)
        if not geometry.valid():
            raise UnsupportedModelError(f"max pooling '{layer.path}' has no valid output for a {layer.x.shape} input")
        act = self._add(op, geometry.out_shape)
        if node.target == aten.max_pool2d_with_indices.default:
            return _TupleAct(act.op_name, act.shape, f"max pooling '{layer.path}' ({layer.cls}) returns indices")
        return act

    def _residual_add(self, layer: _Layer, acts: list[_Act]) -> _Act:
        """``a + b`` of two activations of one shape (a residual join), ``alpha`` 1."""
        a, b = acts
        if a.shape != b.shape or layer.node.kwargs.get("alpha", 1) != 1 or len(layer.node.args) > 2:
            raise UnsupportedModelError(f"addition '{layer.path}' ({layer.cls}) of a {list(a.shape)} and a "
                                        f"{list(b.shape)} value: spikesmith converts the plain sum of two equal shapes")
        return self._add(Add(layer.name, inputs=(a.op_name, b.op_name), source=layer.cls), a.shape)

    def _relu(self, layer: _Layer) -> _Act:
        return self._add(ReLU(layer.name, inputs=(layer.x.op_name,), source=layer.cls), layer.x.shape)

    def _spike_code(self, layer: _Layer) -> _Act:
        """``spikesmith::spike_code(x, full_scale, T)``: a ReLU with its T-bit codes' full scale given (one,
        or one per value: a fine-tuned residual network's relays keep their source's)."""
        full_scale, timesteps = self._arg(layer.node, 1), self._arg(layer.node, 2)
        value = _to_numpy(full_scale).ravel() if isinstance(full_scale, torch.Tensor) else np.array([np.nan])
        size = int(np.prod(layer.x.shape))
        if len(value) not in (1, size) or not np.all(np.isfinite(value)) or not np.all(value > 0):
            raise UnsupportedModelError(f"spike code '{layer.path}' ({layer.cls}) needs positive, finite full "
                                        f"scales (a parameter or constant: one, or one per value), not "
                                        f"{value.tolist()[:4]}{' ...' if len(value) > 4 else ''}")
        if not isinstance(timesteps, int) or not 1 <= timesteps <= MAX_TIMESTEPS:
            raise UnsupportedModelError(f"spike code '{layer.path}' ({layer.cls}) has T={timesteps!r}; "
                                        f"spikesmith converts T from 1 to {MAX_TIMESTEPS}")
        scale = float(value[0]) if len(value) == 1 else value
        return self._add(SpikeCode(layer.name, scale, timesteps, inputs=(layer.x.op_name,), source=layer.cls),
                         layer.x.shape)

    def _batch_norm(self, layer: _Layer) -> _Act:
        node = layer.node
        weight, bias, mean, var = (self._arg(node, i) for i in range(1, 5))
        if node.target == aten.batch_norm.default:
            training, eps = self._arg(node, 5), self._arg(node, 7)
            if training:
                raise UnsupportedModelError(f"batch norm '{layer.path}' was exported in training mode; call "
                                            "model.eval() before torch.export")
        else:
            eps = self._arg(node, 6)
        mean, var = _to_numpy(mean), _to_numpy(var)
        gamma = _to_numpy(weight) if weight is not None else np.ones_like(mean)
        beta = _to_numpy(bias) if bias is not None else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + eps)
        self.ops.append(BatchNorm(layer.name, scale, beta - mean * scale, inputs=(layer.x.op_name,), source=layer.cls))
        kind = _TupleAct if node.target != aten.batch_norm.default else _Act
        return kind(layer.name, layer.x.shape)

    def _dropout(self, layer: _Layer) -> _Act:
        if self._arg(layer.node, 2):
            raise UnsupportedModelError(
                f"dropout '{layer.path}' was exported in training mode; call model.eval() before torch.export")
        return self._identity(layer)

    def _identity(self, layer: _Layer) -> _Act:
        return self._add(Identity(layer.name, inputs=(layer.x.op_name,), source=layer.cls), layer.x.shape)

    def _shapes(self, layer: _Layer) -> tuple[tuple, tuple]:
        """The op's input and output shapes as traced, batch axis included (a symbol if the batch is dynamic)."""
        return tuple(layer.node.args[0].meta["val"].shape), tuple(layer.node.meta["val"].shape)

    def _reinterpreted(self, layer: _Layer, full_in: tuple, out: tuple) -> _Act:
        """The same values in the same order, seen as ``out`` (traced shape): a Reshape op."""
        where = f"{layer.cls} '{layer.path}' ({_aten_name(layer.node)})"
        if self.batched:
            if not out or str(out[0]) != str(full_in[0]):
                raise UnsupportedModelError(f"{where} merges or moves the batch axis (to {list(out)})")
            out = out[1:]
        if not all(isinstance(d, int) for d in out):
            raise UnsupportedModelError(f"{where} gives a shape that depends on the batch size ({list(out)})")
        return self._add(Reshape(layer.name, out, inputs=(layer.x.op_name,), source=layer.cls), out)

    def _reshape(self, layer: _Layer) -> _Act:
        """view, reshape, flatten, unflatten, squeeze, unsqueeze: no-ops on the row-major values."""
        op = _aten_name(layer.node)
        full_in, out = self._shapes(layer)
        if self.batched and op in SQUEEZE_OPS:
            check_batch_axis(op, layer.node.args[1:], len(full_in), len(out),
                             f"{layer.cls} '{layer.path}' ({op})")
        return self._reinterpreted(layer, full_in, out)

    def _permute(self, layer: _Layer) -> _Act:
        """permute / transpose: a no-op when only size-1 axes move, else refused with its name."""
        op = _aten_name(layer.node)
        full_in, out = self._shapes(layer)
        order = permutation(op, layer.node.args[1:], len(full_in))
        sizes = [d if isinstance(d, int) else 0 for d in full_in]         # a symbolic batch: not of size one
        if not keeps_order(sizes, order) or (self.batched and order[0] != 0):
            raise UnsupportedModelError(
                f"{layer.cls} '{layer.path}' ({op} to axes {list(order)}) reorders the values; spikesmith "
                f"converts the shape ops that keep the row-major order (view, reshape, flatten, unflatten, "
                f"squeeze, unsqueeze, and permutes of size-1 axes)")
        return self._reinterpreted(layer, full_in, out)


def _operator_name(node: torch.fx.Node) -> str:
    """The name :mod:`.operators` lists ``node``'s target under: ``aten.conv2d.default``, ``_operator.getitem``."""
    if node.target is operator.getitem:
        return operators.GETITEM
    return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else repr(node.target)


def _aten_name(node: torch.fx.Node) -> str:
    """``view.default`` for ``aten.view.default``."""
    return str(node.target).replace("aten::", "").replace("aten.", "")


def _unique(path: str, ops: list) -> str:
    """A unique op name based on the module path (a module called twice gets a suffix)."""
    taken = {op.name for op in ops}
    if path not in taken:
        return path
    i = 1
    while f"{path}#{i}" in taken:
        i += 1
    return f"{path}#{i}"
