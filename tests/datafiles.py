"""Writers for small data files in the formats users bring (MNIST IDX, CIFAR-10 binary)."""

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "t10k",
                compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    pack = gzip.compress if compress else (lambda b: b)
    images_path = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    images_path.write_bytes(pack(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(pack(idx_bytes(labels)))
    return images_path


def write_cifar(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                              np.asarray(images, np.uint8).reshape(len(labels), -1)], axis=1)
    path.write_bytes(records.tobytes())
    return path
