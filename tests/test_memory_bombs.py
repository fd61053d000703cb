"""Peak memory while refusing each reported bomb (issue #33): every reader refuses, in one line, a small file
that declares gigabytes, and the process's peak resident memory grows by less than 1 GB meanwhile.

Each refusal runs in a fresh process (its peak, ``ru_maxrss``, is its own) with the budget a user sets with
``SPIKESMITH_MEMORY_LIMIT=512M``, and an address-space limit of 3 GiB more than it holds before reading, so
that a reader that does allocate what the file declares fails there instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from bombs import add_zero_array, gzip_of_zeros, idx_image_bomb, pixel_bomb, write
from conftest import make_network
from datafiles import idx_bytes

#: The issue's bar: growth of the peak resident memory while refusing a bomb (bytes).
PEAK_LIMIT = 1 << 30

_REFUSE = r"""
import json, resource, sys
from spikesmith.errors import SpikesmithError
from spikesmith.datasets import open_dataset
from spikesmith.gen.netfile import load_network
from spikesmith.gen.nirgraph import import_graph, read_nir
readers = {"network": load_network, "data": open_dataset, "nir": lambda path: import_graph(read_nir(path))}
with open("/proc/self/status") as status:
    held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (held + (3 << 30), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    readers[sys.argv[1]](sys.argv[2])
    error = None
except SpikesmithError as exc:
    error = str(exc)
except MemoryError as exc:
    error = "MemoryError"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"error": error, "grown": grown}))
"""


def _mlp_nir(path: Path) -> Path:
    rng = np.random.default_rng(0)
    nodes = {"in": nir.Input(input_type={"input": np.array([64])}),
             "fc1": nir.Affine(weight=rng.normal(0, 0.3, (10, 64)), bias=np.zeros(10)),
             "out": nir.Output(output_type={"output": np.array([10])})}
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=[("in", "fc1"), ("fc1", "out")]))
    return path


def _network_with_a_stowaway(folder: Path) -> tuple[str, Path]:
    """1.2 GiB of zeros in a member the format does not name (1 MB on disk)."""
    data = add_zero_array(network_to_bytes_of_a_small_net(), "stowaway.npy", 1_200 << 20)
    return "network", write(folder / "stowaway.net.npz", data)


def network_to_bytes_of_a_small_net() -> bytes:
    from spikesmith.gen.netfile import network_to_bytes

    return network_to_bytes(make_network(np.random.default_rng(3), [6, 5, 3], 4))


def _pixels(folder: Path) -> tuple[str, Path]:
    """A 1x1 convolution on a 20000x20000 input, 2 KB."""
    return "network", write(folder / "pixels.net.npz", pixel_bomb(20_000))


def _hard_links(folder: Path) -> tuple[str, Path]:
    """One 64 MiB dataset under 20 hard links: 1.25 GiB read."""
    path = _mlp_nir(folder / "links.nir")
    with h5py.File(path, "a") as f:
        group = f.require_group("node/nodes/fc1/metadata")
        blob = group.create_dataset("blob0", shape=(8 << 20,), dtype="f8", chunks=(1 << 16,), compression="gzip",
                                    fillvalue=0.0)
        for copy in range(1, 20):
            group[f"blob{copy}"] = blob
    return "nir", path


def _external_link(folder: Path) -> tuple[str, Path]:
    """An external link to a 2 GiB dataset (a fill value) in another file."""
    with h5py.File(folder / "other.h5", "w") as other:
        other.create_dataset("data", shape=(1 << 28,), dtype="f8", chunks=(1 << 16,), compression="gzip",
                             fillvalue=0.0)
    path = _mlp_nir(folder / "external.nir")
    with h5py.File(path, "a") as f:
        f.require_group("node/nodes/fc1/metadata")["far"] = h5py.ExternalLink(str(folder / "other.h5"), "/data")
    return "nir", path


def _idx_gzip(folder: Path) -> tuple[str, Path]:
    """1 GiB of MNIST-sized images in a 5 MB gzip: within the unpacking limit; 4 GiB more as float32."""
    images = (1 << 30) // (28 * 28)
    write(folder / "t10k-images-idx3-ubyte.gz", idx_image_bomb(images, 28))
    write(folder / "t10k-labels-idx1-ubyte.gz", gzip_of_zeros(bytes([0, 0, 0x08, 1]) + images.to_bytes(4, "big"),
                                                              images))
    return "data", folder


def _cifar_gzip(folder: Path) -> tuple[str, Path]:
    """A CIFAR-10 batch of 1 GiB of zero records in a gzip of 1 MB."""
    records = (1 << 30) // 3073
    return "data", write(folder / "test_batch.bin", gzip_of_zeros(b"", records * 3073))


BOMBS = {"npz stowaway": (_network_with_a_stowaway, "'stowaway.npy' is not an array the header's layers name"),
         "conv pixels": (_pixels, "the network loaded"),
         "nir hard links": (_hard_links, "would need 64.0 MiB of memory; the budget for reading it is 512.0 MiB"),
         "nir external link": (_external_link, "is an external link"),
         "idx gzip": (_idx_gzip, "would need"),
         "cifar gzip": (_cifar_gzip, "its unpacked bytes")}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_each_bomb_is_refused_in_one_line_under_1_gb_of_peak_memory(tmp_path, bomb):
    make, fragment = BOMBS[bomb]
    reader, path = make(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _REFUSE, reader, str(path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SPIKESMITH_MEMORY_LIMIT": "512M"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["error"] is not None and fragment in result["error"] and "\n" not in result["error"], result
    assert result["grown"] < PEAK_LIMIT, f"peak memory grew by {result['grown'] / 2**30:.2f} GiB"
