"""Shared fixtures: random integer networks (hypothesis) and the digits model built by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from spikesmith.contract.network import ConvGeometry, ConvSpec, DenseLayer, InputEncoding, SpikingNetwork

os.environ.setdefault("PYTHONWARNINGS", "ignore")


def make_network(rng: np.random.Generator, sizes: list[int], timesteps: int, weight_bits: int = 8,
                 negative_bias: float = 0.0, threshold_scale: float = 1.0) -> SpikingNetwork:
    """A random integer network with the given layer sizes (sizes[0] = inputs)."""
    qmax = (1 << (weight_bits - 1)) - 1
    layers = []
    max_code = (1 << timesteps) - 1
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = rng.integers(-qmax, qmax + 1, size=(n_out, n_in))
        if negative_bias:
            weight = np.where(rng.random(weight.shape) < negative_bias, -np.abs(weight), weight)
        scale = max(1, int(np.abs(weight).sum(axis=1).max()) * max_code)
        bias = rng.integers(-scale // 4 - 1, scale // 4 + 1, size=n_out)
        fires = i < len(sizes) - 2
        threshold = None
        if fires:
            threshold = np.maximum(1, (rng.random(n_out) * scale * threshold_scale / 2).astype(np.int64))
        layers.append(DenseLayer(f"l{i}", weight.astype(np.int64), bias.astype(np.int64),
                                 threshold, weight_bits))
    return SpikingNetwork(timesteps, InputEncoding((sizes[0],), 1.0), tuple(layers))


def make_conv_network(rng: np.random.Generator, in_shape: tuple[int, int, int], convs, classes: int,
                      timesteps: int, weight_bits: int = 8, threshold_scale: float = 0.3) -> SpikingNetwork:
    """A random integer network of convolution layers ``convs`` = [(C_out, (kh, kw), (sh, sw), (ph, pw)), ...]
    on ``in_shape`` images, then a dense output layer of ``classes`` neurons."""
    qmax = (1 << (weight_bits - 1)) - 1
    max_code = (1 << timesteps) - 1
    layers, shape = [], tuple(in_shape)
    for i, (c_out, kernel, stride, padding) in enumerate(convs):
        geometry = ConvGeometry(shape, c_out, tuple(kernel), tuple(stride), tuple(padding))
        kernel_values = rng.integers(-qmax, qmax + 1, size=geometry.kernel_shape)
        weight = geometry.dense(kernel_values)
        scale = max(1, int(np.abs(weight).sum(axis=1).max()) * max_code)
        bias = np.repeat(rng.integers(-scale // 4 - 1, scale // 4 + 1, size=c_out), geometry.pixels)
        threshold = np.repeat(np.maximum(1, (rng.random(c_out) * scale * threshold_scale).astype(np.int64)),
                              geometry.pixels)
        layers.append(DenseLayer(f"conv{i}", weight.astype(np.int64), bias.astype(np.int64), threshold, weight_bits,
                                 conv=ConvSpec(geometry, kernel_values.astype(np.int64))))
        shape = geometry.out_shape
    size = int(np.prod(shape))
    weight = rng.integers(-qmax, qmax + 1, size=(classes, size))
    layers.append(DenseLayer("out", weight.astype(np.int64), rng.integers(-50, 50, size=classes).astype(np.int64),
                             None, weight_bits))
    return SpikingNetwork(timesteps, InputEncoding(tuple(in_shape), 1.0), tuple(layers))


@st.composite
def conv_networks_and_codes(draw, max_images: int = 3):
    """(network, input codes) of one or two random convolutions: channels, kernels, strides, paddings, T."""
    channels = draw(st.integers(1, 3))
    shape = (channels, draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    convs, current = [], shape
    for _ in range(draw(st.integers(1, 2))):
        kernel = (draw(st.integers(1, min(4, current[1]))), draw(st.integers(1, min(4, current[2]))))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, kernel[0] - 1)), draw(st.integers(0, kernel[1] - 1)))
        geometry = ConvGeometry(current, draw(st.integers(1, 4)), kernel, stride, padding)
        convs.append((geometry.out_channels, kernel, stride, padding))
        current = geometry.out_shape
    timesteps = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    net = make_conv_network(rng, shape, convs, draw(st.integers(1, 4)), timesteps,
                            weight_bits=draw(st.integers(2, 8)), threshold_scale=draw(st.sampled_from([0.01, 0.3, 1.0])))
    codes = rng.integers(0, net.max_code + 1, size=(draw(st.integers(1, max_images)), net.input.size))
    codes[:, rng.random(net.input.size) < 0.3] = 0
    return net, codes.astype(np.int64)


# Seeded random networks: (sizes, T, weight bits, negative share, threshold scale, lanes, input lanes).
RANDOM_NETWORKS = [
    ([12, 9, 5], 8, 8, 0.0, 0.3, [4, 5], 5),
    ([7, 6, 6, 4, 3], 4, 5, 0.5, 1.0, [2, 6, 1, 3], 3),
    ([10, 16, 4], 6, 3, 0.9, 0.01, [16, 1], 10),          # negative-heavy, tiny thresholds
    ([5, 3], 16, 8, 0.5, 3.0, [2], 1),                    # one layer, T = 16, high thresholds
    ([9, 11, 7, 10], 1, 2, 0.0, 1.0, [3, 7, 4], 4),       # T = 1, 2-bit weights
    ([20, 13, 2], 5, 6, 0.5, 0.3, [5, 2], 6),
]


def random_core(case: int, seed: int, skip_silent: bool = True):
    """(network, plan) of ``RANDOM_NETWORKS[case]``, its weights drawn from ``seed``."""
    from spikesmith.gen.sizing import plan_core

    sizes, T, bits, negative, scale, lanes, input_lanes = RANDOM_NETWORKS[case]
    net = make_network(np.random.default_rng(seed), sizes, T, bits, negative, scale)
    return net, plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=skip_silent)


@st.composite
def networks_and_codes(draw, max_layers: int = 3, max_width: int = 6, max_timesteps: int = 8, max_images: int = 4):
    """(network, input codes) with random depth, widths, T, weight bits, signs and thresholds."""
    depth = draw(st.integers(1, max_layers))
    sizes = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    timesteps = draw(st.integers(1, max_timesteps))
    bits = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    negative = draw(st.sampled_from([0.0, 0.5, 0.9]))
    threshold_scale = draw(st.sampled_from([0.01, 0.3, 1.0, 3.0]))
    rng = np.random.default_rng(seed)
    net = make_network(rng, sizes, timesteps, bits, negative, threshold_scale)
    n = draw(st.integers(1, max_images))
    kind = draw(st.sampled_from(["random", "zeros", "max", "mixed"]))
    max_code = (1 << timesteps) - 1
    if kind == "random":
        codes = rng.integers(0, max_code + 1, size=(n, sizes[0]))
    elif kind == "zeros":
        codes = np.zeros((n, sizes[0]), dtype=np.int64)
    elif kind == "max":
        codes = np.full((n, sizes[0]), max_code, dtype=np.int64)
    else:
        codes = rng.choice([0, max_code], size=(n, sizes[0]))
    return net, codes.astype(np.int64)


def run_cli(*args: str, check: bool = True, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``spikesmith`` CLI as a user would (a subprocess)."""
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"spikesmith {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def signal_a_waiting_infer(net_path, signum: int) -> tuple[int, str]:
    """``spikesmith infer`` on a port nobody answers, sent ``signum`` once the driver waits on the port:
    its exit status and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "spikesmith.cli", "infer", str(net_path), "--port", "loop://",
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Signal only once the driver is waiting on the port (imports can take seconds on a busy machine).
    for line in proc.stderr:
        if "opening loop://" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    return proc.returncode, stderr


def assert_one_line_error(proc, *fragments):
    """Exit status 1 and exactly one stderr line ``spikesmith: error: ...`` holding every fragment."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikesmith: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory) -> dict:
    """``spikesmith demo -o DIR --json`` once per session: its JSON and the files it wrote."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", "-o", str(out), "--json", "-q")
    result = json.loads(proc.stdout)
    result["dir"] = out
    result["model_path"] = Path(result["files"]["model"])
    result["net_path"] = Path(result["files"]["network"])
    result["cnn_net_path"] = Path(result["cnn"]["files"]["network"])
    return result
