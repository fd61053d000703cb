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
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .resources import MemoryBudget, MemoryBudgetError

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
#: Bytes decompressed per read of a gzip stream.
CHUNK_BYTES = 1 << 20


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_exactly(stream, nbytes: int, path: Path) -> bytearray:
    """``nbytes`` from ``stream`` into one buffer, a chunk at a time (no second copy); then the stream must end."""
    buffer = bytearray(nbytes)
    view, filled = memoryview(buffer), 0
    while filled < nbytes:
        chunk = stream.read(min(CHUNK_BYTES, nbytes - filled))
        if not chunk:
            break
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled < nbytes or stream.read(1):
        held = f"{filled:,}" if filled < nbytes else f"more than {nbytes:,}"
        raise DatasetError(f"{path} is truncated or damaged: its header declares {nbytes:,} bytes of data but it "
                           f"holds {held}")
    return buffer


def _read_all(path: Path, budget: MemoryBudget) -> bytes:
    """A whole data file, unpacked if gzip-compressed: every byte counted against ``budget`` before it is
    read (a chunk at a time for a gzip, then their join) and at most :data:`MAX_DATA_BYTES`."""
    try:
        if not _is_gzip(path):
            budget.take(path.stat().st_size, f"{path}: its bytes")
            return path.read_bytes()
        chunks, total = [], 0
        with gzip.open(path, "rb") as stream:
            while True:
                budget.take(CHUNK_BYTES, f"{path}: its unpacked bytes (after {total:,})")
                chunk = stream.read(CHUNK_BYTES)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_DATA_BYTES:
                    raise DatasetError(f"{path} unpacks to more than {_size(MAX_DATA_BYTES)}; spikesmith reads "
                                       "smaller data files")
                chunks.append(chunk)
        budget.take(total, f"{path}: its {total:,} unpacked bytes joined")
        return b"".join(chunks)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path} is a damaged gzip file or cannot be read ({exc})") from exc


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:g} GiB" if nbytes >= 1 << 30 else f"{nbytes / 2**20:g} MiB"


def read_idx(path: str | Path, budget: MemoryBudget | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its declared type and shape.

    The header is read first; the data it declares (at most :data:`MAX_DATA_BYTES`) is counted
    against ``budget`` (default: a new :class:`MemoryBudget`) before it is read, and the file must
    hold exactly that much."""
    path = Path(path)
    budget = MemoryBudget() if budget is None else budget
    try:
        compressed = _is_gzip(path)
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
                raise DatasetError(f"{path} is not an IDX file (bad magic number)")
            dtype, ndim = _IDX_TYPES[head[2]], head[3]
            sizes = stream.read(4 * ndim)
            if ndim == 0 or len(sizes) < 4 * ndim:
                raise DatasetError(f"{path} is not an IDX file (truncated header)")
            dims = tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(ndim))
            expected = math.prod(dims) * dtype.itemsize          # Python integers: no overflow
            if not compressed and path.stat().st_size - 4 - 4 * ndim != expected:
                raise DatasetError(
                    f"{path} is truncated or damaged: its header declares {'x'.join(map(str, dims))} values "
                    f"({expected} bytes) but it holds {path.stat().st_size - 4 - 4 * ndim} bytes of data")
            if expected > MAX_DATA_BYTES:
                raise DatasetError(f"{path} declares {'x'.join(map(str, dims))} values: it unpacks to more than "
                                   f"{_size(MAX_DATA_BYTES)}; spikesmith reads smaller data files")
            budget.take(expected, f"{path}: its {'x'.join(map(str, dims))} values")
            data = _read_exactly(stream, expected, path)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path} is a damaged gzip file or cannot be read ({exc})") from exc
    except MemoryBudgetError as exc:
        raise DatasetError(str(exc)) from None
    return np.frombuffer(data, dtype=dtype).reshape(dims)


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


def load_mnist(images_path: str | Path, budget: MemoryBudget | None = None) -> Dataset:
    """MNIST-style IDX images (uint8, N x H x W) and their labels (integers, N); pixels scaled by 1/255.
    One ``budget`` (default: a new :class:`MemoryBudget`) counts both files and the float32 images."""
    images_path = Path(images_path)
    budget = MemoryBudget() if budget is None else budget
    images = read_idx(images_path, budget)
    if images.ndim != 3 or images.dtype != np.dtype(">u1"):
        raise DatasetError(f"{images_path}: expected uint8 images of N x H x W, got {images.dtype} {images.shape}")
    labels_path = _labels_for(images_path)
    labels = read_idx(labels_path, budget)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{labels_path}: labels are one integer per image (N), not {labels.dtype} values of shape "
                           f"{'x'.join(map(str, labels.shape))}")
    if len(labels) != len(images):
        raise DatasetError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    return Dataset(str(images_path), _scaled_pixels(images, budget, str(images_path))[:, None, :, :],
                   _int64_labels(labels, budget, str(labels_path)))


def _scaled_pixels(pixels: np.ndarray, budget: MemoryBudget, what: str) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1]: one float32 array (4 bytes a pixel), counted before it is made."""
    try:
        budget.take(4 * pixels.size, f"{what}: its {pixels.size:,} pixels as float32")
    except MemoryBudgetError as exc:
        raise DatasetError(str(exc)) from None
    x = pixels.astype(np.float32)
    x /= 255.0                                  # in place: no second float array
    return x


def _int64_labels(labels: np.ndarray, budget: MemoryBudget, what: str) -> np.ndarray:
    try:
        budget.take(8 * labels.size, f"{what}: its {labels.size:,} labels as int64")
    except MemoryBudgetError as exc:
        raise DatasetError(str(exc)) from None
    return labels.astype(np.int64)


CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(paths: list[Path], budget: MemoryBudget | None = None) -> Dataset:
    """CIFAR-10 binary batches: records of 1 label byte + 3072 bytes (R, G, B planes of 32x32). One
    ``budget`` (default: a new :class:`MemoryBudget`) counts every file's bytes and the arrays made of them."""
    budget = MemoryBudget() if budget is None else budget
    pixels, ys = [], []
    try:
        for path in paths:
            raw = _read_all(path, budget)
            if len(raw) == 0 or len(raw) % CIFAR_RECORD:
                raise DatasetError(f"{path} is not a CIFAR-10 binary batch ({len(raw)} bytes is not a whole "
                                   f"number of {CIFAR_RECORD}-byte records)")
            records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
            if records[:, 0].max() > 9:
                raise DatasetError(f"{path} has labels above 9; not a CIFAR-10 batch")
            ys.append(_int64_labels(records[:, 0], budget, str(path)))
            pixels.append(records[:, 1:])                # a view: copied once, into the float32 images
        name = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"
        count = sum(len(p) for p in pixels)
        budget.take(4 * count * (CIFAR_RECORD - 1), f"{name}: its {count:,} images as float32")
    except MemoryBudgetError as exc:
        raise DatasetError(str(exc)) from None
    images = np.empty((count, 3, 32, 32), dtype=np.float32)
    start = 0
    for part in pixels:
        images[start:start + len(part)].reshape(len(part), -1)[:] = part     # uint8 to float32, no copy between
        start += len(part)
    images /= 255.0
    return Dataset(name, images, np.concatenate(ys))


def open_dataset(spec: str, role: str = "eval", budget: MemoryBudget | None = None) -> Dataset:
    """Open a data spec (see the module docstring); ``role`` is ``"calib"`` or ``"eval"``; ``budget``
    counts what reading a user's files allocates (default: a new :class:`MemoryBudget`)."""
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
            return load_mnist(chosen[0], budget)
        bins = sorted(path.glob("*.bin"))
        bins = [b for b in bins if b.name.startswith(("data_batch", "test_batch"))] or bins
        if bins:
            chosen = [b for b in bins if b.name.startswith(preferred)] or bins
            return load_cifar10(chosen, budget)
        raise DatasetError(f"{path} holds neither MNIST IDX files nor CIFAR-10 binary batches")
    if path.suffix == ".bin":
        return load_cifar10([path], budget)
    if "idx3" in path.name or _looks_like_idx(path):
        return load_mnist(path, budget)
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
