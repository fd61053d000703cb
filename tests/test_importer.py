"""Import from torch: nn.Module and .pt2 files to the float IR; errors name the layer."""

import json
import pickle
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


def test_residual_branch_is_refused_clearly():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    with pytest.raises(UnsupportedModelError):
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
    graph = ir.Graph((ir.Input("input", (2, 2)), ir.Flatten("f", ("input",)),
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


def test_pickled_sample_inputs_are_refused(tmp_path, saved_model):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    bad = tmp_path / "bad.pt2"
    _tamper(saved_model, bad, {"sample_inputs/model.pt": lambda d: payload})
    with pytest.raises(ModelFileError):
        load_program(bad)
    assert not marker.exists()


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
