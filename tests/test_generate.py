"""``spikesmith generate``: Verilog that Verilator lints clean, and a report whose numbers hold."""

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from spikesmith.gen.emit import LINT_WAIVERS, lint_verilog, multiplications
from spikesmith.gen.netfile import load_network
from spikesmith.gen.sizing import choose_lanes, plan_core
from spikesmith.hw.core import emit_verilog

from conftest import RANDOM_NETWORKS, assert_one_line_error, make_network, random_core, run_cli


def memories(verilog: str) -> dict[str, list[int]]:
    """Bits of every memory declared in the Verilog (``reg [W-1:0] name [D-1:0];``), by name."""
    found = {}
    for width, name, depth in re.findall(r"^\s*reg \[(\d+):0\] (\S+) \[(\d+):0\];", verilog, re.M):
        found.setdefault(name, []).append((int(width) + 1) * (int(depth) + 1))
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory, digits_demo):
    out = tmp_path_factory.mktemp("gen") / "core"
    proc = run_cli("generate", str(digits_demo["net_path"]), "-o", str(out), "--json", "-q")
    return {"out": out, "json": json.loads(proc.stdout), "net": load_network(digits_demo["net_path"])}


def test_generate_writes_lint_clean_verilog(generated):
    verilog_path = generated["out"] / "spikesmith_core.v"
    assert lint_verilog(verilog_path) == [], "verilator -Wall reports something not waived"
    text = verilog_path.read_text()
    header = re.search(r"^module spikesmith_core\((.*)\);", text, re.M).group(1)
    assert sorted(p.strip() for p in header.split(",")) == sorted([
        "clk", "rst", "images__valid", "images__ready", "images__payload",
        "results__valid", "results__ready", "results__payload"]), "the documented port list"
    assert multiplications(text) == [], "the neuron datapath uses adders and shifts only"
    assert generated["json"]["lint"] == {"clean": True, "waived": LINT_WAIVERS}


def test_report_numbers_match_the_plan_and_the_verilog(generated):
    report, net = generated["json"], generated["net"]
    plan = plan_core(net)
    saved = json.loads((generated["out"] / "report.json").read_text())
    assert saved == plan.report()
    assert report["initiation_interval"] == plan.initiation_interval == max(report["stage_cycles_worst"].values())
    assert report["total_lanes"] <= 64
    for layer, entry in zip(net.layers, report["layers"]):
        assert entry["blocks"] == -(-layer.out_size // entry["lanes"])
        rows = entry["blocks"] * entry["lanes"]
        assert entry["memory_bits"]["weights"] == rows * layer.in_size * entry["weight_width"]
    # Every memory the report counts is one the Verilog declares, bit for bit.
    declared = sum(sum(bits) for bits in memories((generated["out"] / "spikesmith_core.v").read_text()).values())
    assert declared == report["memory_bits"]
    # The ports are as wide as the report says.
    width = report["input"]["lanes"] * report["timesteps"]
    assert re.search(rf"input \[{width - 1}:0\] images__payload;", (generated["out"] / "spikesmith_core.v").read_text())


def test_generate_human_output(tmp_path, digits_demo):
    proc = run_cli("generate", str(digits_demo["net_path"]), "-o", str(tmp_path / "c"), "--lanes", "8", "4", "2",
                   "--no-skip")
    assert "initiation interval" in proc.stdout and "every neuron" in proc.stdout
    assert "linting with Verilator" in proc.stderr
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert [layer["lanes"] for layer in report["layers"]] == [8, 4, 2] and report["skip_silent"] is False


@pytest.mark.parametrize("args,fragment", [
    (["--lanes", "8", "4"], "--lanes gives 2 values but the network has 3 layers"),
    (["--lanes", "8", "4", "11"], "11 lanes, but it has 10 neurons"),
    (["--lane-budget", "2"], "below one lane per layer"),
    (["--input-lanes", "65"], "input lanes must be 1..64"),
])
def test_generate_refuses_bad_sizing(tmp_path, digits_demo, args, fragment):
    out = tmp_path / "core"
    proc = run_cli("generate", str(digits_demo["net_path"]), "-o", str(out), *args, check=False)
    assert_one_line_error(proc, fragment)
    assert not out.exists(), "nothing written on error"


def test_generate_refuses_bad_paths(tmp_path, digits_demo):
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(run_cli("generate", str(digits_demo["net_path"]), "-o", str(target), check=False),
                          "it is a file")
    assert_one_line_error(run_cli("generate", str(digits_demo["net_path"]), "-o", str(tmp_path / "a" / "b"),
                                  check=False), "does not exist")
    bad = tmp_path / "bad.net.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    assert_one_line_error(run_cli("generate", str(bad), "-o", str(tmp_path / "c"), check=False),
                          "not a valid spikesmith network")
    assert not (tmp_path / "c").exists()


def test_lint_reports_real_problems(tmp_path):
    """The lint is not a rubber stamp: an undriven output and a width bug in plain Verilog are reported."""
    path = tmp_path / "spikesmith_core.v"
    path.write_text("module spikesmith_core(input clk, output [3:0] q, output r);\n"
                    "  reg [3:0] a;\n  always @(posedge clk) a <= a + 1;\n  assign q = a;\nendmodule\n")
    assert any("UNDRIVEN" in w for w in lint_verilog(path))


def test_lanes_balance_the_layers():
    """More budget never slows the core; the chosen lanes stay within the budget."""
    net = make_network(np.random.default_rng(5), [40, 30, 20, 10], 6)
    intervals = []
    for budget in (3, 6, 12, 24, 48, 60):
        lanes = choose_lanes(net, budget)
        assert sum(lanes) <= budget
        intervals.append(plan_core(net, lanes=lanes).initiation_interval)
    assert intervals == sorted(intervals, reverse=True) and intervals[-1] < intervals[0]


@pytest.mark.parametrize("case", range(len(RANDOM_NETWORKS)))
def test_random_cores_lint_clean_and_memories_match(case):
    """Odd shapes too: one-row layers, one-lane layers, T = 1 and 16, 2-bit weights."""
    net, plan = random_core(case, seed=case)
    text = emit_verilog(plan)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spikesmith_core.v"
        path.write_text(text)
        assert lint_verilog(path) == []
    declared = sum(sum(bits) for bits in memories(text).values())
    assert declared == plan.memory_bits()


@pytest.mark.parametrize("streaming", [False, True], ids=["event", "stream"])
@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_conv_cores_lint_clean_without_multipliers_and_memories_match(case, streaming):
    """Convolution engines (event-driven and streaming): the address tables and counters are adders and case
    statements; every memory the plan counts is one the Verilog declares."""
    from test_conv_engine import conv_case

    net, lanes, input_lanes = conv_case(case)
    plan = (plan_core(net, lanes=lanes, input_lanes=input_lanes, streaming=False) if not streaming
            else plan_core(net, chunks=[3] * sum(layer.conv is not None for layer in net.layers[:-1])))
    text = emit_verilog(plan)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spikesmith_core.v"
        path.write_text(text)
        assert lint_verilog(path) == []
    assert multiplications(text) == []
    assert sum(sum(bits) for bits in memories(text).values()) == plan.memory_bits()


def test_generate_reports_the_convolutions_of_the_digits_cnn(tmp_path, digits_demo):
    """The demo's CNN streams its two convolutions (the second with its pool composed in: 6x6, stride 2)."""
    report = json.loads(run_cli("generate", str(digits_demo["cnn_net_path"]), "-o", str(tmp_path / "core"),
                                "--json", "-q").stdout)
    conv0, conv1 = report["stream"]
    [dense] = report["layers"]
    assert conv0["engine"] == conv1["engine"] == "streaming convolution"
    assert conv0["convolution"] == {"in_shape": [1, 8, 8], "out_channels": 8, "kernel": [3, 3], "stride": [1, 1],
                                    "padding": [1, 1]}
    assert conv1["convolution"]["kernel"] == [6, 6] and conv1["convolution"]["stride"] == [2, 2]
    assert "convolution" not in dense and dense["inputs"] == 16 * 4 * 4
    # The line buffer holds 2 * kh + sh rows of the input, not a map of membranes.
    assert conv1["memory_bits"]["line buffer"] == (2 * 6 + 2) * 8 * 8 * 8
    assert conv0["chunks"] * conv0["chunk"] >= 9 and report["lint"]["clean"]


def test_generate_takes_the_streaming_parallelism_or_the_event_driven_engines(tmp_path, digits_demo):
    """``--lanes`` and ``--chunks`` set each streaming convolution's output channels and taps a cycle;
    ``--event-driven`` puts the convolutions on the event-driven engines; a wrong count is one line."""
    net = str(digits_demo["cnn_net_path"])
    streamed = json.loads(run_cli("generate", net, "-o", str(tmp_path / "a"), "--lanes", "4", "8", "2",
                                  "--chunks", "9x2", "12", "--json", "-q").stdout)
    assert [(s["lanes"], s["chunk"], s["op_steps"]) for s in streamed["stream"]] == [(4, 9, 2), (8, 12, 1)]
    assert [layer["lanes"] for layer in streamed["layers"]] == [2]
    event = json.loads(run_cli("generate", net, "-o", str(tmp_path / "b"), "--event-driven", "--json", "-q").stdout)
    assert event["stream"] == [] and [layer["engine"] for layer in event["layers"]][:2] == ["convolution"] * 2
    proc = run_cli("generate", net, "-o", str(tmp_path / "c"), "--chunks", "9", check=False)
    assert_one_line_error(proc, "--chunks gives 1 values but the network streams 2 convolutions")
    assert not (tmp_path / "c").exists()
    proc = run_cli("generate", net, "-o", str(tmp_path / "d"), "--chunks", "9x3", "12", check=False)
    assert_one_line_error(proc, "argument --chunks: a chunk's K is at least 1 and its S a power of two, not '9x3'")
    assert not (tmp_path / "d").exists()
