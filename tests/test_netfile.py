"""The network file: exact round trip, fingerprint, and a clear error for every defect."""

import io
import json
import zipfile

import numpy as np
import pytest

from spikesmith.errors import NetFileError
from spikesmith.sim import golden
from spikesmith.gen.netfile import fingerprint, load_network, network_to_bytes, save_network
from spikesmith.contract.network import FloatShadow

from conftest import make_network


@pytest.fixture
def net():
    base = make_network(np.random.default_rng(5), [6, 5, 4, 3], timesteps=6)
    layers = tuple(type(layer)(layer.name, layer.weight, layer.bias, layer.threshold, layer.weight_bits,
                               FloatShadow(np.ones(layer.weight.shape), np.zeros(layer.out_size),
                                           1.5 if layer.fires else None))
                   for layer in base.layers)
    return type(base)(base.timesteps, base.input, layers, {"source": "test"})


def test_round_trip_is_exact(tmp_path, net):
    path = save_network(net, tmp_path / "n.net.npz")
    back = load_network(path)
    assert back.timesteps == net.timesteps and back.input == net.input
    for a, b in zip(net.layers, back.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.threshold is None and b.threshold is None) or np.array_equal(a.threshold, b.threshold)
        assert b.shadow.activation_threshold == a.shadow.activation_threshold
    assert fingerprint(back) == fingerprint(net)
    assert back.metadata == {"source": "test"}


def test_fingerprint_changes_with_any_integer(net):
    layer = net.layers[1]
    weight = layer.weight.copy()
    weight[0, 0] += 1
    changed = type(net)(net.timesteps, net.input,
                        (net.layers[0], type(layer)(layer.name, weight, layer.bias, layer.threshold,
                                                    layer.weight_bits, layer.shadow), net.layers[2]))
    assert fingerprint(changed) != fingerprint(net)


def _rewrite(data: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            name, payload = edit(item.filename, src.read(item.filename))
            if name is not None:
                dst.writestr(name, payload)
    return out.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _edit_meta(change):
    def edit(name, payload):
        if name == "meta.json.npy":
            meta = json.loads(np.load(io.BytesIO(payload)).tobytes())
            change(meta)
            return name, _npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        return name, payload
    return edit


DEFECTS = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x00" * 100,
    "empty": lambda data: b"",
    "no header": lambda data: _rewrite(data, lambda n, p: (None, p) if n == "meta.json.npy" else (n, p)),
    "missing array": lambda data: _rewrite(data, lambda n, p: (None, p) if n == "layer1.bias.npy" else (n, p)),
    "altered weight": lambda data: _rewrite(
        data, lambda n, p: (n, _npy(np.load(io.BytesIO(p)) + 1)) if n == "layer0.weight.npy" else (n, p)),
    "future version": lambda data: _rewrite(data, _edit_meta(lambda m: m.update(version=99))),
    "wrong format": lambda data: _rewrite(data, _edit_meta(lambda m: m.update(format="other"))),
    "bad timesteps": lambda data: _rewrite(data, _edit_meta(lambda m: m.update(timesteps=40))),
    "object array": lambda data: _rewrite(
        data, lambda n, p: (n, _npy(np.array([object()], dtype=object))) if n == "layer0.bias.npy" else (n, p)),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defective_files_give_one_clear_error(tmp_path, net, defect):
    path = tmp_path / "bad.net.npz"
    try:
        path.write_bytes(DEFECTS[defect](network_to_bytes(net)))
    except ValueError:  # np.save refuses nothing here, but keep the fixture honest
        pytest.fail("could not build the defective file")
    with pytest.raises(NetFileError) as info:
        load_network(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path):
    with pytest.raises(NetFileError, match="not found"):
        load_network(tmp_path / "absent.net.npz")


def test_failed_save_leaves_no_file(tmp_path, net, monkeypatch):
    import spikesmith.gen.netfile as netfile

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(netfile.os, "replace", boom)
    with pytest.raises(OSError):
        save_network(net, tmp_path / "n.net.npz")
    assert list(tmp_path.iterdir()) == []


def _claiming_file(tmp_path, inputs: int):
    """A real dense network file whose header then claims ``inputs`` inputs (its arrays stay small)."""
    net = make_network(np.random.default_rng(3), [6, 40, 3], 4)

    def claim(meta):
        meta["input"]["shape"] = [inputs]
        meta["layers"][0]["in"] = inputs
        meta["layers"][0]["out"] = meta["layers"][1]["in"] = inputs
        return meta

    path = tmp_path / "claims.net.npz"
    path.write_bytes(_rewrite(network_to_bytes(net), _edit_meta(claim)))
    return path


def test_a_tiny_file_declaring_a_huge_network_is_refused_before_allocating(tmp_path):
    """A few KB whose header claims a 200,000 x 200,000 layer: refused by its declared size, nothing read."""
    path = _claiming_file(tmp_path, 200_000)
    assert path.stat().st_size < 20_000
    with pytest.raises(NetFileError, match=r"needs about [\d.]+ GiB of memory; this machine has"):
        load_network(path)


def test_a_convolution_is_loaded_as_its_kernel(tmp_path):
    """A 16 -> 32 channel 3x3 convolution on 64x64 maps: 4,608 kernel weights, not a 131,072 x 65,536 matrix."""
    from spikesmith.contract.network import ConvGeometry, ConvSpec, DenseLayer, InputEncoding, SpikingNetwork

    geometry = ConvGeometry((16, 64, 64), 32, (3, 3), (1, 1), (1, 1))
    kernel = np.random.default_rng(0).integers(-7, 8, geometry.kernel_shape)
    conv = DenseLayer("conv", None, np.zeros(32 * 64 * 64, np.int64), np.full(32 * 64 * 64, 50), 4,
                      conv=ConvSpec(geometry, kernel))
    out = DenseLayer("out", np.ones((2, 32 * 64 * 64), np.int64), np.zeros(2, np.int64), None, 4)
    net = SpikingNetwork(2, InputEncoding((16, 64, 64), 1.0), (conv, out))
    loaded = load_network(save_network(net, tmp_path / "wide.net.npz"))
    assert loaded.layers[0].weight is None and np.array_equal(loaded.layers[0].conv.kernel, kernel)
    codes = np.random.default_rng(1).integers(0, 4, (2, 16 * 64 * 64))
    assert np.array_equal(golden.run(loaded, codes).logits, golden.run(net, codes).logits)


def test_info_says_so_in_one_line(tmp_path):
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("info", str(_claiming_file(tmp_path, 200_000)), check=False)
    assert_one_line_error(proc, "needs about", "GiB of memory")


@pytest.mark.parametrize("change,fragment", [
    (lambda meta: meta.update(timesteps=8.5), "timesteps 8.5 is not an integer from 1 to 16"),
    (lambda meta: meta.update(timesteps=True), "timesteps true is not an integer"),
    (lambda meta: meta.update(version="1"), 'has format version "1"; this spikesmith reads version 1 (an integer)'),
])
def test_header_values_of_the_wrong_type_are_refused(tmp_path, net, change, fragment):
    path = tmp_path / "typed.net.npz"
    path.write_bytes(_rewrite(network_to_bytes(net), _edit_meta(change)))
    with pytest.raises(NetFileError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_network(path)


def test_nan_float_weights_are_refused(tmp_path, net):
    def poison(name, payload):
        if name == "layer0.float_weight.npy":
            array = np.load(io.BytesIO(payload))
            array[0, 0] = np.nan
            return name, _npy(array)
        return name, payload

    path = tmp_path / "nan.net.npz"
    path.write_bytes(_rewrite(network_to_bytes(net), poison))
    with pytest.raises(NetFileError, match="NaN or infinite float weights"):
        load_network(path)
