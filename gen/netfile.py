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
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import NetFileError, SpikesmithError
from ..resources import require_memory
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


def load_network(path: str | os.PathLike) -> SpikingNetwork:
    """Read and validate a network file; any defect raises :class:`NetFileError`."""
    path = Path(path)
    if not path.is_file():
        raise NetFileError(f"network file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = _check_sizes(archive, path)
            arrays = {name: archive[name] for name in archive.files}
    except NetFileError:
        raise
    except SpikesmithError as exc:
        raise NetFileError(str(exc)) from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network (corrupt or truncated: {exc})") from exc
    except Exception as exc:  # zlib.error and friends from a damaged archive
        raise NetFileError(f"{path} is not a valid spikesmith network (corrupt or truncated: {exc})") from exc
    _require(isinstance(meta, dict) and meta.get("format") == FORMAT, path, "wrong format tag")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:
        raise NetFileError(f"{path} has format version {json.dumps(version)}; this spikesmith reads version "
                           f"{VERSION} (an integer)")
    try:
        net = _from_meta(meta, arrays, path)
    except NetFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network: bad header or arrays ({exc})") from exc
    stored = meta.get("fingerprint")
    _require(stored == fingerprint(net), path, "fingerprint mismatch (contents were altered or damaged)")
    return net


#: The header is a few KB; a larger one is not a network file.
MAX_HEADER_BYTES = 16 << 20
#: Bytes of memory per weight of the integer network in use (int64 dense matrix, float
#: shadow, and the temporaries of expanding a convolution's kernel).
BYTES_PER_WEIGHT = 32


def _check_sizes(archive, path) -> dict:
    """Before any array is read: the header is small, every array's stored size fits what the
    header declares, and the network fits the free memory (a 1 MB file can declare 8 GiB).
    Returns the parsed header."""
    members = {info.filename: info for info in archive.zip.infolist()}
    header = members.get("meta.json.npy")
    _require(header is not None and header.file_size <= MAX_HEADER_BYTES, path, "no meta.json header, or a huge one")
    try:
        meta = json.loads(archive["meta.json"].tobytes().decode())
        layers = [(int(entry["in"]), int(entry["out"])) for entry in meta["layers"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise NetFileError(f"{path} is not a valid spikesmith network: unreadable header ({exc})") from None
    _require(all(0 < n_in < 1 << 31 and 0 < n_out < 1 << 31 for n_in, n_out in layers), path,
             "layer sizes out of range")
    weights = sum(_weights_in_memory(entry, n_in * n_out) for entry, (n_in, n_out) in zip(meta["layers"], layers))
    for i, (n_in, n_out) in enumerate(layers):
        for name in ("weight", "float_weight", "bias", "threshold", "float_bias", "activation_thresholds"):
            info = members.get(f"layer{i}.{name}.npy")
            largest = 8 * (n_in * n_out if "weight" in name else n_out) + 4096
            _require(info is None or info.file_size <= largest, path,
                     f"layer {i}: array {name} is larger than its declared sizes allow")
    require_memory(BYTES_PER_WEIGHT * weights, f"{path}: the network ({weights:,} weights as dense layers)")
    return meta


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


def _weights_in_memory(entry: dict, dense: int) -> int:
    """Weights a layer holds once loaded: a convolution's kernel (never its dense matrix), else ``dense``."""
    try:
        if entry.get("kind") == "conv":
            g = entry["convolution"]
            return int(g["out_channels"]) * int(g["in_shape"][0]) * int(g["kernel"][0]) * int(g["kernel"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    return dense


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
