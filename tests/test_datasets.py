"""Data loaders: the embedded digits, MNIST IDX and CIFAR-10 binary files from a local path."""

import gzip

import numpy as np
import pytest

from spikesmith.datasets import digits, open_dataset, parse_range, read_idx
from spikesmith.errors import DatasetError

from spikesmith.resources import MemoryBudget

from bombs import gzip_of_zeros, idx_image_bomb, write
from datafiles import idx_bytes, write_cifar, write_mnist


def test_digits_split_is_fixed_and_scaled():
    train, test = digits("train"), digits("test")
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() == 1.0
    assert np.array_equal(digits("test").labels, test.labels)
    assert open_dataset("digits", "calib").name == "digits:train"
    assert open_dataset("digits", "eval").name == "digits:test"


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_folder(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28))
    labels = rng.integers(0, 10, 7)
    write_mnist(tmp_path, images, labels, "t10k", compress)
    write_mnist(tmp_path, images[:3], labels[:3], "train", compress)
    data = open_dataset(str(tmp_path), "eval")
    assert len(data) == 7 and data.image_shape == (1, 28, 28)
    assert np.allclose(data.images[:, 0] * 255, images) and np.array_equal(data.labels, labels)
    assert len(open_dataset(str(tmp_path), "calib")) == 3
    assert len(open_dataset(str(tmp_path), "eval").select(*parse_range("2:5"))) == 3


def test_idx_file_path_and_truncation(tmp_path):
    images_path = write_mnist(tmp_path, np.zeros((4, 5, 5)), np.arange(4), compress=False)
    assert len(open_dataset(str(images_path))) == 4
    images_path.write_bytes(images_path.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated or damaged"):
        open_dataset(str(images_path))


def test_idx_defects(tmp_path):
    bad = tmp_path / "x-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(bad)
    gz = tmp_path / "y-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3, 3))))[:-10])
    with pytest.raises(DatasetError, match="damaged gzip"):
        read_idx(gz)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "z-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 3, 3))))
    with pytest.raises(DatasetError, match="no labels file"):
        open_dataset(str(lonely))
    mismatch = tmp_path / "mismatch"
    write_mnist(mismatch, np.zeros((3, 4, 4)), np.zeros(2))
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        open_dataset(str(mismatch))


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 32, 32))
    labels = rng.integers(0, 10, 5)
    write_cifar(tmp_path / "data_batch_1.bin", images[:3], labels[:3])
    write_cifar(tmp_path / "test_batch.bin", images[3:], labels[3:])
    test = open_dataset(str(tmp_path), "eval")
    assert len(test) == 2 and test.image_shape == (3, 32, 32)
    assert np.allclose(test.images * 255, images[3:]) and np.array_equal(test.labels, labels[3:])
    assert len(open_dataset(str(tmp_path / "data_batch_1.bin"))) == 3
    (tmp_path / "broken.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="not a CIFAR-10 binary batch"):
        open_dataset(str(tmp_path / "broken.bin"))


def test_specs_and_ranges(tmp_path):
    with pytest.raises(DatasetError, match="data not found"):
        open_dataset(str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match="neither MNIST IDX"):
        open_dataset(str(tmp_path))
    assert parse_range("8000:") == (8000, None) and parse_range(":10") == (None, 10)
    with pytest.raises(DatasetError, match="bad range"):
        parse_range("12")
    with pytest.raises(DatasetError, match="selects no image"):
        digits("test").select(500, 600)


def test_an_idx_header_whose_sizes_overflow_is_damage(tmp_path):
    """4 x (2^32 - 1)^2 bytes overflows 64-bit arithmetic; the reader counts in Python integers."""
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big"))
    with pytest.raises(DatasetError, match="truncated or damaged"):
        read_idx(path)


def test_a_gzip_that_unpacks_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    import spikesmith.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_DATA_BYTES", 1 << 20)
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + (4 << 20).to_bytes(4, "big") + bytes(4 << 20)))
    assert path.stat().st_size < 20_000
    with pytest.raises(DatasetError, match="unpacks to more than"):
        read_idx(path)


def test_labels_outside_the_networks_classes_are_refused(tmp_path):
    from conftest import assert_one_line_error, make_network, run_cli
    from spikesmith.gen.netfile import save_network

    save_network(make_network(np.random.default_rng(2), [64, 8, 5], 4), tmp_path / "five.net.npz")
    proc = run_cli("eval", str(tmp_path / "five.net.npz"), "--data", "digits", check=False)
    assert_one_line_error(proc, "has labels 0..9 but the network has 5 classes")


def test_the_float_pixels_of_an_idx_file_are_counted_with_its_bytes(tmp_path, monkeypatch):
    """A gzip within the unpacking limit whose pixels as float32 take four times as much (as the 1 GiB one
    that made 9.5 GB): 20 MiB unpacked fits a 64 MiB budget, 20 + 80 MiB do not; refused before converting."""
    images = (20 << 20) // (28 * 28)
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_image_bomb(images, 28))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(images)))
    monkeypatch.setenv("SPIKESMITH_MEMORY_LIMIT", "64M")
    with pytest.raises(DatasetError, match=r"its [\d,]+ pixels as float32 would need 80.0 MiB of memory; "
                                           r"the budget for reading it is 64.0 MiB"):
        open_dataset(str(tmp_path))


def test_an_idx_file_is_counted_at_its_declared_size_before_it_is_unpacked(tmp_path):
    """The header declares 64 MiB of pixels: refused by a 32 MiB budget before any of them is unpacked."""
    path = write(tmp_path / "x-images-idx3-ubyte.gz", idx_image_bomb((64 << 20) // 1024, 32))
    with pytest.raises(DatasetError, match=r"its 65536x32x32 values would need 64.0 MiB of memory"):
        read_idx(path, MemoryBudget(32 << 20))


@pytest.mark.parametrize("labels,fragment", [
    (idx_bytes(np.zeros((20, 1))), "labels are one integer per image (N), not uint8 values of shape 20x1"),
    (bytes([0, 0, 0x0D, 1]) + (20).to_bytes(4, "big") + np.zeros(20, ">f4").tobytes(),
     "labels are one integer per image (N), not >f4 values of shape 20"),
], ids=["20x1", "floats"])
def test_labels_are_one_integer_per_image(tmp_path, labels, fragment):
    """Labels of shape 20x1 used to give "20 images but 20 labels"; float labels were truncated silently."""
    write_mnist(tmp_path, np.zeros((20, 4, 4)), np.zeros(20), compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DatasetError) as info:
        open_dataset(str(tmp_path))
    assert fragment in str(info.value)


def test_a_gzipped_cifar_batch_is_counted_as_it_unpacks(tmp_path, monkeypatch):
    """A 30 MB batch of records of zeros in a gzip of 30 KB, against a 16 MiB budget: refused while unpacking."""
    write(tmp_path / "test_batch.bin", gzip_of_zeros(b"", 30 << 20))
    monkeypatch.setenv("SPIKESMITH_MEMORY_LIMIT", "16M")
    with pytest.raises(DatasetError, match=r"test_batch.bin: its unpacked bytes \(after [\d,]+\) would need 1.0 MiB"):
        open_dataset(str(tmp_path))
