"""The network file: exact round trip, fingerprint, and a clear error for every defect."""

import io
import json
import re
import zipfile

import numpy as np
import pytest

from spikesmith.errors import NetFileError
from spikesmith.sim import golden
from spikesmith.gen.netfile import fingerprint, load_network, network_to_bytes, save_network
from spikesmith.contract.network import FloatShadow
from spikesmith.resources import MemoryBudget

from bombs import add_zero_array, pixel_bomb, write
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
    with pytest.raises(NetFileError, match=r"the network loaded .* would need [\d.]+ GiB of memory; the budget"):
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
    assert_one_line_error(proc, "would need", "GiB of memory; the budget for reading it is")


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


# ---------------------------------------------------------------------------- deny by default (issue #33)

@pytest.mark.parametrize("name", ["junk.npy", "layer7.bias.npy", "Layer0.Bias.npy", "layer0.bias", "../layer0.bias.npy"])
def test_a_member_the_header_does_not_name_is_refused_by_name_unread(tmp_path, net, name):
    """A valid 64 MiB array of zeros (300 KB on disk) under a name the format does not define: refused by
    its name before anything is decompressed (it used to be read, and the network loaded)."""
    path = write(tmp_path / "extra.net.npz", add_zero_array(network_to_bytes(net), name, 64 << 20))
    assert path.stat().st_size < 400_000
    with pytest.raises(NetFileError, match=f"member {re.escape(repr(name))} is not an array the header's layers name"):
        load_network(path)


def test_an_array_larger_than_its_declared_sizes_is_refused_unread(tmp_path, net):
    """A member whose zip header declares more bytes than its shape in the header allows (8 a value and a
    4 KiB .npy header): refused from the zip directory, before it is decompressed."""
    def pad(name, payload):
        return name, payload + bytes(64 << 10) if name == "layer1.bias.npy" else payload

    path = write(tmp_path / "padded.net.npz", _rewrite(network_to_bytes(net), pad))
    with pytest.raises(NetFileError, match=r"member 'layer1.bias.npy' declares [\d,]+ bytes; what the header "
                                           r"declares allows at most 4,128"):
        load_network(path)


def test_a_member_listed_twice_is_refused(tmp_path, net):
    """Two members of one name: readers disagree on which one counts; refused."""
    data = network_to_bytes(net)
    duplicate = zipfile.ZipFile(io.BytesIO(data)).read("layer0.bias.npy")
    out = io.BytesIO(data)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(out, "a") as archive:
        archive.writestr("layer0.bias.npy", duplicate)
    path = write(tmp_path / "twice.net.npz", out.getvalue())
    with pytest.raises(NetFileError, match="member 'layer0.bias.npy' is listed twice"):
        load_network(path)


class _CountingBudget(MemoryBudget):
    """A budget that records what it was asked for."""

    def __init__(self):
        super().__init__(1 << 40)
        self.taken: dict[str, int] = {}

    def take(self, nbytes, what):
        super().take(nbytes, what)
        self.taken[what.split(": ", 1)[1]] = int(nbytes)


def test_every_member_is_counted_at_its_declared_size_before_it_is_read(tmp_path, net):
    """Each member's bytes and array (twice its zip header's size), the directory and the loaded network."""
    path = save_network(net, tmp_path / "n.net.npz")
    budget = _CountingBudget()
    load_network(path, budget=budget)
    sizes = {info.filename: info.file_size for info in zipfile.ZipFile(path).infolist()}
    assert {what: n for what, n in budget.taken.items() if what.startswith("member")} == {
        f"member {name!r}": 2 * size for name, size in sizes.items()}
    assert budget.taken["its zip directory"] >= 1024 * len(sizes)
    assert budget.taken["the network loaded (weights in use, per-neuron arrays, bound checks)"] >= 32 * (6 * 5 + 5 * 4 + 4 * 3)


def test_per_pixel_copies_of_a_convolution_are_counted_before_they_are_made(tmp_path):
    """About 2 KB: a 1x1 convolution on a 20000x20000 input (max-pooled to one value) used to repeat its bias
    and threshold over 400 million pixels (3.2 GB each, then the bounds' arrays): MemoryError. Counted first."""
    path = write(tmp_path / "pixels.net.npz", pixel_bomb(20_000))
    assert path.stat().st_size < 4_000
    with pytest.raises(NetFileError, match=r"the network loaded \(.*\) would need [\d.]+ GiB of memory"):
        load_network(path, budget=MemoryBudget(1 << 30))


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_a_header_float_that_is_not_finite_is_refused(tmp_path, net, literal):
    """``activation_threshold: inf`` used to load; JSON's non-finite literals and overflowing floats are refused."""

    def poison(name, payload):
        if name != "meta.json.npy":
            return name, payload
        meta = json.loads(np.load(io.BytesIO(payload)).tobytes())
        meta["layers"][0]["activation_threshold"] = 12345.5
        return name, _npy(np.frombuffer(json.dumps(meta).replace("12345.5", literal).encode(), dtype=np.uint8))

    path = write(tmp_path / "inf.net.npz", _rewrite(network_to_bytes(net), poison))
    with pytest.raises(NetFileError, match="unreadable header .* is not a finite number"):
        load_network(path)


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m["layers"][0].update(activation_threshold=-1.5), "activation threshold -1.5 is not a finite number above 0"),
    (lambda m: m["layers"][0].update(activation_threshold="1.5"), 'activation threshold "1.5" is not a finite number'),
    (lambda m: m["layers"][-1].update(activation_threshold=2.0), "the output layer has no activation threshold"),
    (lambda m: m["input"].update(threshold=0), "input threshold 0 is not a finite number above 0"),
    (lambda m: m["layers"][0].update(out=5.0), "output size 5.0 is not an integer"),
    (lambda m: m["layers"][0].update(fires=1), "fires is not true or false"),
    (lambda m: m["layers"][0].update(name="a\nb"), "its name is not 1 to 256 printable characters"),
    (lambda m: m.update(extra=1), "the header has the unknown key \"extra\""),
    (lambda m: m["layers"][1].update(relay=True), "layer 1 has the unknown key \"relay\""),
    (lambda m: m["input"].update(mean=0.5), "the header's input has the unknown key \"mean\""),
    (lambda m: m.pop("metadata"), "the header lacks \"metadata\""),
    (lambda m: m.update(fingerprint="md5:00"), "fingerprint is not sha256:"),
])
def test_header_keys_and_values_outside_the_format_are_refused(tmp_path, net, change, fragment):
    path = write(tmp_path / "header.net.npz", _rewrite(network_to_bytes(net), _edit_meta(change)))
    with pytest.raises(NetFileError) as info:
        load_network(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["net_path", "cnn_net_path"])
def test_files_the_current_writer_wrote_still_load(digits_demo, key, tmp_path):
    """The demo's MLP and CNN as written, and written again from what was loaded: every key and member allowed."""
    net = load_network(digits_demo[key])
    again = load_network(save_network(net, tmp_path / "again.net.npz"))
    assert fingerprint(again) == fingerprint(net) == json.loads(
        np.load(digits_demo[key])["meta.json"].tobytes())["fingerprint"]
