"""Image data sets: the embedded default (scikit-learn digits) and users' files on disk.

Every loader returns a :class:`Dataset` of float32 images scaled to [0, 1], shaped
``(N, C, H, W)``, with int64 labels. Nothing is downloaded.

A data spec (``--data``, ``--calib``) is one of:

- ``digits``: scikit-learn's 8x8 digits (1797 images, shipped inside scikit-learn), split
  75/25 with a fixed seed: ``digits:train`` (1347) and ``digits:test`` (450). Plain ``digits``
  means the train split for calibration and the test split for evaluation.
- a path to MNIST IDX files (a folder holding ``*-images-idx3-ubyte[.gz]`` and the matching
  ``*-labels-idx1-ubyte[.gz]``, or the images file itself): ``train-*`` files are used for
  calibration and ``t10k-*`` for evaluation where both exist;
- a path to CIFAR-10 binary batches (a folder of ``data_batch_*.bin`` / ``test_batch.bin``,
  or one ``.bin`` file).
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["Dataset", "digits", "read_idx", "load_mnist", "load_cifar10", "open_dataset", "parse_range"]


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    images: np.ndarray  # float32 (N, C, H, W), values in [0, 1]
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def select(self, start: int | None = None, stop: int | None = None) -> "Dataset":
        """Images ``[start:stop]``; the name records the range."""
        if start is None and stop is None:
            return self
        s = slice(start, stop)
        lo, hi, _ = s.indices(len(self))
        if hi <= lo:
            raise DatasetError(f"range {start or ''}:{stop or ''} selects no image of {self.name} ({len(self)} images)")
        return Dataset(f"{self.name}[{lo}:{hi}]", self.images[s], self.labels[s])

    def head(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DatasetError(f"-n must be at least 1, not {n}")
        return Dataset(f"{self.name} (first {n})", self.images[:n], self.labels[:n])

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images of {'x'.join(map(str, self.image_shape))}"


def digits(split: str = "test") -> Dataset:
    """scikit-learn's 8x8 digits, pixel values 0..16 scaled to [0, 1]; a fixed 75/25 split."""
    # scikit-learn takes a second or two to import: only the embedded digits need it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise DatasetError(f"digits split must be train, test or all, not {split!r}")
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    if split == "all":
        return Dataset("digits", images, labels)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels)
    if split == "train":
        return Dataset("digits:train", x_train, y_train)
    return Dataset("digits:test", x_test, y_test)


_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


#: The largest data file read (MNIST's training images are 47 MB).
MAX_DATA_BYTES = 1 << 30


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                data = stream.read(MAX_DATA_BYTES + 1)        # a small .gz can unpack to anything
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is a damaged gzip file ({exc})") from exc
        if len(data) > MAX_DATA_BYTES:
            raise DatasetError(f"{path} unpacks to more than {MAX_DATA_BYTES >> 30} GiB; spikesmith reads "
                               "smaller data files")
        return data
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its declared type and shape."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path} is not an IDX file (truncated header)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize          # Python integers: no overflow
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} is truncated or damaged: its header declares {'x'.join(map(str, dims))} values "
            f"({expected} bytes) but it holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_images(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir()
                  if p.is_file() and ("-images-idx3-ubyte" in p.name or "-images.idx3-ubyte" in p.name))


def _labels_for(images_path: Path) -> Path:
    name = images_path.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte").replace(
        "-images.idx3-ubyte", "-labels.idx1-ubyte")
    for candidate in (name, name[:-3] if name.endswith(".gz") else name + ".gz"):
        p = images_path.with_name(candidate)
        if p.is_file():
            return p
    raise DatasetError(f"no labels file next to {images_path} (expected {name})")


def load_mnist(images_path: str | Path) -> Dataset:
    """MNIST-style IDX images (uint8, N x H x W) and their labels; pixels scaled by 1/255."""
    images_path = Path(images_path)
    images = read_idx(images_path)
    labels = read_idx(_labels_for(images_path))
    if images.ndim != 3 or images.dtype != np.dtype(">u1"):
        raise DatasetError(f"{images_path}: expected uint8 images of N x H x W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return Dataset(str(images_path), x, labels.astype(np.int64))


CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(paths: list[Path]) -> Dataset:
    """CIFAR-10 binary batches: records of 1 label byte + 3072 bytes (R, G, B planes of 32x32)."""
    xs, ys = [], []
    for path in paths:
        raw = _read_maybe_gzip(path)
        if len(raw) == 0 or len(raw) % CIFAR_RECORD:
            raise DatasetError(f"{path} is not a CIFAR-10 binary batch ({len(raw)} bytes is not a whole "
                               f"number of {CIFAR_RECORD}-byte records)")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
        if records[:, 0].max() > 9:
            raise DatasetError(f"{path} has labels above 9; not a CIFAR-10 batch")
        ys.append(records[:, 0].astype(np.int64))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32))
    name = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"
    return Dataset(name, np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys))


def open_dataset(spec: str, role: str = "eval") -> Dataset:
    """Open a data spec (see the module docstring); ``role`` is ``"calib"`` or ``"eval"``."""
    if role not in ("calib", "eval"):
        raise ValueError(role)
    if spec in ("digits", "digits:train", "digits:test", "digits:all"):
        split = spec.split(":")[1] if ":" in spec else ("train" if role == "calib" else "test")
        return digits(split)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"data not found: {spec} (give 'digits' or a path to MNIST IDX or CIFAR-10 binary files)")
    preferred = ("train", "data_batch") if role == "calib" else ("t10k", "test")
    if path.is_dir():
        idx = _idx_images(path)
        if idx:
            chosen = [p for p in idx if p.name.startswith(preferred)] or idx
            return load_mnist(chosen[0])
        bins = sorted(path.glob("*.bin"))
        bins = [b for b in bins if b.name.startswith(("data_batch", "test_batch"))] or bins
        if bins:
            chosen = [b for b in bins if b.name.startswith(preferred)] or bins
            return load_cifar10(chosen)
        raise DatasetError(f"{path} holds neither MNIST IDX files nor CIFAR-10 binary batches")
    if path.suffix == ".bin":
        return load_cifar10([path])
    if "idx3" in path.name or _looks_like_idx(path):
        return load_mnist(path)
    raise DatasetError(f"{path}: unknown data format (expected MNIST IDX or CIFAR-10 .bin)")


def _looks_like_idx(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in _IDX_TYPES


def parse_range(text: str | None) -> tuple[int | None, int | None]:
    """``"8000:10000"`` -> (8000, 10000); ``"8000:"`` -> (8000, None); ``None`` -> (None, None)."""
    if text is None:
        return None, None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start = int(parts[0]) if parts[0] else None
        stop = int(parts[1]) if parts[1] else None
    except ValueError:
        raise DatasetError(f"bad range {text!r}: write START:STOP, e.g. 8000:10000 or 8000:") from None
    return start, stop
