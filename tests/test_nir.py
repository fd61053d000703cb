"""NIR interchange: ``export-nir`` writes graphs NIR reads and checks, whose rate reading is the float SNN;
``convert model.nir`` takes graphs made with NIR's own constructors, and the result runs bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from spikesmith.datasets import digits
from spikesmith.gen.netfile import load_network
from spikesmith.errors import ModelFileError
from spikesmith.gen.nirgraph import ann_equivalent, import_graph, read_nir
from spikesmith.resources import MemoryBudget
from spikesmith.gen.passes import lower
from spikesmith.sim.floatsim import snn_float_logits


@pytest.mark.parametrize("key", ["net_path", "cnn_net_path"])
def test_an_exported_graph_passes_nirs_checks_and_reads_as_the_float_snn(digits_demo, tmp_path, key):
    """The digits MLP and CNN: the file loads with ``nir.read`` (its type checks on), every edge's types agree
    (``check_types``), the iLIF settings are in the metadata, and the graph's rate reading at T (numpy) gives
    the float SNN's logits and every one of its predictions."""
    out = tmp_path / "net.nir"
    summary = json.loads(run_cli("export-nir", str(digits_demo[key]), "-o", str(out), "--json").stdout)
    graph = nir.read(out)
    graph.infer_types()
    assert graph.check_types()
    net = load_network(digits_demo[key])
    assert graph.metadata["timesteps"] == net.timesteps and graph.metadata["amplification"] == 2
    assert set(summary["nodes"].values()) <= {"Input", "IF", "Flatten", "Affine", "Conv2d", "Output"}
    images = digits("test").images
    rates, float_snn = ann_equivalent(graph, images), snn_float_logits(net, images)
    np.testing.assert_allclose(rates, float_snn, rtol=0, atol=1e-9 * np.abs(float_snn).max())
    assert np.array_equal(rates.argmax(axis=1), float_snn.argmax(axis=1))


def test_each_layers_integer_parameters_ride_in_its_nodes_metadata(digits_demo, tmp_path):
    out = tmp_path / "net.nir"
    run_cli("export-nir", str(digits_demo["net_path"]), "-o", str(out), "-q")
    graph, net = nir.read(out), load_network(digits_demo["net_path"])
    for layer in net.layers:
        assert np.array_equal(graph.nodes[layer.name].metadata["integer_weight"], layer.weight)
        if layer.fires:
            assert np.array_equal(graph.nodes[f"{layer.name}_if"].metadata["integer_threshold"], layer.threshold)


def test_a_network_without_float_parameters_is_refused(small_digits_net, tmp_path):
    proc = run_cli("export-nir", str(small_digits_net), "-o", str(tmp_path / "n.nir"), check=False)
    assert_one_line_error(proc, "no float parameters")
    assert not (tmp_path / "n.nir").exists()


def _constructed_mlp(rng) -> nir.NIRGraph:
    """Input (1, 8, 8) -> Flatten -> Affine -> IF -> Linear -> LIF -> Affine -> Output, made with NIR's own
    constructors: per-neuron thresholds and r, a LIF without leak."""
    w1, w2, w3 = rng.normal(0, 0.3, (24, 64)), rng.normal(0, 0.3, (16, 24)), rng.normal(0, 0.3, (10, 16))
    nodes = {"in": nir.Input(input_type={"input": np.array([1, 8, 8])}),
             "flat": nir.Flatten(input_type={"input": np.array([1, 8, 8])}, start_dim=0),
             "fc1": nir.Affine(weight=w1, bias=rng.normal(0, 0.1, 24)),
             "if1": nir.IF(r=rng.uniform(0.5, 2, 24), v_threshold=rng.uniform(0.5, 3, 24)),
             "fc2": nir.Linear(weight=w2),
             "lif2": nir.LIF(tau=np.full(16, 1e-3), r=np.ones(16), v_leak=np.zeros(16), v_threshold=np.full(16, 2.0)),
             "fc3": nir.Affine(weight=w3, bias=np.zeros(10)),
             "out": nir.Output(output_type={"output": np.array([10])})}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])))


def _constructed_cnn(rng) -> nir.NIRGraph:
    """Input (1, 8, 8) -> Conv2d -> IF -> SumPool2d -> Conv2d -> IF -> Flatten -> Affine -> Output."""
    nodes = {"in": nir.Input(input_type={"input": np.array([1, 8, 8])}),
             "conv1": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0, 0.5, (4, 1, 3, 3)), stride=1, padding=1,
                                 dilation=1, groups=1, bias=rng.normal(0, 0.1, 4)),
             "if1": nir.IF(r=np.ones((4, 8, 8)), v_threshold=np.full((4, 8, 8), 1.5)),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "conv2": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(0, 0.3, (6, 4, 3, 3)), stride=1, padding=0,
                                 dilation=1, groups=1, bias=np.zeros(6)),
             "if2": nir.IF(r=np.ones((6, 2, 2)), v_threshold=np.full((6, 2, 2), 1.0)),
             "flat": nir.Flatten(input_type={"input": np.array([6, 2, 2])}, start_dim=0),
             "fc": nir.Affine(weight=rng.normal(0, 0.3, (10, 24)), bias=np.zeros(10)),
             "out": nir.Output(output_type={"output": np.array([10])})}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])))


@pytest.mark.parametrize("make", [_constructed_mlp, _constructed_cnn])
def test_a_graph_made_with_nirs_constructors_keeps_its_function_when_imported(make):
    """The imported float network (ReLUs with each neuron's r / v_threshold folded in) classifies every image as the
    graph's rate reading does without the upper clip (a ReLU network)."""
    graph = make(np.random.default_rng(3))
    images = digits("test").images
    network = lower(import_graph(graph))
    expected = ann_equivalent(graph, images, clip=False)
    assert np.array_equal(network.forward(images)[-1].argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("make", [_constructed_mlp, _constructed_cnn])
def test_a_graph_made_with_nirs_constructors_converts_and_runs_bit_exactly(make, tmp_path, harness_cache):
    graph = make(np.random.default_rng(5))
    nir.write(tmp_path / "model.nir", graph)
    net = tmp_path / "model.net.npz"
    run_cli("convert", str(tmp_path / "model.nir"), "--calib", "digits", "--calib-range", "0:400", "-T", "6",
            "-o", str(net), "-q")
    result = json.loads(run_cli("simulate", str(net), "-n", "60", "--build-dir", str(harness_cache), "--json",
                                "-q").stdout)
    assert result["mismatches"] == 0 and result["images"] == 60


def _write(graph, path):
    nir.write(path, graph)
    return path


@pytest.mark.parametrize("change,message", [
    (lambda g: g.nodes.update(if1=nir.CubaLIF(tau_mem=np.ones(24), tau_syn=np.ones(24), r=np.ones(24),
                                              v_leak=np.zeros(24), v_threshold=np.ones(24))),
     "'if1' is a CubaLIF"),
    (lambda g: g.nodes.update(if1=nir.IF(r=np.ones(24), v_threshold=np.ones(24), v_reset=np.full(24, 0.5))),
     "resets to a nonzero potential"),
    (lambda g: g.edges.append(("fc1", "fc2")), "feeds 2 nodes"),
])
def test_what_nir_graphs_spikesmith_cannot_convert_are_refused_by_name(tmp_path, change, message):
    graph = _constructed_mlp(np.random.default_rng(0))
    change(graph)
    path = tmp_path / "model.nir"
    nir.write(path, nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, type_check=False))
    proc = run_cli("convert", str(path), "--calib", "digits", "-o", str(tmp_path / "n.net.npz"), "-q", check=False)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "n.net.npz").exists()


def test_a_file_that_is_not_nir_is_refused(tmp_path):
    path = tmp_path / "model.nir"
    path.write_bytes(b"not hdf5 at all")
    proc = run_cli("convert", str(path), "--calib", "digits", "-o", str(tmp_path / "n.net.npz"), "-q", check=False)
    assert_one_line_error(proc, "is not a NIR file")


def test_a_nir_file_whose_arrays_would_not_fit_in_memory_is_refused_before_reading(tmp_path):
    """A 64 KB file declaring a 4 GiB weight (compressed zeros) is refused from its declared sizes."""
    path = tmp_path / "bomb.nir"
    _write(_constructed_mlp(np.random.default_rng(0)), path)
    with h5py.File(path, "a") as f:
        del f["node/nodes/fc1/weight"]
        f["node/nodes/fc1"].create_dataset("weight", shape=(1 << 16, 1 << 13), dtype="f8", chunks=(1024, 1024),
                                           compression="gzip", fillvalue=0.0)
    assert path.stat().st_size < 1 << 20
    proc = run_cli("convert", str(path), "--calib", "digits", "-o", str(tmp_path / "n.net.npz"), "-q", check=False)
    assert_one_line_error(proc, "dataset '/node/nodes/fc1/weight' would need 4.0 GiB of memory")


def test_a_network_with_a_max_pool_is_refused_naming_the_layer(tmp_path):
    """NIR has sum and average pooling only."""
    import torch
    from torch import nn

    from spikesmith.gen.convert import ConversionOptions, convert_module
    from spikesmith.gen.netfile import save_network

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    net = convert_module(model, digits("train").images[:200], ConversionOptions(timesteps=4))
    path = save_network(net, tmp_path / "pooled.net.npz")
    pooled = next(layer.name for layer in net.layers if layer.pool is not None)
    proc = run_cli("export-nir", str(path), "-o", str(tmp_path / "n.nir"), check=False)
    assert_one_line_error(proc, f"layer {pooled} reads a max pool")
    assert not (tmp_path / "n.nir").exists()


# ---------------------------------------------------------------------------- deny by default (issue #33)

def _mlp_file(tmp_path) -> Path:
    return _write(_constructed_mlp(np.random.default_rng(0)), tmp_path / "model.nir")


def test_a_dataset_reached_by_many_hard_links_is_counted_at_every_one(tmp_path):
    """One 64 MiB dataset (stored as a fill value: a few KB) under 20 names: 1.25 GiB read, counted name by
    name against the 1 GiB a NIR file may take (it used to be counted once, and read 20 times)."""
    path = _mlp_file(tmp_path)
    with h5py.File(path, "a") as f:
        blob = f.require_group("node/nodes/fc1/metadata").create_dataset("blob0", shape=(8 << 20,), dtype="f8", chunks=(1 << 16,),
                                                           compression="gzip", fillvalue=0.0)
        for copy in range(1, 20):
            f[f"node/nodes/fc1/metadata/blob{copy}"] = blob
    assert path.stat().st_size < 200_000
    with pytest.raises(ModelFileError, match=r"dataset '/node/nodes/fc1/metadata/blob\d+' would need 64.0 MiB of memory; "
                                             r"the budget for reading it is 1.0 GiB"):
        read_nir(path)


@pytest.mark.parametrize("kind,make", [
    ("a soft", lambda f, other: h5py.SoftLink("/node/nodes/fc1/weight")),
    ("a soft", lambda f, other: h5py.SoftLink("/node")),                     # a cycle
    ("an external", lambda f, other: h5py.ExternalLink(str(other), "/data")),
], ids=["soft", "soft cycle", "external"])
def test_links_other_than_hard_links_are_refused_unfollowed(tmp_path, kind, make):
    """A soft link (to a dataset, or back to the root: a cycle), or an external link to a 2 GiB dataset in
    another file: refused by kind; the other file is never opened (it is not even HDF5 here)."""
    other = tmp_path / "other.h5"
    other.write_bytes(b"never opened")
    path = _mlp_file(tmp_path)
    with h5py.File(path, "a") as f:
        f.require_group("node/nodes/fc1/metadata")["link"] = make(f, other)
    with pytest.raises(ModelFileError, match=f"'/node/nodes/fc1/metadata/link' is {kind} link; a NIR file holds "
                                             "hard links only"):
        read_nir(path)


def test_groups_nested_deeper_than_the_limit_are_refused(tmp_path):
    """1,500 nested groups used to exhaust Python's recursion in nir.read (RecursionError, an internal error)."""
    path = _mlp_file(tmp_path)
    with h5py.File(path, "a") as f:
        f.create_group("node/nodes/fc1/metadata/" + "/".join(["g"] * 1500))
    with pytest.raises(ModelFileError, match="nests groups deeper than 64"):
        read_nir(path)


def test_a_dataset_of_references_is_refused(tmp_path):
    """SECURITY.md refuses references; they used to pass the check (dtype kind 'O', as strings are)."""
    path = _mlp_file(tmp_path)
    with h5py.File(path, "a") as f:
        f.require_group("node/nodes/fc1/metadata").create_dataset("where", data=f["node"].ref, dtype=h5py.ref_dtype)
    with pytest.raises(ModelFileError, match=r"dataset '/node/nodes/fc1/metadata/where' holds object values, not numbers "
                                             r"or text"):
        read_nir(path)


def test_a_small_budget_is_kept(tmp_path):
    """A 16 KiB budget refuses the MLP's file (75 KB, its arrays about 30 KB), naming the dataset."""
    with pytest.raises(ModelFileError, match=r"dataset '/[\w/]+'.* would need .* the budget for reading it is 16.0 KiB"):
        read_nir(_mlp_file(tmp_path), MemoryBudget(16 << 10))


@pytest.mark.parametrize("change,message", [
    (lambda f: _replace(f, "node/nodes/fc1/bias", np.zeros(23)), "NIR Affine node 'fc1': its bias has 23 values; "
                                                                  "expected 1 or 24"),
    (lambda f: _replace(f, "node/nodes/fc1/weight", "not a weight"), "NIR Affine node 'fc1': its weight holds"),
    (lambda f: _replace(f, "node/nodes/fc3/bias", np.zeros((2, 5))), "NIR Affine node 'fc3': its bias holds float64 "
                                                                     "values of shape 2x5; expected finite numbers in 0 or 1"),
], ids=["bias length", "string weight", "bias shape"])
def test_node_parameters_of_the_wrong_shape_or_type_are_refused_naming_the_node(tmp_path, change, message):
    """A bias of the wrong length or a weight stored as a string used to end in 'internal error'."""
    path = _mlp_file(tmp_path)
    with h5py.File(path, "a") as f:
        change(f)
    proc = run_cli("convert", str(path), "--calib", "digits", "-o", str(tmp_path / "n.net.npz"), "-q", check=False)
    assert_one_line_error(proc, message)


def _replace(f, name: str, value) -> None:
    del f[name]
    if isinstance(value, str):
        f.create_dataset(name, data=value, dtype=h5py.string_dtype())
    else:
        f.create_dataset(name, data=value)
