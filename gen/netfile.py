"""The converted-network file: a ``.npz`` archive of plain arrays plus a JSON header.

Format (version 1), documented in docs/netfile.md:

- ``meta.json``: a uint8 array holding UTF-8 JSON: ``{"format": "spikesmith-net", "version": 1,
  "timesteps": T, "input": {"shape": [...], "threshold": lambda_0}, "layers": [{"name", "kind",
  "in", "out", "fires", "weight_bits", "activation_threshold"}], "metadata": {...},
  "fingerprint": "sha256:..."}``
- per layer i: ``layer{i}.weight`` (int8/int16, (out, in)), ``layer{i}.bias`` (int64, (out,)),
  ``layer{i}.threshold`` (int64, (out,), firing layers only), ``layer{i}.float_weight`` and
  ``layer{i}.float_bias`` (float64, the ANN parameters after batch-norm folding), and for a layer
  with relay channels (residual blocks) ``layer{i}.activation_thresholds`` (float64, one full
  scale per output neuron or channel; the header holds the largest).
- a convolution layer (``"kind": "conv"``, with ``"convolution"``: its geometry) stores its kernel
  instead, ``(C_out, C_in, kh, kw)``, and one bias, threshold and float bias per output channel.

Loading never unpickles (``allow_pickle=False``) and checks every shape, dtype and range;
any defect is a :class:`~spikesmith.errors.NetFileError`. Saving writes a temporary file and
renames it, so a failed save leaves no partial file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import NetFileError, SpikesmithError
from ..resources import MemoryBudget
from ..fileio import write_atomic
from ..contract.bounds import MAX_WIDTH, layer_bounds
from ..contract.network import (ConvGeometry, ConvSpec, DenseLayer, FloatShadow, InputEncoding, PoolGeometry,
                                SpikingNetwork, fingerprint, stored_arrays)

__all__ = ["FORMAT", "VERSION", "save_network", "load_network", "fingerprint", "network_to_bytes"]

FORMAT = "spikesmith-net"
VERSION = 1


def _weight_dtype(bits: int):
    return np.int8 if bits <= 8 else np.int16


def network_to_bytes(net: SpikingNetwork) -> bytes:
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "timesteps": net.timesteps,
        "input": {"shape": list(net.input.shape), "threshold": float(net.input.threshold)},
        "layers": [],
        "metadata": net.metadata,
        "fingerprint": fingerprint(net),
    }
    arrays = {}
    for i, layer in enumerate(net.layers):
        meta["layers"].append({
            "name": layer.name, "kind": layer.kind, "in": layer.in_size, "out": layer.out_size,
            "fires": layer.fires, "weight_bits": layer.weight_bits,
            "activation_threshold": layer.shadow.full_scale if layer.shadow else None,
            **({"convolution": layer.conv.geometry.as_dict()} if layer.conv is not None else {}),
            **({"max_pool": layer.pool.as_dict()} if layer.pool is not None else {}),
        })
        if layer.shadow is not None and isinstance(layer.shadow.activation_threshold, np.ndarray):
            per_neuron = layer.shadow.activation_threshold      # relay channels keep their source's full scale
            step = layer.conv.geometry.pixels if layer.conv is not None else 1
            arrays[f"layer{i}.activation_thresholds"] = per_neuron[::step].astype(np.float64)
        weight, bias, threshold, float_weight, float_bias = stored_arrays(layer)
        arrays[f"layer{i}.weight"] = weight.astype(_weight_dtype(layer.weight_bits))
        arrays[f"layer{i}.bias"] = bias.astype(np.int64)
        if layer.fires:
            arrays[f"layer{i}.threshold"] = threshold.astype(np.int64)
        if layer.shadow is not None:
            arrays[f"layer{i}.float_weight"] = float_weight.astype(np.float64)
            arrays[f"layer{i}.float_bias"] = float_bias.astype(np.float64)
    arrays["meta.json"] = np.frombuffer(json.dumps(meta, indent=1).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def save_network(net: SpikingNetwork, path: str | os.PathLike) -> Path:
    """Write ``net`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    data = network_to_bytes(net)
    directory = path.parent
    if not directory.is_dir():
        raise NetFileError(f"cannot write {path}: folder {directory} does not exist")
    return write_atomic(path, data)


def _require(cond: bool, path, message: str):
    if not cond:
        raise NetFileError(f"{path} is not a valid spikesmith network: {message}")


def load_network(path: str | os.PathLike, budget: MemoryBudget | None = None) -> SpikingNetwork:
    """Read and validate a network file; any defect raises :class:`NetFileError`.

    Deny by default (docs/netfile.md): the header's keys and values must be those the format
    defines, the archive may hold only the members the header's layers name, and every allocation
    the file decides (each member read, the per-neuron arrays and checks of loading) is counted
    against ``budget`` (default: a new :class:`MemoryBudget`) before it is made."""
    path = Path(path)
    if not path.is_file():
        raise NetFileError(f"network file not found: {path}")
    budget = MemoryBudget() if budget is None else budget
    try:
        entries, directory_bytes = _zip_directory_size(path)
        _require(entries <= MAX_MEMBERS and directory_bytes <= MAX_DIRECTORY_BYTES, path,
                 f"its zip directory lists {entries:,} members in {directory_bytes:,} bytes (at most {MAX_MEMBERS:,} "
                 f"members in {MAX_DIRECTORY_BYTES:,} bytes)")
        budget.take(directory_bytes + ZIP_ENTRY_BYTES * entries, f"{path}: its zip directory")
        with zipfile.ZipFile(path) as archive:
            members = _members_by_name(archive, path)
            meta = _read_header(archive, members, path, budget)
            expected = _expected_members(meta, path)
            _check_member_names(members, expected, len(meta["layers"]), path)
            budget.take(_loading_bytes(meta), f"{path}: the network loaded (weights in use, per-neuron arrays, bound checks)")
            arrays = {name: _read_array(archive, members[name + ".npy"], spec, path, budget)
                      for name, spec in expected.items() if name + ".npy" in members}
    except NetFileError:
        raise
    except SpikesmithError as exc:        # the memory budget's one line names the file part and the size
        raise NetFileError(str(exc)) from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network (corrupt or truncated: {_one_line(exc)})") from None
    except Exception as exc:  # zlib.error and friends from a damaged archive
        raise NetFileError(f"{path} is not a valid spikesmith network (corrupt or truncated: {_one_line(exc)})") from None
    try:
        net = _from_meta(meta, arrays, path)
    except NetFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network: bad header or arrays ({_one_line(exc)})") from None
    _require(meta["fingerprint"] == fingerprint(net), path, "fingerprint mismatch (contents were altered or damaged)")
    return net


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


#: The header is a few KB; a larger one is not a network file.
MAX_HEADER_BYTES = 16 << 20
#: The most layers a file may declare, and so the most members: the header and six arrays a layer.
MAX_LAYERS = 4096
MAX_MEMBERS = 1 + 6 * MAX_LAYERS
#: The largest zip directory read (bytes; a network's is a few KB).
MAX_DIRECTORY_BYTES = 4 << 20
#: Bytes of memory counted per zip directory entry (Python's ``ZipInfo`` objects).
ZIP_ENTRY_BYTES = 1024
#: The largest ``.npy`` header accepted (bytes; numpy writes 128).
NPY_HEADER_BYTES = 4096
#: The largest size a header may declare (values per layer, pixels, channels).
MAX_SIZE = (1 << 31) - 1
#: Bytes of memory per weight of the integer network in use (int64 dense matrix, float
#: shadow, and the temporaries of expanding a convolution's kernel).
BYTES_PER_WEIGHT = 32
#: Bytes of memory per neuron when loading: the per-pixel bias, threshold, float bias and full-scale
#: copies of a convolution (8 each), and the bounds check's Python integers (five lists of them and
#: two object arrays, about 210 bytes).
BYTES_PER_NEURON = 256
#: The deepest nesting of the free-form ``metadata`` object.
MAX_METADATA_DEPTH = 32

_EOCD = struct.Struct("<4s4H2LH")            # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_directory_size(path: Path) -> tuple[int, int]:
    """``(members, bytes)`` of the zip's central directory, from its end records, before ``zipfile``
    reads (and builds an object for) every entry of it. Zip64 records are read as ``zipfile`` does."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - (_EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size + _ZIP64_EOCD.size))
        f.seek(start)
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    _require(at >= 0 and len(tail) - at >= _EOCD.size, path, "not a zip archive (no end of central directory)")
    fields = _EOCD.unpack_from(tail, at)
    entries, directory = fields[4], fields[5]
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        record = locator - _ZIP64_EOCD.size
        _require(record >= 0 and tail[record:record + 4] == b"PK\x06\x06", path, "damaged zip64 end record")
        fields64 = _ZIP64_EOCD.unpack_from(tail, record)
        entries, directory = max(entries, fields64[7]), max(directory, fields64[8])
    return entries, directory


def _members_by_name(archive: zipfile.ZipFile, path) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name; a name listed twice is refused (which one would be read?)."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        _require(info.filename not in members, path, f"member {info.filename!r} is listed twice")
        members[info.filename] = info
    return members


@dataclass(frozen=True)
class _ArraySpec:
    """What one member must hold: its shape, the dtypes accepted, and whether it may be absent."""
    shape: tuple[int, ...]
    accepts: Callable[[np.dtype], bool]
    required: bool = True

    @property
    def largest_bytes(self) -> int:
        """The most bytes a ``.npy`` of this shape may hold (8-byte values and its header)."""
        return NPY_HEADER_BYTES + 8 * math.prod(self.shape)


def _signed_integers(dtype: np.dtype) -> bool:
    return dtype.kind == "i"


def _int64(dtype: np.dtype) -> bool:
    return dtype == np.int64


def _floats(dtype: np.dtype) -> bool:
    return dtype.kind == "f" and dtype.itemsize <= 8


def _bytes(dtype: np.dtype) -> bool:
    return dtype == np.uint8


def _member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, largest: int, path, budget: MemoryBudget) -> bytes:
    """A member's bytes: its declared (zip header) size must be at most ``largest`` and is counted
    against the budget (twice: the bytes, then the array made of them) before reading; it is read
    with that bound, and must hold exactly the declared size."""
    name = info.filename
    _require(info.file_size <= largest, path,
             f"member {name!r} declares {info.file_size:,} bytes; what the header declares allows at most {largest:,}")
    budget.take(2 * info.file_size, f"{path}: member {name!r}")
    with archive.open(info) as stream:
        data = stream.read(info.file_size + 1)
    _require(len(data) == info.file_size, path,
             f"member {name!r} holds {len(data):,} bytes, not the {info.file_size:,} its zip header declares")
    return data


def _npy_header(data: bytes, name: str, path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` member (format version 1 or 2)."""
    buffer = io.BytesIO(data)
    version = np.lib.format.read_magic(buffer)
    _require(version in ((1, 0), (2, 0)), path, f"member {name!r} is not a .npy array of version 1 or 2")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(buffer, max_header_size=NPY_HEADER_BYTES)
    return tuple(int(d) for d in shape), bool(fortran_order), dtype, buffer.tell()


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, spec: _ArraySpec, path,
                budget: MemoryBudget) -> np.ndarray:
    """One member as an array, its ``.npy`` header checked against ``spec`` before the array is made."""
    data = _member_bytes(archive, info, spec.largest_bytes, path, budget)
    shape, fortran_order, dtype, offset = _npy_header(data, info.filename, path)
    _require(shape == spec.shape and spec.accepts(dtype), path,
             f"member {info.filename!r} holds {dtype} values of shape {shape}; expected shape {spec.shape}")
    count = math.prod(shape)
    _require(len(data) - offset == count * dtype.itemsize, path, f"member {info.filename!r} is truncated")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return (array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)).copy()


def _read_header(archive: zipfile.ZipFile, members: dict, path, budget: MemoryBudget) -> dict:
    """The JSON header (``meta.json``: UTF-8 bytes as a uint8 vector), read within
    :data:`MAX_HEADER_BYTES` and checked against the format (:func:`_check_header`)."""
    info = members.get("meta.json.npy")
    _require(info is not None, path, "no meta.json header")
    data = _member_bytes(archive, info, MAX_HEADER_BYTES, path, budget)
    shape, _, dtype, offset = _npy_header(data, info.filename, path)
    _require(len(shape) == 1 and dtype == np.uint8 and len(data) - offset == shape[0], path,
             "its header is not a vector of UTF-8 bytes")
    try:
        meta = json.loads(data[offset:].decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise NetFileError(f"{path} is not a valid spikesmith network: its header nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network: unreadable header ({_one_line(exc)})") from None
    _check_header(meta, path)
    return meta


# ---------------------------------------------------------------------------- the header, deny by default

_TOP_KEYS = ("format", "version", "timesteps", "input", "layers", "metadata", "fingerprint")
_INPUT_KEYS = ("shape", "threshold")
_LAYER_KEYS = ("name", "kind", "in", "out", "fires", "weight_bits", "activation_threshold")
_LAYER_OPTIONAL_KEYS = ("convolution", "max_pool")
_CONV_KEYS = ("in_shape", "out_channels", "kernel", "stride", "padding")
_POOL_KEYS = ("in_shape", "kernel", "stride", "padding", "dilation", "ceil_mode")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


def _refuse_constant(name: str):
    """``json.loads`` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not numbers a header holds."""
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    """``json.loads`` hook: a float literal that overflows (``1e999``) is not a finite number either."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _shown(value) -> str:
    """A header value in one short line, for an error message."""
    if isinstance(value, str):
        return json.dumps(value[:40])
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)[:40]
    return f"a {type(value).__name__}"


def _check_keys(obj, required: tuple[str, ...], optional: tuple[str, ...], path, where: str) -> None:
    """``obj`` is an object with every ``required`` key and no key outside ``required + optional``."""
    _require(isinstance(obj, dict), path, f"{where} is not an object")
    unknown = sorted(set(obj) - set(required) - set(optional))
    _require(not unknown, path, f"{where} has the unknown key {_shown(unknown[0] if unknown else '')} (a reader "
             "refuses what it does not know)")
    missing = [key for key in required if key not in obj]
    _require(not missing, path, f"{where} lacks {_shown(missing[0] if missing else '')}")


def _integer(value, lo: int, hi: int, path, what: str) -> int:
    _require(type(value) is int and lo <= value <= hi, path,
             f"{what} {_shown(value)} is not an integer from {lo} to {hi}")
    return value


def _integers(value, count: int, lo: int, path, what: str) -> tuple[int, ...]:
    _require(isinstance(value, list) and len(value) == count, path, f"{what} is not a list of {count} integers")
    return tuple(_integer(v, lo, MAX_SIZE, path, what) for v in value)


def _positive_number(value, path, what: str) -> float:
    _require(type(value) in (int, float) and math.isfinite(value) and value > 0, path,
             f"{what} {_shown(value)} is not a finite number above 0")
    return float(value)


def _metadata_depth(value) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: a deep one must not exhaust the stack)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_METADATA_DEPTH and isinstance(item, (dict, list)):
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_header(meta, path) -> None:
    """Every key the header holds is one format version 1 defines, with a value of its type and range
    (docs/netfile.md); checked before any array is read. Returns nothing: it refuses or passes."""
    _require(isinstance(meta, dict) and meta.get("format") == FORMAT, path, "wrong format tag")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:
        raise NetFileError(f"{path} has format version {_shown(version)}; this spikesmith reads version "
                           f"{VERSION} (an integer)")
    _check_keys(meta, _TOP_KEYS, (), path, "the header")
    _integer(meta["timesteps"], 1, 16, path, "timesteps")
    _check_keys(meta["input"], _INPUT_KEYS, (), path, "the header's input")
    shape = meta["input"]["shape"]
    _require(isinstance(shape, list) and 1 <= len(shape) <= 4, path, "input shape is not a list of 1 to 4 sizes")
    size = math.prod(_integer(d, 1, MAX_SIZE, path, "input size") for d in shape)
    _require(size <= MAX_SIZE, path, f"input shape {shape} has more than {MAX_SIZE:,} values")
    _positive_number(meta["input"]["threshold"], path, "input threshold")
    _require(isinstance(meta["fingerprint"], str) and _FINGERPRINT.fullmatch(meta["fingerprint"]) is not None, path,
             "fingerprint is not sha256: and 64 hexadecimal digits")
    _require(isinstance(meta["metadata"], dict), path, "metadata must be an object")
    _require(_metadata_depth(meta["metadata"]) <= MAX_METADATA_DEPTH, path,
             f"metadata nests deeper than {MAX_METADATA_DEPTH}")
    layers = meta["layers"]
    _require(isinstance(layers, list) and 1 <= len(layers) <= MAX_LAYERS, path,
             f"layers is not a list of 1 to {MAX_LAYERS} layers")
    for i, entry in enumerate(layers):
        size = _check_layer(entry, i, size, i == len(layers) - 1, path)


def _check_layer(entry, i: int, size: int, last: bool, path) -> int:
    """Layer ``i``'s header entry, reading ``size`` values; returns its output size."""
    _check_keys(entry, _LAYER_KEYS, _LAYER_OPTIONAL_KEYS, path, f"layer {i}")
    name = entry["name"]
    _require(isinstance(name, str) and 1 <= len(name) <= 256 and name.isprintable(), path,
             f"layer {i}: its name is not 1 to 256 printable characters")
    where = f"layer {i} ({name!r})"
    _require(entry["kind"] in ("dense", "conv"), path, f"{where}: unknown kind {_shown(entry['kind'])}")
    n_in = _integer(entry["in"], 1, MAX_SIZE, path, f"{where}: input size")
    n_out = _integer(entry["out"], 1, MAX_SIZE, path, f"{where}: output size")
    _require(type(entry["fires"]) is bool, path, f"{where}: fires is not true or false")
    _require(entry["fires"] == (not last), path, f"{where}: only the last layer may be non-firing")
    _integer(entry["weight_bits"], 2, 16, path, f"{where}: weight bits")
    if entry["activation_threshold"] is not None:
        _require(entry["fires"], path, f"{where}: the output layer has no activation threshold")
        _positive_number(entry["activation_threshold"], path, f"{where}: activation threshold")
    _require(("convolution" in entry) == (entry["kind"] == "conv"), path,
             f"{where}: a convolution geometry belongs to, and only to, a conv layer")
    if "convolution" in entry:
        geometry = _check_convolution(entry["convolution"], path, where)
        _require(math.prod(geometry.in_shape) == n_in and math.prod(geometry.out_shape) == n_out, path,
                 f"{where}: convolution geometry does not match its sizes")
    if "max_pool" in entry:
        pool = _check_pool(entry["max_pool"], path, where)
        _require(pool.in_size == size and pool.out_size == n_in, path,
                 f"{where}: its max pool takes {pool.in_size} codes to {pool.out_size}, but the layer receives "
                 f"{size} and takes {n_in}")
    else:
        _require(n_in == size, path, f"{where}: takes {n_in} inputs but receives {size}")
    return n_out


def _check_convolution(value, path, where: str) -> ConvGeometry:
    _check_keys(value, _CONV_KEYS, (), path, f"{where}: convolution")
    geometry = ConvGeometry(_integers(value["in_shape"], 3, 1, path, f"{where}: convolution in_shape"),
                            _integer(value["out_channels"], 1, MAX_SIZE, path, f"{where}: out_channels"),
                            _integers(value["kernel"], 2, 1, path, f"{where}: kernel"),
                            _integers(value["stride"], 2, 1, path, f"{where}: stride"),
                            _integers(value["padding"], 2, 0, path, f"{where}: padding"))
    _require(min(geometry.out_shape) >= 1, path, f"{where}: bad convolution geometry (no output pixel)")
    return geometry


def _check_pool(value, path, where: str) -> PoolGeometry:
    _check_keys(value, _POOL_KEYS, (), path, f"{where}: max_pool")
    _require(type(value["ceil_mode"]) is bool, path, f"{where}: max-pool ceil_mode is not true or false")
    pool = PoolGeometry(_integers(value["in_shape"], 3, 1, path, f"{where}: max-pool in_shape"),
                        _integers(value["kernel"], 2, 1, path, f"{where}: max-pool kernel"),
                        _integers(value["stride"], 2, 1, path, f"{where}: max-pool stride"),
                        _integers(value["padding"], 2, 0, path, f"{where}: max-pool padding"),
                        _integers(value["dilation"], 2, 1, path, f"{where}: max-pool dilation"),
                        value["ceil_mode"])
    _require(pool.valid(), path, f"{where}: bad max-pool geometry")
    return pool


# ---------------------------------------------------------------------------- members and memory, from the header

def _expected_members(meta: dict, path) -> dict[str, _ArraySpec]:
    """Every array the header's layers name (docs/netfile.md), with its shape and accepted dtypes."""
    expected: dict[str, _ArraySpec] = {}
    for i, entry in enumerate(meta["layers"]):
        weight_shape, per_output = (entry["out"], entry["in"]), (entry["out"],)
        if "convolution" in entry:
            geometry = ConvGeometry.from_dict(entry["convolution"])
            weight_shape, per_output = geometry.kernel_shape, (geometry.out_channels,)
        expected[f"layer{i}.weight"] = _ArraySpec(weight_shape, _signed_integers)
        expected[f"layer{i}.bias"] = _ArraySpec(per_output, _int64)
        if entry["fires"]:
            expected[f"layer{i}.threshold"] = _ArraySpec(per_output, _int64)
            expected[f"layer{i}.activation_thresholds"] = _ArraySpec(per_output, _floats, required=False)
        expected[f"layer{i}.float_weight"] = _ArraySpec(weight_shape, _floats, required=False)
        expected[f"layer{i}.float_bias"] = _ArraySpec(per_output, _floats, required=False)
    return expected


def _check_member_names(members: dict, expected: dict[str, _ArraySpec], layers: int, path) -> None:
    """The archive holds the header and the arrays the header names, and nothing else."""
    allowed = {f"{name}.npy" for name in expected} | {"meta.json.npy"}
    unknown = sorted(set(members) - allowed)
    _require(not unknown, path, f"member {unknown[0] if unknown else ''!r} is not an array the header's layers name")
    for name, spec in expected.items():
        _require(not spec.required or f"{name}.npy" in members, path, f"missing array {name}")
    for i in range(layers):
        floats = {f"layer{i}.{part}.npy" in members for part in ("float_weight", "float_bias")}
        _require(len(floats) == 1, path, f"layer {i}: float_weight and float_bias come together")
        _require(f"layer{i}.activation_thresholds.npy" not in members or f"layer{i}.float_weight.npy" in members,
                 path, f"layer {i}: per-neuron activation thresholds without float arrays")


def _convolve_bytes(geometry: ConvGeometry) -> int:
    """Bytes :func:`~spikesmith.contract.network.convolve` allocates for one image (int64): its padded
    input, im2col columns, product and output."""
    c, h, w = geometry.in_shape
    (kh, kw), (ph, pw) = geometry.kernel, geometry.padding
    _, ho, wo = geometry.out_shape
    return 8 * (c * (h + 2 * ph) * (w + 2 * pw) + c * kh * kw * ho * wo + 2 * math.prod(geometry.out_shape))


def _loading_bytes(meta: dict) -> int:
    """Bytes that loading and checking the network allocates beyond its stored members, from the
    header's sizes alone: each layer's weights in use (:data:`BYTES_PER_WEIGHT`), its per-neuron
    arrays and bound checks (:data:`BYTES_PER_NEURON`: a convolution's per-channel values are
    repeated over its pixels), the bound check's two convolutions of ones, and a max pool's window
    table (``windows()``, int64, with its temporaries)."""
    total = 0
    for entry in meta["layers"]:
        n_in, n_out = entry["in"], entry["out"]
        total += BYTES_PER_NEURON * n_out
        if "convolution" in entry:
            geometry = ConvGeometry.from_dict(entry["convolution"])
            total += BYTES_PER_WEIGHT * math.prod(geometry.kernel_shape) + 8 * n_in + 2 * _convolve_bytes(geometry)
        else:
            total += BYTES_PER_WEIGHT * n_in * n_out
        if "max_pool" in entry:
            pool = PoolGeometry.from_dict(entry["max_pool"])
            total += 4 * 8 * pool.out_size * pool.kernel[0] * pool.kernel[1]
    return total


def _shadow_of(arrays: dict, i: int, entry: dict, geometry, stored_weight, stored_out: int, path,
               where: str) -> FloatShadow | None:
    """Layer ``i``'s float parameters and full scales, checked; ``None`` when the file has none."""
    if f"layer{i}.float_weight" not in arrays:
        return None
    fires = bool(entry["fires"])
    fw, fb = arrays[f"layer{i}.float_weight"], arrays[f"layer{i}.float_bias"]
    _require(fw.shape == stored_weight and fb.shape == (stored_out,) and fw.dtype.kind == "f"
             and fb.dtype.kind == "f", path, f"{where}: bad float arrays")
    _require(bool(np.isfinite(fw).all() and np.isfinite(fb).all()), path,
             f"{where}: NaN or infinite float weights")
    kernel = None
    if geometry is not None:                  # a convolution keeps its float kernel, not the dense matrix
        kernel, fw, fb = fw.astype(np.float64), None, np.repeat(fb, geometry.pixels)
    lam = entry.get("activation_threshold")
    _require(not fires or (lam is not None and lam > 0), path, f"{where}: missing activation threshold")
    lam = None if lam is None else float(lam)
    if f"layer{i}.activation_thresholds" in arrays:
        per = arrays[f"layer{i}.activation_thresholds"]
        _require(fires and per.shape == (stored_out,) and per.dtype.kind == "f"
                 and bool(np.isfinite(per).all() and (per > 0).all()), path,
                 f"{where}: bad per-neuron activation thresholds")
        lam = np.repeat(per.astype(np.float64), geometry.pixels if geometry is not None else 1)
    return FloatShadow(None if fw is None else fw.astype(np.float64), fb.astype(np.float64), lam, kernel)


def _pool_of(entry: dict, n_in: int, size: int, path, where: str) -> PoolGeometry | None:
    """The layer's max pool (``"max_pool"``), checked against the ``size`` codes it receives."""
    if "max_pool" not in entry:
        _require(n_in == size, path, f"{where}: takes {n_in} inputs but receives {size}")
        return None
    try:
        pool = PoolGeometry.from_dict(entry["max_pool"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise NetFileError(f"{path} is not a valid spikesmith network: {where}: unreadable max pool") from None
    _require(pool.valid(), path, f"{where}: bad max-pool geometry")
    _require(pool.in_size == size and pool.out_size == n_in, path,
             f"{where}: its max pool takes {pool.in_size} codes to {pool.out_size}, but the layer receives "
             f"{size} and takes {n_in}")
    return pool


def _from_meta(meta: dict, arrays: dict, path) -> SpikingNetwork:
    timesteps = meta["timesteps"]
    _require(type(timesteps) is int and 1 <= timesteps <= 16, path,
             f"timesteps {json.dumps(timesteps)} is not an integer from 1 to 16")
    shape = tuple(int(d) for d in meta["input"]["shape"])
    _require(len(shape) >= 1 and all(d >= 1 for d in shape), path, f"bad input shape {shape}")
    input_threshold = float(meta["input"]["threshold"])
    _require(np.isfinite(input_threshold) and input_threshold > 0, path, "input threshold must be positive")
    layers = []
    size = int(np.prod(shape))
    entries = meta["layers"]
    _require(isinstance(entries, list) and len(entries) >= 1, path, "no layers")
    for i, entry in enumerate(entries):
        where = f"layer {i} ('{entry.get('name')}')"
        _require(entry["kind"] in ("dense", "conv"), path, f"{where}: unknown kind {entry['kind']!r}")
        n_in, n_out, bits = int(entry["in"]), int(entry["out"]), int(entry["weight_bits"])
        fires = bool(entry["fires"])
        geometry = None
        if entry["kind"] == "conv":
            geometry = ConvGeometry.from_dict(entry["convolution"])
            _require(all(v >= 1 for v in (*geometry.in_shape, geometry.out_channels, *geometry.kernel,
                                          *geometry.stride)) and min(geometry.padding) >= 0
                     and min(geometry.out_shape) >= 1, path, f"{where}: bad convolution geometry")
            _require(fires and int(np.prod(geometry.in_shape)) == n_in
                     and int(np.prod(geometry.out_shape)) == n_out, path,
                     f"{where}: convolution geometry does not match its sizes")
        _require(fires == (i < len(entries) - 1), path, f"{where}: only the last layer may be non-firing")
        pool = _pool_of(entry, n_in, size, path, where)
        _require(2 <= bits <= 16, path, f"{where}: weight bits {bits} out of range")
        weight = arrays[f"layer{i}.weight"]
        bias = arrays[f"layer{i}.bias"]
        stored_weight, stored_out = (n_out, n_in), n_out
        if geometry is not None:
            stored_weight, stored_out = geometry.kernel_shape, geometry.out_channels
        _require(weight.shape == stored_weight and weight.dtype.kind == "i", path, f"{where}: bad weight array")
        _require(bias.shape == (stored_out,) and bias.dtype == np.int64, path, f"{where}: bad bias array")
        qmax = (1 << (bits - 1)) - 1
        _require(int(np.abs(weight.astype(np.int64)).max(initial=0)) <= qmax, path,
                 f"{where}: weights exceed {bits} bits")
        threshold = None
        if fires:
            threshold = arrays[f"layer{i}.threshold"]
            _require(threshold.shape == (stored_out,) and threshold.dtype == np.int64, path,
                     f"{where}: bad threshold array")
            _require(bool(np.all(threshold >= 1)), path, f"{where}: thresholds must be >= 1")
        shadow = _shadow_of(arrays, i, entry, geometry, stored_weight, stored_out, path, where)
        conv = None
        if geometry is not None:
            conv = ConvSpec(geometry, weight.astype(np.int64))
            weight, bias = None, np.repeat(bias, geometry.pixels)
            threshold = np.repeat(threshold, geometry.pixels)
        layer = DenseLayer(str(entry["name"]), None if weight is None else weight.astype(np.int64), bias, threshold,
                           bits, shadow, conv, pool)
        bounds = layer_bounds(layer, timesteps)
        _require(bounds.membrane_width <= MAX_WIDTH, path,
                 f"{where}: membrane needs {bounds.membrane_width} bits (limit {MAX_WIDTH})")
        layers.append(layer)
        size = n_out
    metadata = meta.get("metadata") or {}
    _require(isinstance(metadata, dict), path, "metadata must be an object")
    return SpikingNetwork(timesteps, InputEncoding(shape, input_threshold), tuple(layers), metadata)
