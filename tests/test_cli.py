"""The command line, end to end as a user runs it: results, --json, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from spikesmith.gen.importer import export_module
from spikesmith.gen.netfile import load_network

from conftest import assert_one_line_error, run_cli
from datafiles import write_mnist


def test_demo_meets_the_accuracy_targets(digits_demo):
    ann = digits_demo["ann_accuracy"]
    rows = digits_demo["timesteps"]
    assert ann > 0.93, "the digits MLP should train to > 93%"
    assert abs(rows["8"]["golden_accuracy"] - ann) <= 0.005, "T=8 must be within 0.5 points of the ANN"
    assert abs(rows["4"]["golden_accuracy"] - ann) <= 0.02, "T=4 must be within 2 points of the ANN"
    assert set(rows) == {"2", "4", "6", "8", "12", "16"}
    assert digits_demo["model_path"].is_file() and digits_demo["net_path"].is_file()


def test_demo_cnn_meets_the_accuracy_target(digits_demo):
    """The digits CNN (conv, BN, pooling) lowered to dense iLIF layers: T=8 within 0.5 points of its ANN."""
    cnn = digits_demo["cnn"]
    assert cnn["model"].startswith("CNN 64-512-256-10") and cnn["ann_accuracy"] > 0.93
    assert abs(cnn["timesteps"]["8"]["golden_accuracy"] - cnn["ann_accuracy"]) <= 0.005
    net = load_network(cnn["files"]["network"])
    assert net.input.shape == (1, 8, 8) and [layer.out_size for layer in net.layers] == [512, 256, 10]


def test_demo_human_output(tmp_path):
    proc = run_cli("demo", "--sweep", "4", "8", "--epochs", "4", "--models", "mlp")
    assert "ANN (float) test accuracy" in proc.stdout and "SNN golden (integer) accuracy at T=8" in proc.stdout
    assert "epoch 4/4" in proc.stderr, "training progress goes to stderr"


def test_convert_eval_info(tmp_path, digits_demo):
    net_path = tmp_path / "d.net.npz"
    proc = run_cli("convert", str(digits_demo["model_path"]), "--calib", "digits", "--timesteps", "6",
                   "-o", str(net_path), "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["timesteps"] == 6 and report["network"] == "64-64-32-10"
    assert [layer["fires"] for layer in report["layers"]] == [True, True, False]
    net = load_network(net_path)
    assert net.timesteps == 6 and report["fingerprint"] == json.loads(
        run_cli("info", str(net_path), "--json").stdout)["fingerprint"]

    result = json.loads(run_cli("eval", str(net_path), "--data", "digits", "--json", "-q").stdout)
    assert result["images"] == 450 and result["golden_accuracy"] > 0.9
    assert abs(result["golden_accuracy"] - digits_demo["ann_accuracy"]) < 0.02
    human = run_cli("eval", str(digits_demo["net_path"]), "-n", "100", "--range", "50:").stdout
    assert "SNN golden (integer)" in human and "100 images" in human


def _save(model, shape, path):
    torch.export.save(export_module(model, shape), path)
    return path


def test_unsupported_layer(tmp_path):
    model = _save(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 10)), (1, 8, 8),
                  tmp_path / "sig.pt2")
    out = tmp_path / "out.net.npz"
    proc = run_cli("convert", str(model), "--calib", "digits", "-o", str(out), "-q", check=False)
    assert_one_line_error(proc, "unsupported layer '2' (Sigmoid", "supported: Linear, Conv2d")
    assert not out.exists()


def test_nan_weights(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    with torch.no_grad():
        net[3].weight[2, 2] = float("nan")
    model = _save(net, (1, 8, 8), tmp_path / "nan.pt2")
    out = tmp_path / "out.net.npz"
    proc = run_cli("convert", str(model), "--calib", "digits", "-o", str(out), "-q", check=False)
    assert_one_line_error(proc, "non-finite weight", "1 NaN")
    assert not out.exists()


def test_empty_calibration_set(tmp_path, digits_demo):
    write_mnist(tmp_path / "empty", np.zeros((0, 8, 8)), np.zeros(0))
    out = tmp_path / "out.net.npz"
    proc = run_cli("convert", str(digits_demo["model_path"]), "--calib", str(tmp_path / "empty"),
                   "-o", str(out), "-q", check=False)
    assert_one_line_error(proc, "calibration set is empty")
    assert not out.exists()


def test_wrong_input_shape(tmp_path, digits_demo):
    write_mnist(tmp_path / "mnist", np.zeros((5, 28, 28)), np.zeros(5))
    out = tmp_path / "out.net.npz"
    proc = run_cli("convert", str(digits_demo["model_path"]), "--calib", str(tmp_path / "mnist"),
                   "-o", str(out), "-q", check=False)
    assert_one_line_error(proc, "shape 1x28x28 (784 values)", "takes 1x8x8 (64 values)")
    assert not out.exists()
    proc = run_cli("eval", str(digits_demo["net_path"]), "--data", str(tmp_path / "mnist"), "-q", check=False)
    assert_one_line_error(proc, "784 values")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_net_file(tmp_path, digits_demo, damage):
    data = digits_demo["net_path"].read_bytes()
    bad = tmp_path / "bad.net.npz"
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"PK\x03\x04" + b"\xff" * 64)
    for command in (["eval", str(bad), "-q"], ["info", str(bad)]):
        assert_one_line_error(run_cli(*command, check=False), "not a valid spikesmith network")


def test_corrupt_model_file_and_missing_output_folder(tmp_path, digits_demo):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"nonsense")
    proc = run_cli("convert", str(junk), "--calib", "digits", "-o", str(tmp_path / "o.net.npz"), "-q", check=False)
    assert_one_line_error(proc, "not a readable torch.export program")
    proc = run_cli("convert", str(digits_demo["model_path"]), "--calib", "digits",
                   "-o", str(tmp_path / "no" / "such" / "o.net.npz"), "-q", check=False)
    assert_one_line_error(proc, "does not exist")


def test_info_shows_the_convolutions(digits_demo):
    report = json.loads(run_cli("info", str(digits_demo["cnn_net_path"]), "--json").stdout)
    assert [layer["kind"] for layer in report["layers"]] == ["conv", "conv", "dense"]
    assert report["layers"][1]["convolution"] == {"in_shape": [8, 8, 8], "out_channels": 16, "kernel": [6, 6],
                                                  "stride": [2, 2], "padding": [2, 2]}
    human = run_cli("info", str(digits_demo["cnn_net_path"])).stdout
    assert "conv 1x8x8 -> 8x8x8, kernel 3x3 stride 1,1 padding 1,1" in human
    assert "conv 8x8x8 -> 16x4x4, kernel 6x6 stride 2,2 padding 2,2" in human
