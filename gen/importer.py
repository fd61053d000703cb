"""Model import: a ``torch.nn.Module`` or a ``torch.export`` program file -> float IR.

Both paths go through ``torch.export``: a module is exported with one example input,
a ``.pt2`` file is loaded with every unpickling path refused (``torch.load`` is forced to
``weights_only=True``; archives holding pickled Python objects are rejected). The
importer then walks the exported ATen graph and emits typed ops of :mod:`spikesmith.gen.ir`;
error messages name the user's layer through ``nn_module_stack``.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelFileError, UnsupportedModelError
from .ir import AvgPool2d, BatchNorm, Conv2d, Dense, Flatten, Graph, Identity, Input, ReLU
from .passes import SUPPORTED

__all__ = ["export_module", "load_program", "import_program", "import_module"]

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
    from torch.export.pt2_archive import _package

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


def load_program(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` file written by ``torch.export.save``, refusing any pickled object."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with _refuse_unpickling(path), _quiet_torch_logs():
            program = torch.export.load(path)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable torch.export program (.pt2): {_first_line(exc)}") from exc
    if not isinstance(program, torch.export.ExportedProgram):
        raise ModelFileError(f"{path} does not hold an exported program")
    return program


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


class _BatchNormTuple(_Act):
    """The tuple returned by ``_native_batch_norm_legit_no_training``; item 0 is the output."""


def import_program(program: torch.export.ExportedProgram) -> Graph:
    """Walk an exported ATen graph and emit the float IR."""
    from torch.export.graph_signature import InputKind

    state = program.state_dict
    constants = program.constants
    values: dict[str, Any] = {}
    ops: list = []
    batched = True

    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            values[name] = state[spec.target] if spec.target in state else constants[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            values[name] = constants[spec.target]
        elif spec.kind == InputKind.USER_INPUT:
            if any(isinstance(v, _Act) for v in values.values()):
                raise UnsupportedModelError("the model takes several inputs; spikesmith converts one-input models")
            node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
            val = node.meta.get("val")
            if val is None or not hasattr(val, "shape"):
                raise UnsupportedModelError("the model input is not a tensor")
            shape = tuple(int(d) for d in val.shape)
            batched = len(shape) >= 2
            per_sample = shape[1:] if batched else shape
            ops.append(Input("input", per_sample))
            values[name] = _Act("input", per_sample)
        else:
            raise UnsupportedModelError(f"unsupported model input kind {spec.kind.name}")

    def act_args(node) -> list[_Act]:
        """The activation operands of ``node`` (not parameters or constants), in argument order."""
        return [values[a.name] for a in node.args
                if isinstance(a, torch.fx.Node) and isinstance(values.get(a.name), _Act)]

    def arg(node, i, default=None):
        if i < len(node.args):
            a = node.args[i]
        else:
            return default
        if isinstance(a, torch.fx.Node):
            return values[a.name]
        return a

    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if not node.users:
            continue  # dead code (e.g. shape assertions)
        path, cls = _layer_of(node)
        target = node.target
        acts = act_args(node)
        if not acts:
            # Every operand is a parameter or a constant: fold it now (e.g. a weight transpose).
            args = [values[a.name] if isinstance(a, torch.fx.Node) else a for a in node.args]
            with torch.no_grad():
                values[node.name] = target(*args, **node.kwargs)
            continue
        x = acts[0]
        name = _unique(path, ops)

        if target is operator.getitem and isinstance(x, _BatchNormTuple):
            if node.args[1] != 0:
                raise UnsupportedModelError(f"layer '{path}' ({cls}) uses batch statistics; export in eval mode")
            values[node.name] = _Act(x.op_name, x.shape)
            continue
        if len(acts) != 1:
            raise UnsupportedModelError(
                f"unsupported layer '{path}' ({cls}: {target}); supported: {SUPPORTED}")

        if target == aten.linear.default:
            weight = arg(node, 1)
            bias = arg(node, 2)
            w = _to_numpy(weight)
            b = _to_numpy(bias) if bias is not None else np.zeros(w.shape[0])
            ops.append(Dense(name, w, b, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, (w.shape[0],))
        elif target == aten.addmm.default and isinstance(node.args[1], torch.fx.Node) \
                and values.get(node.args[1].name) is x:
            # Decomposed linear: addmm(bias, x, weight.T).
            bias, wt = arg(node, 0), arg(node, 2)
            if isinstance(bias, _Act) or isinstance(wt, _Act) or node.kwargs.get("beta", 1) != 1 \
                    or node.kwargs.get("alpha", 1) != 1:
                raise UnsupportedModelError(f"unsupported matrix product in '{path}' ({cls}); supported: {SUPPORTED}")
            w = _to_numpy(wt).T
            ops.append(Dense(name, w, np.broadcast_to(_to_numpy(bias), (w.shape[0],)).copy(),
                             inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, (w.shape[0],))
        elif target in (aten.conv2d.default, aten.convolution.default):
            if len(x.shape) != 3:
                raise UnsupportedModelError(f"convolution '{path}' ({cls}) needs a (C, H, W) input, not {x.shape}")
            w = _to_numpy(arg(node, 1))
            bias = arg(node, 2)
            if w.ndim != 4:
                raise UnsupportedModelError(f"'{path}' ({cls}) is not a 2-D convolution; supported: {SUPPORTED}")
            if target == aten.conv2d.default:
                stride, padding, dilation, groups = arg(node, 3, [1, 1]), arg(node, 4, [0, 0]), \
                    arg(node, 5, [1, 1]), arg(node, 6, 1)
                transposed = False
            else:
                stride, padding, dilation, transposed, _, groups = (arg(node, i) for i in range(3, 9))
            if isinstance(padding, str):
                raise UnsupportedModelError(f"convolution '{path}' uses padding='{padding}'; give the padding in "
                                            "pixels (e.g. padding=1 for a 3x3 kernel)")
            pair = (lambda v: (int(v[0]), int(v[-1])) if isinstance(v, (list, tuple)) else (int(v), int(v)))
            if transposed or groups != 1 or pair(dilation) != (1, 1):
                raise UnsupportedModelError(
                    f"convolution '{path}' ({cls}) has groups={groups}, dilation={list(pair(dilation))}"
                    f"{', transposed' if transposed else ''}; spikesmith converts groups=1, dilation 1, not transposed")
            b = _to_numpy(bias) if bias is not None else np.zeros(w.shape[0])
            op = Conv2d(name, w, b, pair(stride), pair(padding), inputs=(x.op_name,), source=cls)
            if x.shape[0] != op.in_channels:
                raise UnsupportedModelError(f"convolution '{path}' takes {op.in_channels} channels, "
                                            f"receives {x.shape[0]}")
            out = op.output_shape(x.shape)
            if min(out[1:]) < 1:
                raise UnsupportedModelError(f"convolution '{path}' leaves no output pixels for a {x.shape} input")
            ops.append(op)
            values[node.name] = _Act(name, out)
        elif target == aten.avg_pool2d.default:
            kernel = arg(node, 1)
            stride = arg(node, 2) or kernel
            padding, ceil_mode = arg(node, 3, [0, 0]), arg(node, 4, False)
            include_pad, divisor = arg(node, 5, True), arg(node, 6, None)
            pair = (lambda v: (int(v[0]), int(v[-1])) if isinstance(v, (list, tuple)) else (int(v), int(v)))
            if ceil_mode or divisor is not None or (not include_pad and pair(padding) != (0, 0)):
                raise UnsupportedModelError(f"average pooling '{path}' uses ceil_mode, divisor_override or "
                                            "count_include_pad=False; spikesmith folds plain average pooling")
            op = AvgPool2d(name, pair(kernel), pair(stride), pair(padding), inputs=(x.op_name,), source=cls)
            ops.append(op)
            values[node.name] = _Act(name, op.output_shape(x.shape))
        elif target in (aten.max_pool2d.default, aten.max_pool2d_with_indices.default):
            raise UnsupportedModelError(
                f"max pooling '{path}' ({cls}) is not supported: spikesmith folds pooling into the next layer's "
                "weights, which only a linear pool allows; use nn.AvgPool2d (retrain), or a strided convolution")
        elif target in (aten.relu.default, aten.relu_.default):
            ops.append(ReLU(name, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, x.shape)
        elif target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            if target == aten.batch_norm.default:
                weight, bias, mean, var = (arg(node, i) for i in range(1, 5))
                training, eps = arg(node, 5), arg(node, 7)
                if training:
                    raise UnsupportedModelError(
                        f"batch norm '{path}' was exported in training mode; call model.eval() before torch.export")
            else:
                weight, bias, mean, var = (arg(node, i) for i in range(1, 5))
                eps = arg(node, 6)
            mean, var = _to_numpy(mean), _to_numpy(var)
            gamma = _to_numpy(weight) if weight is not None else np.ones_like(mean)
            beta = _to_numpy(bias) if bias is not None else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + eps)
            ops.append(BatchNorm(name, scale, beta - mean * scale, inputs=(x.op_name,), source=cls))
            cls_out = _BatchNormTuple if target != aten.batch_norm.default else _Act
            values[node.name] = cls_out(name, x.shape)
        elif target in (aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default):
            if arg(node, 2):
                raise UnsupportedModelError(
                    f"dropout '{path}' was exported in training mode; call model.eval() before torch.export")
            ops.append(Identity(name, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, x.shape)
        elif target in (aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default):
            ops.append(Identity(name, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, x.shape)
        elif target == aten.flatten.using_ints:
            start = arg(node, 1, 0)
            end = arg(node, 2, -1)
            rank = len(x.shape) + (1 if batched else 0)
            if (start % rank) != (1 if batched else 0) or (end % rank) != rank - 1:
                raise UnsupportedModelError(f"flatten '{path}' must flatten every axis but the batch axis")
            ops.append(Flatten(name, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, (int(np.prod(x.shape)),))
        elif target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            shape = list(arg(node, 1))
            size = int(np.prod(x.shape))
            per_sample = shape[1:] if batched else shape
            if [d if d != -1 else size for d in per_sample] != [size]:
                raise UnsupportedModelError(
                    f"reshape '{path}' to {shape} is not a flatten; only flattening reshapes are supported")
            ops.append(Flatten(name, inputs=(x.op_name,), source=cls))
            values[node.name] = _Act(name, (size,))
        else:
            op_name = str(target).replace("aten::", "aten.")
            raise UnsupportedModelError(
                f"unsupported layer '{path}' ({cls}: {op_name}); supported: {SUPPORTED}")

    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outs = output_node.args[0]
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    if len(outs) != 1 or not isinstance(values.get(outs[0].name), _Act):
        raise UnsupportedModelError("the model must return one tensor (the logits)")
    return Graph(tuple(ops), values[outs[0].name].op_name)


def _unique(path: str, ops: list) -> str:
    """A unique op name based on the module path (a module called twice gets a suffix)."""
    taken = {op.name for op in ops}
    if path not in taken:
        return path
    i = 1
    while f"{path}#{i}" in taken:
        i += 1
    return f"{path}#{i}"
