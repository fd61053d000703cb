"""The emitted Verilog under Verilator + cocotb, scored against the golden model (issue: cocotb regression).

Each design is verilated once per session (the build directory is keyed by the Verilog's
hash). Networks: the digits MLP and five seeded random networks; streams under random
backpressure, long back-to-back runs, and a reset in the middle of a stream.
"""

import json

import numpy as np
import pytest

from spikesmith.datasets import digits
from spikesmith.gen.netfile import load_network
from spikesmith.gen.sizing import plan_core
from spikesmith.sim import golden
from spikesmith.sim.verilator import build_core, fst_available, run_core

from conftest import assert_one_line_error, random_core, run_cli
from datafiles import write_mnist

RANDOM_CASES = [0, 1, 2, 3, 4]        # indices into conftest.RANDOM_NETWORKS
IMAGES_PER_RANDOM_NETWORK = 130


@pytest.fixture(scope="session")
def verilator_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("verilator")


@pytest.fixture(scope="session")
def digits_core(digits_demo, verilator_cache):
    net = load_network(digits_demo["net_path"])
    plan = plan_core(net)
    return net, plan, build_core(plan, verilator_cache)


def random_codes(net, count, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, net.max_code + 1, size=(count, net.input.size))
    codes[::17] = 0                                       # silent images
    codes[5::23] = net.max_code                           # saturating images
    return codes


def assert_agrees(run, expected, images):
    assert run.first_mismatch is None, run.first_mismatch
    assert run.passed and run.extra == [] and run.lost == []
    assert run.images.tolist() == list(range(images)), "every image once, in order"
    assert np.array_equal(run.logits, expected.logits) and np.array_equal(run.labels, expected.predictions)


def test_digits_whole_test_split_back_to_back(digits_core):
    """450 digits test images streamed back to back: every logit equals the golden model's."""
    net, plan, build = digits_core
    images = digits("test").images
    expected = golden.run_images(net, images)
    run = run_core(build, plan, net.input.encode(images, net.timesteps), expected)
    assert_agrees(run, expected, len(images))
    assert np.diff(run.result_cycles).max() <= plan.initiation_interval


def test_digits_under_random_backpressure(digits_core):
    net, plan, build = digits_core
    images = digits("test").images[::3]
    expected = golden.run_images(net, images)
    run = run_core(build, plan, net.input.encode(images, net.timesteps), expected, seed=11,
                   valid_probability=0.5, ready_probability=0.25)
    assert_agrees(run, expected, len(images))


@pytest.mark.parametrize("case", RANDOM_CASES)
def test_random_network_under_backpressure(case, verilator_cache):
    net, plan = random_core(case, seed=300 + case, skip_silent=case % 2 == 0)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, IMAGES_PER_RANDOM_NETWORK, seed=case)
    expected = golden.run(net, codes)
    run = run_core(build, plan, codes, expected, seed=case, valid_probability=0.6, ready_probability=0.4)
    assert_agrees(run, expected, len(codes))


@pytest.mark.parametrize("case", [1, 3])
def test_reset_in_the_middle_of_a_stream(case, verilator_cache):
    """Images in flight at the reset are lost; every image sent after it gets its correct result."""
    net, plan = random_core(case, seed=300 + case, skip_silent=case % 2 == 0)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 60, seed=50 + case)
    expected = golden.run(net, codes)
    reset_at = 12 * plan.initiation_interval // 2
    run = run_core(build, plan, codes, expected, seed=case, valid_probability=0.8, ready_probability=0.5,
                   reset_at=reset_at)
    assert run.first_mismatch is None and run.passed, run.first_mismatch
    assert run.lost, "the reset should catch some images in flight"
    assert sorted(run.images.tolist() + run.lost) == list(range(len(codes))), "each image: a result or lost"
    after = [n for n in run.images if n > max(run.lost)]
    assert len(after) >= 20, "many images after the reset"
    for n, logits in zip(run.images, run.logits):
        assert logits.tolist() == expected.logits[n].tolist()


def test_a_perturbed_golden_value_fails_with_a_mismatch_report(verilator_cache):
    """The test of the test: change one golden logit and the scoreboard must catch it and say where."""
    net, plan = random_core(0, seed=300)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 20, seed=9)
    expected = golden.run(net, codes)
    expected.logits[13, 2] += 1
    run = run_core(build, plan, codes, expected)
    assert not run.passed and run.mismatches == 1
    assert run.first_mismatch.startswith("image 13: output layer logit 2 is ")


def test_waveform_dump(tmp_path, monkeypatch, verilator_cache):
    monkeypatch.setenv("SPIKESMITH_WAVES", "1")
    net, plan = random_core(3, seed=303)
    build = build_core(plan, verilator_cache)
    assert build.waves
    codes = random_codes(net, 3, seed=1)
    run = run_core(build, plan, codes, golden.run(net, codes), test_dir=tmp_path)
    assert run.passed and run.waves == tmp_path / ("dump.fst" if fst_available() else "dump.vcd")
    assert run.waves.is_file() and run.waves.stat().st_size > 1000


def test_simulate_command_on_the_whole_digits_test_split(digits_demo, digits_core, verilator_cache):
    """``spikesmith simulate``: 100% agreement with the golden model, accuracy and cycles per image."""
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--data", "digits", "--build-dir", str(verilator_cache),
                   "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["images"] == report["results"] == 450
    assert report["agreement"] == 1.0 and report["mismatches"] == 0
    assert report["accuracy"] == report["golden_accuracy"] > 0.9
    assert 0 < report["steady_state_cycles_per_image"] <= report["initiation_interval_worst"]
    assert report["build"] == str(digits_core[2].directory), "the session's Verilator build is reused"
    human = run_cli("simulate", str(digits_demo["net_path"]), "-n", "30", "--build-dir", str(verilator_cache))
    assert "agreement with the golden model: 30/30 images (100.00%)" in human.stdout


def test_simulate_refuses_bad_input(tmp_path, digits_demo):
    write_mnist(tmp_path / "mnist", np.zeros((3, 28, 28)), np.zeros(3))
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--data", str(tmp_path / "mnist"),
                   "--build-dir", str(tmp_path / "cache"), check=False)
    assert_one_line_error(proc, "784 values")
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--lanes", "3", "--build-dir", str(tmp_path / "cache"),
                   check=False)
    assert_one_line_error(proc, "--lanes gives 1 values")
    assert not (tmp_path / "cache").exists(), "nothing built for bad input"


@pytest.mark.parametrize("case", [5])
def test_run_time_weights_written_through_the_port_then_bit_exact(case, verilator_cache):
    """The emitted Verilog with SPRAM-style weights: the bench writes every row, then streams images."""
    from spikesmith.gen.sizing import plan_core

    net, base = random_core(case, seed=400 + case)
    plan = plan_core(net, lanes=[layer.lanes for layer in base.layers], input_lanes=base.input.lanes,
                     loaded_weights=range(len(net.layers)))
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 20, seed=case)
    expected = golden.run(net, codes)
    assert_agrees(run_core(build, plan, codes, expected, seed=case, valid_probability=0.7, ready_probability=0.6),
                  expected, len(codes))


@pytest.fixture(scope="session")
def digits_cnn_core(digits_demo, verilator_cache):
    net = load_network(digits_demo["cnn_net_path"])
    plan = plan_core(net)
    return net, plan, build_core(plan, verilator_cache)


def test_digits_cnn_whole_test_split(digits_cnn_core):
    """The demo's CNN (two convolution engines, then dense) as Verilog: all 450 test images back to
    back, every logit equal to the golden model's."""
    net, plan, build = digits_cnn_core
    assert [layer.conv is not None for layer in plan.layers] == [True, True, False]
    images = digits("test").images
    expected = golden.run_images(net, images)
    run = run_core(build, plan, net.input.encode(images, net.timesteps), expected)
    assert_agrees(run, expected, len(images))
    assert np.diff(run.result_cycles).max() <= plan.initiation_interval
    assert np.mean(run.labels == digits("test").labels) > 0.95


def test_digits_cnn_under_backpressure(digits_cnn_core):
    net, plan, build = digits_cnn_core
    images = digits("test").images[::15]
    expected = golden.run_images(net, images)
    run = run_core(build, plan, net.input.encode(images, net.timesteps), expected, seed=3,
                   valid_probability=0.7, ready_probability=0.5)
    assert_agrees(run, expected, len(images))


@pytest.mark.parametrize("case", [0, 1])
def test_random_conv_networks_under_backpressure(case, verilator_cache):
    """Seeded random convolution networks (tests/test_conv_engine.py) as Verilog."""
    from test_conv_engine import conv_case

    net, lanes, input_lanes = conv_case(case, seed=40 + case)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=case == 0)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 40, seed=case)
    expected = golden.run(net, codes)
    run = run_core(build, plan, codes, expected, seed=case, valid_probability=0.6, ready_probability=0.5)
    assert_agrees(run, expected, len(codes))
