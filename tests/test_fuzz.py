"""Hostile input, generated: the frame decoder and the network-file, IDX and CIFAR readers raise only
their own one-line errors, never hang, and hold bounded memory (SECURITY.md)."""

import io
import json
import re
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import nir
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikesmith.contract.network import FloatShadow, SpikingNetwork
from spikesmith.contract.protocol import FRAMING, FrameDecoder, FrameType, encode_frame
from spikesmith.datasets import load_cifar10, read_idx
from spikesmith.errors import DatasetError, NetFileError, SpikesmithError
from spikesmith.gen.ir import Graph
from spikesmith.gen.netfile import load_network, network_to_bytes
from spikesmith.gen.nirgraph import import_graph, read_nir
from spikesmith.resources import MemoryBudget
from spikesmith.sim.random_networks import make_conv_network

from conftest import make_network
from datafiles import idx_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NET_BYTES = network_to_bytes(make_network(np.random.default_rng(3), [6, 5, 3], 4))
IDX_BYTES = idx_bytes(np.arange(2 * 3 * 4).reshape(2, 3, 4))


def _mutate(data: bytes, edits) -> bytes:
    """Apply (position, byte) overwrites, then cut at the last ``None`` position if there is one."""
    out = bytearray(data)
    for position, value in edits:
        if value is None:
            del out[position % (len(out) + 1):]
        elif out:
            out[position % len(out)] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.one_of(st.none(), st.integers(0, 255))), max_size=8)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=64),
                          st.builds(lambda t, s, p: encode_frame(t, s, p), st.sampled_from(list(FrameType)),
                                    st.integers(0, 0xFFFF), st.binary(max_size=40))), max_size=12), EDITS)
def test_frame_decoder_takes_anything(chunks, edits):
    """Any bytes: no exception, every frame returned was really in the stream, the buffer stays bounded."""
    decoder = FrameDecoder(max_payload=40)
    stream = _mutate(b"".join(chunks), edits)
    frames = []
    for start in range(0, len(stream), 7):
        frames += decoder.feed(stream[start:start + 7])
        assert len(decoder.buffer) <= FRAMING + 40
    for frame in frames:
        assert encode_frame(frame.type, frame.seq, frame.payload) in stream


def _load(data: bytes, name: str, reader):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        return reader(path)


@FUZZ
@given(EDITS)
def test_network_file_reader_takes_anything(edits):
    try:
        net = _load(_mutate(NET_BYTES, edits), "fuzz.net.npz", load_network)
    except NetFileError as exc:
        assert "\n" not in str(exc)
    else:
        assert net.timesteps == 4            # only an unchanged (or equivalent) file loads


@FUZZ
@given(EDITS, st.booleans())
def test_idx_reader_takes_anything(edits, compress):
    import gzip

    data = _mutate(IDX_BYTES, edits)
    try:
        array = _load(gzip.compress(data) if compress else data, "fuzz-idx3-ubyte" + (".gz" if compress else ""),
                      read_idx)
    except DatasetError as exc:
        assert "\n" not in str(exc)
    else:
        assert array.size * array.itemsize <= len(data)


@FUZZ
@given(st.binary(max_size=3 * 3073 + 10))
def test_cifar_reader_takes_anything(data):
    try:
        dataset = _load(data, "data_batch_1.bin", lambda path: load_cifar10([path]))
    except DatasetError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(dataset) == len(data) // 3073 and dataset.labels.max(initial=0) <= 255


# ---------------------------------------------------------------------------- structure-aware (issue #33)

#: What a fuzzed reader may allocate: the budget it is given (bytes).
FUZZ_BUDGET = 64 << 20
STRUCTURED = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _shadowed(net):
    """``net`` with float parameters (the float_weight and float_bias members) on its dense layers."""
    layers = tuple(type(layer)(layer.name, layer.weight, layer.bias, layer.threshold, layer.weight_bits,
                               FloatShadow(np.ones(layer.weight.shape), np.zeros(layer.out_size),
                                           1.5 if layer.fires else None))
                   for layer in net.layers)
    return type(net)(net.timesteps, net.input, layers, {"source": "fuzz"})


NETWORK_FILES = [
    network_to_bytes(_shadowed(make_network(np.random.default_rng(4), [6, 5, 3], 4))),
    network_to_bytes(make_conv_network(np.random.default_rng(5), (1, 6, 6), [(2, (3, 3), (1, 1), (1, 1))], 3, 4,
                                       pools=[((2, 2), (2, 2), (0, 0), (1, 1), False)])),
]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.sampled_from([0, 1, -1, 2 ** 31]),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
              st.sampled_from(["NaN", "Infinity", "1e999", "-0.0"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _paths(value, prefix=()):
    """Every path (a tuple of keys and indices) into a JSON value, the value itself first."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


def _edit_header(meta: dict, path: tuple, action: str, value) -> dict:
    """Replace, delete or add beside the value at ``path`` (not the root)."""
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace":
        parent[path[-1]] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"{path[-1]}_extra"] = value
    return meta


@st.composite
def mutated_networks(draw) -> bytes:
    """A real network file with its header values, member names, zip-declared sizes or bytes changed."""
    data = draw(st.sampled_from(NETWORK_FILES))
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = {info.filename: archive.read(info) for info in archive.infolist()}
    meta = json.loads(np.load(io.BytesIO(members["meta.json.npy"])).tobytes())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(meta) if p]
        meta = _edit_header(meta, draw(st.sampled_from(paths)), draw(st.sampled_from(["replace", "delete", "add"])),
                            draw(JSON_VALUES))
    text = json.dumps(meta)
    for literal in ("NaN", "Infinity", "1e999"):            # as JSON literals, not strings
        text = text.replace(f'"{literal}"', literal) if draw(st.booleans()) else text
    members["meta.json.npy"] = _npy_bytes(np.frombuffer(text.encode(), dtype=np.uint8))
    renames = draw(st.lists(st.tuples(st.sampled_from(sorted(members)), st.sampled_from(
        [str.upper, lambda n: n + ".npy", lambda n: "x" + n, lambda n: n.replace("0", "9"), lambda n: n[:-4]])),
        max_size=2))
    for name, rename in renames:
        if name in members:
            members[rename(name)] = members.pop(name)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as rebuilt:
        for name, payload in members.items():
            rebuilt.writestr(name, payload)
    data = bytearray(out.getvalue())
    for at in draw(st.lists(st.sampled_from([m.start() for m in re.finditer(b"PK\x01\x02", data)]), max_size=2)):
        data[at + 24:at + 28] = draw(st.integers(0, 0xFFFFFFFF)).to_bytes(4, "little")    # the declared size
    overwrites = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=2)
    return _mutate(bytes(data), draw(overwrites))


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _within_budget(read, path: Path):
    """``read(path, budget)`` with a :data:`FUZZ_BUDGET` budget: its result, or the one-line
    :class:`SpikesmithError` it raised; numpy's peak allocation (tracemalloc) must stay under the budget."""
    tracemalloc.start()
    try:
        try:
            result = read(path, MemoryBudget(FUZZ_BUDGET))
        except SpikesmithError as exc:
            assert "\n" not in str(exc), str(exc)
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < FUZZ_BUDGET, f"{peak / 2**20:.0f} MiB allocated with a {FUZZ_BUDGET >> 20} MiB budget"
    return result


@STRUCTURED
@given(mutated_networks())
def test_mutated_network_files_raise_only_one_line_errors_within_the_budget(data):
    """Only :class:`SpikesmithError` (any other exception fails the test) and a budget that holds."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.net.npz"
        path.write_bytes(data)
        result = _within_budget(lambda p, budget: load_network(p, budget=budget), path)
    assert isinstance(result, (NetFileError, SpikingNetwork)), result


NIR_VALUES = st.one_of(
    st.builds(lambda shape, kind: np.zeros(shape, dtype=kind),
              st.lists(st.integers(0, 5), max_size=3).map(tuple), st.sampled_from(["f8", "i4", "u1", "?", "S3", "c16"])),
    st.text(max_size=10), st.integers(-5, 1 << 40), st.floats())


@st.composite
def mutated_nir_files(draw, folder: Path) -> Path:
    """A NIR file of NIR's own constructors with datasets replaced, deleted or renamed, and links added."""
    path = folder / "fuzz.nir"
    nir.write(path, _small_graph())
    with h5py.File(path, "a") as f:
        names: list[str] = []
        f.visit(names.append)
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(sorted(names)))
            if name not in f:
                continue
            action = draw(st.sampled_from(["replace", "delete", "rename", "hard", "soft", "external"]))
            value = draw(NIR_VALUES)
            try:
                _change(f, name, action, value, folder)
            except (TypeError, ValueError, KeyError, RuntimeError, OSError):
                pass                                    # a change h5py will not make: the file stays as it was
    return path


def _change(f, name: str, action: str, value, folder: Path) -> None:
    """Replace, delete or rename the object ``name``, or add a hard, soft or external link beside it."""
    parent, leaf = name.rpartition("/")[0] or "/", name.rpartition("/")[2]
    if action == "replace" and isinstance(f[name], h5py.Dataset):
        del f[name]
        f[parent].create_dataset(leaf, data=value)
    elif action == "delete":
        del f[name]
    elif action == "rename":
        f.move(name, f"{parent}/{leaf.upper()}x")
    elif action == "hard":
        f[f"{parent}/{leaf}_again"] = f[name]
    elif action == "soft":
        f[f"{parent}/{leaf}_soft"] = h5py.SoftLink("/" + name)
    elif action == "external":
        f[f"{parent}/{leaf}_far"] = h5py.ExternalLink(str(folder / "absent.h5"), "/x")


def _small_graph():
    rng = np.random.default_rng(0)
    nodes = {"in": nir.Input(input_type={"input": np.array([1, 4, 4])}),
             "conv": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(0, 0.5, (2, 1, 3, 3)), stride=1, padding=1,
                                dilation=1, groups=1, bias=np.zeros(2)),
             "if": nir.IF(r=np.ones((2, 4, 4)), v_threshold=np.ones((2, 4, 4))),
             "flat": nir.Flatten(input_type={"input": np.array([2, 4, 4])}, start_dim=0),
             "fc": nir.Affine(weight=rng.normal(0, 0.3, (3, 32)), bias=np.zeros(3)),
             "out": nir.Output(output_type={"output": np.array([3])})}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])))


def _read_and_import(path: Path, budget: MemoryBudget):
    return import_graph(read_nir(path, budget), budget=budget)


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_nir_files_raise_only_one_line_errors_within_the_budget(data):
    with tempfile.TemporaryDirectory() as folder:
        path = data.draw(mutated_nir_files(Path(folder)))
        result = _within_budget(_read_and_import, path)
    assert isinstance(result, (SpikesmithError, Graph)), result
