"""Hostile input, generated: the frame decoder and the network-file, IDX and CIFAR readers raise only
their own one-line errors, never hang, and hold bounded memory (SECURITY.md)."""

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikesmith.contract.protocol import FRAMING, FrameDecoder, FrameType, encode_frame
from spikesmith.datasets import load_cifar10, read_idx
from spikesmith.errors import DatasetError, NetFileError
from spikesmith.gen.netfile import load_network, network_to_bytes

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
