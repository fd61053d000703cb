"""Import from torch: nn.Module and .pt2 files to the float IR; errors name the layer."""

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from spikesmith.errors import ConversionError, ModelFileError, UnsupportedModelError
from spikesmith.gen import ir
from spikesmith.gen.importer import export_module, import_module, import_program, load_program
from spikesmith.gen.passes import lower


def _mlp_with_everything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3),
                          nn.Identity(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    bn = model[2]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_lowered_network_computes_what_torch_computes():
    model = _mlp_with_everything()
    network = lower(import_module(model, (1, 4, 4)))
    assert [layer.relu for layer in network.layers] == [True, True, False]
    x = torch.rand(20, 1, 4, 4)
    with torch.no_grad():
        expected = model(x).numpy()
    got = network.forward(x.numpy())[-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_is_folded_and_dropout_dropped():
    graph = import_module(_mlp_with_everything(), (1, 4, 4))
    kinds = [type(op).__name__ for op in graph.ops]
    assert "BatchNorm" in kinds and "Identity" in kinds
    network = lower(graph)
    assert len(network.layers) == 3 and network.input_shape == (1, 4, 4)


def test_decomposed_program_imports_the_same():
    model = _mlp_with_everything()
    program = export_module(model, (1, 4, 4)).run_decompositions()
    network = lower(import_program(program))
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(network.forward(x.numpy())[-1], model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_pt2_round_trip(tmp_path):
    model = _mlp_with_everything()
    path = tmp_path / "m.pt2"
    torch.export.save(export_module(model, (1, 4, 4)), path)
    network = lower(import_program(load_program(path)))
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(network.forward(x.numpy())[-1], model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer, name", [(nn.Sigmoid(), "Sigmoid"), (nn.Tanh(), "Tanh"),
                                         (nn.LeakyReLU(), "LeakyReLU")])
def test_unsupported_layer_is_named(layer, name):
    model = nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match=rf"'1' \({name}.*supported: Linear, Conv2d"):
        lower(import_module(model, (4,)))


def test_consecutive_linear_layers_merge_into_one():
    """No ReLU between two Linear layers: one affine map, W2 W1 and W2 b1 + b2 (exact)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    network = lower(import_module(model, (4,)))
    assert len(network.layers) == 1 and network.layers[0].weight.shape == (2, 4)
    x = torch.rand(6, 4)
    with torch.no_grad():
        np.testing.assert_allclose(network.forward(x.numpy())[-1], model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_batchnorm_not_after_linear_is_refused():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="does not directly follow a Linear or Conv2d layer"):
        lower(import_module(model.eval(), (4,)))


def test_a_residual_add_with_no_relu_after_it_is_refused_clearly():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    with pytest.raises(UnsupportedModelError, match="residual add 'add' is not followed by a ReLU"):
        lower(import_module(Residual(), (4,)))


def test_non_finite_weights_are_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
        model[0].bias[1] = float("inf")
    with pytest.raises(ConversionError, match=r"'0' \(Linear\) has non-finite bias values \(0 NaN, 1 inf\)"):
        lower(import_module(model, (4,)))


def test_final_relu_is_dropped():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU())
    network = lower(import_module(model, (4,)))
    assert [layer.relu for layer in network.layers] == [True, False]


def test_flatten_ir_only_chain():
    graph = ir.Graph((ir.Input("input", (2, 2)), ir.Reshape("f", (4,), ("input",)),
                      ir.Dense("d", np.ones((3, 4)), np.zeros(3), ("f",))), "d")
    network = lower(graph)
    assert network.input_size == 4 and len(network.layers) == 1


# ------------------------------------------------------------------ model files: never unpickle

class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tamper(src, dst, replace):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new(data)
            zout.writestr(item.filename, data)


@pytest.fixture
def saved_model(tmp_path):
    path = tmp_path / "good.pt2"
    torch.export.save(export_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,)), path)
    return path


def test_pickled_weight_is_refused_and_never_executed(tmp_path, saved_model):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    def use_pickle(data):
        config = json.loads(data)
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        return json.dumps(config).encode()

    bad = tmp_path / "bad.pt2"
    _tamper(saved_model, bad, {"model_weights_config.json": use_pickle, "weights/weight_0": lambda d: payload})
    with pytest.raises(ModelFileError, match="unpickle"):
        load_program(bad)
    assert not marker.exists()


def test_pickled_sample_inputs_are_never_read(tmp_path, saved_model):
    """torch unpickles sample inputs (weights_only=False as a fallback); spikesmith hands it none."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    bad = tmp_path / "bad.pt2"
    _tamper(saved_model, bad, {"sample_inputs/model.pt": lambda d: payload})
    program = load_program(bad)
    assert not marker.exists() and program.example_inputs is None


def test_corrupt_and_missing_model_files(tmp_path, saved_model):
    with pytest.raises(ModelFileError, match="not found"):
        load_program(tmp_path / "nope.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelFileError, match="not a readable torch.export program"):
        load_program(junk)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(saved_model.read_bytes()[:2000])
    with pytest.raises(ModelFileError):
        load_program(truncated)


def _dynamic_batch_model(path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    torch.export.save(torch.export.export(model, (torch.zeros(4, 1, 2, 2),), dynamic_shapes=({0: batch},)), path)
    return path


def _plant_expressions(document, payload: str) -> int:
    """Every ``expr_str`` becomes ``payload``; a static program's first size becomes one. Returns how many."""
    planted, stack = 0, [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                item["expr_str"] = payload
                planted += 1
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if not planted:
        sizes = document["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": payload, "hint": {"as_int": sizes[0]["as_int"]}}}
        planted = 1
    return planted


@pytest.mark.parametrize("kind", ["static", "dynamic batch"])
@pytest.mark.parametrize("payload", ["__import__('pathlib').Path({marker!r}).touch()",
                                     "Symbol('s0') + __import__('pathlib').Path({marker!r}).touch()",
                                     "s0.__class__.__init__.__globals__"])
def test_symbolic_sizes_that_are_code_are_refused_before_torch_evaluates_them(tmp_path, saved_model, kind, payload):
    """torch.export.load hands model.json's expr_str strings to sympy.sympify, which evaluates them."""
    marker = tmp_path / "pwned"
    source = saved_model if kind == "static" else _dynamic_batch_model(tmp_path / "dynamic.pt2")
    counts = []

    def plant(data):
        document = json.loads(data)
        counts.append(_plant_expressions(document, payload.format(marker=str(marker))))
        return json.dumps(document).encode()

    bad = tmp_path / "bad.pt2"
    _tamper(source, bad, {"models/model.json": plant})
    assert counts and counts[0] >= 1
    with pytest.raises(ModelFileError, match="not plain arithmetic"):
        load_program(bad)
    assert not marker.exists()


def test_a_dynamic_batch_export_still_loads(tmp_path):
    graph = import_program(load_program(_dynamic_batch_model(tmp_path / "dynamic.pt2")))
    assert [type(op).__name__ for op in graph.ops][:2] == ["Input", "Reshape"]


def test_convert_refuses_a_code_payload_in_one_line(tmp_path, saved_model):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt2"
    _tamper(saved_model, bad, {"models/model.json": lambda d: json.dumps(_planted(json.loads(d), marker)).encode()})
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", "convert", str(bad), "--calib", "digits",
                           "-o", str(tmp_path / "x.net.npz"), "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not plain arithmetic" in proc.stderr
    assert not marker.exists() and not (tmp_path / "x.net.npz").exists()


def _planted(document, marker):
    _plant_expressions(document, f"__import__('os').system('touch {marker}')")
    return document
