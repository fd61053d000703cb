"""Small hostile files that declare far more memory than they take on disk (issue #33): each reader must
refuse them in one line, counting what their contents decide before allocating it."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

#: Bytes of zeros written per call when streaming a bomb's payload.
CHUNK = 1 << 20


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The ``.npy`` header of an array of ``shape`` and ``dtype`` (its data follows)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def add_zero_array(data: bytes, name: str, nbytes: int) -> bytes:
    """``data`` (a network file) with one more member ``name``: a valid uint8 ``.npy`` of ``nbytes``
    zeros, deflated (1,000 to 1 on disk)."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(npy_header((nbytes,), "u1"))
            for _ in range(nbytes // CHUNK):
                member.write(bytes(CHUNK))
            member.write(bytes(nbytes % CHUNK))
    return out.getvalue()


def network_file(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A network file made by hand: ``arrays`` and the header ``meta`` (no checks)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, **{"meta.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    return buffer.getvalue()


def pixel_bomb(side: int = 20_000) -> bytes:
    """About 2 KB: a 1x1 convolution of one channel on a ``side`` x ``side`` image, max-pooled to one value
    for a two-class output layer. Loading repeats the convolution's bias and threshold over its
    ``side**2`` pixels (3.2 GB each at 20,000) and checks its bounds on arrays as large."""
    pixels = side * side
    meta = {"format": "spikesmith-net", "version": 1, "timesteps": 4,
            "input": {"shape": [1, side, side], "threshold": 1.0},
            "layers": [{"name": "conv", "kind": "conv", "in": pixels, "out": pixels, "fires": True, "weight_bits": 4,
                        "activation_threshold": None,
                        "convolution": {"in_shape": [1, side, side], "out_channels": 1, "kernel": [1, 1],
                                        "stride": [1, 1], "padding": [0, 0]}},
                       {"name": "out", "kind": "dense", "in": 1, "out": 2, "fires": False, "weight_bits": 4,
                        "activation_threshold": None,
                        "max_pool": {"in_shape": [1, side, side], "kernel": [side, side], "stride": [side, side],
                                     "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}}],
            "metadata": {}, "fingerprint": "sha256:" + "0" * 64}
    arrays = {"layer0.weight": np.ones((1, 1, 1, 1), np.int8), "layer0.bias": np.zeros(1, np.int64),
              "layer0.threshold": np.ones(1, np.int64), "layer1.weight": np.ones((2, 1), np.int8),
              "layer1.bias": np.zeros(2, np.int64)}
    return network_file(meta, arrays)


def gzip_of_zeros(header: bytes, nbytes: int) -> bytes:
    """A gzip stream of ``header`` and then ``nbytes`` zeros, compressed chunk by chunk."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    zeros = bytes(CHUNK)
    for _ in range(nbytes // CHUNK):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(nbytes % CHUNK)))
    parts.append(compressor.flush())
    return b"".join(parts)


def idx_image_bomb(images: int, side: int) -> bytes:
    """A gzipped IDX file of ``images`` uint8 images of ``side`` x ``side`` zeros: small on disk, and its
    pixels as float32 take four times its unpacked size."""
    header = bytes([0, 0, 0x08, 3]) + images.to_bytes(4, "big") + side.to_bytes(4, "big") * 2
    return gzip_of_zeros(header, images * side * side)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


