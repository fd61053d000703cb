"""The emitted Verilog under the compiled Verilator harness (C++ driver), scored against the golden model.

Each design is compiled once per session (the build folder is keyed by the Verilog's hash).
Networks: the digits MLP and CNN, seeded random dense and convolutional networks, run-time
weights; streams back to back and under random gaps and backpressure; the test of the test;
waveforms; the ``simulate`` command.
"""

import json

import numpy as np
import pytest

from spikesmith.datasets import digits
from spikesmith.gen.netfile import load_network
from spikesmith.gen.sizing import plan_core
from spikesmith.sim import golden, harness
from spikesmith.sim.harness import build_harness, pack_beats, run_harness
from spikesmith.sim.random_networks import random_codes
from spikesmith.sim.verilator import fst_available

from conftest import RANDOM_NETWORKS, assert_one_line_error, random_core, run_cli
from datafiles import write_mnist

IMAGES_PER_RANDOM_NETWORK = 300


@pytest.fixture(scope="session")
def digits_harness(digits_demo, harness_cache):
    net = load_network(digits_demo["net_path"])
    plan = plan_core(net)
    return net, plan, build_harness(plan, harness_cache)


def assert_agrees(run, expected, images):
    assert run.first_mismatch is None, run.first_mismatch
    assert run.passed and run.extra == []
    assert run.images.tolist() == list(range(images)), "every image once, in order"
    assert np.array_equal(run.logits, expected.logits) and np.array_equal(run.labels, expected.predictions)


@pytest.mark.parametrize("case", range(len(RANDOM_NETWORKS)))
def test_packed_beats_equal_the_plans_beats(case, monkeypatch):
    """The vectorised packing (up to 16 codes of 16 bits per beat, several u32 words; 4 images at a
    time here) is InputPlan.beats."""
    monkeypatch.setattr(harness, "PACK_CHUNK", 4)
    net, plan = random_core(case, seed=case)
    codes = random_codes(net, 9, seed=case)
    packed = pack_beats(plan.input, codes)
    for image, row in zip(packed, codes):
        as_ints = [sum(int(w) << (32 * i) for i, w in enumerate(beat)) for beat in image]
        assert as_ints == plan.input.beats(row)


def test_digits_whole_test_split_back_to_back(digits_harness):
    """450 digits test images streamed back to back: every logit equals the golden model's."""
    net, plan, build = digits_harness
    images = digits("test").images
    expected = golden.run_images(net, images)
    run = run_harness(build, plan, net.input.encode(images, net.timesteps), expected)
    assert_agrees(run, expected, len(images))
    assert np.diff(run.result_cycles).max() <= plan.initiation_interval


def test_digits_under_random_gaps_and_backpressure(digits_harness):
    net, plan, build = digits_harness
    images = digits("test").images
    expected = golden.run_images(net, images)
    run = run_harness(build, plan, net.input.encode(images, net.timesteps), expected, seed=11,
                      valid_probability=0.3, ready_probability=0.2)
    assert_agrees(run, expected, len(images))


def test_backpressure_slows_the_stream_down(digits_harness):
    """The gaps and the backpressure really happen: the same images take more cycles under them."""
    net, plan, build = digits_harness
    images = digits("test").images[:60]
    expected = golden.run_images(net, images)
    codes = net.input.encode(images, net.timesteps)
    free = run_harness(build, plan, codes, expected)
    choked = run_harness(build, plan, codes, expected, seed=3, valid_probability=0.05, ready_probability=0.05)
    assert choked.passed and choked.cycles > free.cycles


@pytest.mark.parametrize("case", range(len(RANDOM_NETWORKS)))
def test_random_network_under_backpressure(case, harness_cache):
    net, plan = random_core(case, seed=300 + case, skip_silent=case % 2 == 0)
    build = build_harness(plan, harness_cache)
    codes = random_codes(net, IMAGES_PER_RANDOM_NETWORK, seed=case)
    expected = golden.run(net, codes)
    run = run_harness(build, plan, codes, expected, seed=case, valid_probability=0.6, ready_probability=0.4)
    assert_agrees(run, expected, len(codes))


def test_a_perturbed_golden_value_is_reported_as_a_mismatch(harness_cache):
    """The test of the test: change one golden logit and the comparison must catch it and say where."""
    net, plan = random_core(0, seed=300)
    build = build_harness(plan, harness_cache)
    codes = random_codes(net, 40, seed=9)
    expected = golden.run(net, codes)
    expected.logits[13, 2] += 1
    run = run_harness(build, plan, codes, expected)
    assert not run.passed and run.mismatches == 1
    assert run.first_mismatch.startswith(f"image 13: output layer logit 2 is {expected.logits[13, 2] - 1} "
                                         f"but the golden model says {expected.logits[13, 2]}")


def test_run_time_weights_written_through_the_port_then_bit_exact(harness_cache):
    """SPRAM-style weights: the harness writes every row through ``weights_load``, then streams images."""
    net, base = random_core(5, seed=405)
    plan = plan_core(net, lanes=[layer.lanes for layer in base.layers], input_lanes=base.input.lanes,
                     loaded_weights=range(len(net.layers)))
    build = build_harness(plan, harness_cache)
    codes = random_codes(net, 60, seed=5)
    expected = golden.run(net, codes)
    assert_agrees(run_harness(build, plan, codes, expected, seed=5, valid_probability=0.7, ready_probability=0.6),
                  expected, len(codes))


@pytest.mark.parametrize("case", [0, 1])
def test_random_conv_networks_under_backpressure(case, harness_cache):
    """Seeded random convolution networks (tests/test_conv_engine.py) as Verilog."""
    from test_conv_engine import conv_case

    net, lanes, input_lanes = conv_case(case, seed=40 + case)
    plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=case == 0, streaming=False)
    build = build_harness(plan, harness_cache)
    codes = random_codes(net, 120, seed=case)
    expected = golden.run(net, codes)
    run = run_harness(build, plan, codes, expected, seed=case, valid_probability=0.6, ready_probability=0.5)
    assert_agrees(run, expected, len(codes))


@pytest.mark.parametrize("streaming", [True, pytest.param(False, marks=pytest.mark.long)], ids=["stream", "event"])
def test_digits_cnn_whole_test_split(digits_demo, harness_cache, streaming):
    """The demo's CNN (two streaming convolutions, or two event-driven convolution engines, then dense): all 450
    test images back to back."""
    net = load_network(digits_demo["cnn_net_path"])
    plan = plan_core(net, streaming=streaming)
    if streaming:
        assert [stage.geometry.kernel for stage in plan.stream] == [(3, 3), (6, 6)] and len(plan.layers) == 1
    else:
        assert [layer.conv is not None for layer in plan.layers] == [True, True, False]
    images = digits("test").images
    expected = golden.run_images(net, images)
    run = run_harness(build_harness(plan, harness_cache), plan, net.input.encode(images, net.timesteps), expected,
                      seed=2, valid_probability=0.8, ready_probability=0.7)
    assert_agrees(run, expected, len(images))
    assert np.mean(run.labels == digits("test").labels) > 0.95


def test_waveform_of_the_first_images(tmp_path, harness_cache):
    """``waves``: a traced build writes the waveform, cut off after ``wave_images`` results."""
    net, plan = random_core(3, seed=303)
    build = build_harness(plan, harness_cache, waves=True)
    codes = random_codes(net, 40, seed=1)
    expected = golden.run(net, codes)
    dumps = {}
    for images in (2, 0):
        dumps[images] = tmp_path / f"dump{images}.{'fst' if fst_available() else 'vcd'}"
        run = run_harness(build, plan, codes, expected, waves=dumps[images], wave_images=images)
        assert run.passed and run.waves == dumps[images]
    assert 1000 < dumps[2].stat().st_size < dumps[0].stat().st_size, "two images trace less than forty"


def test_simulate_command_on_the_whole_digits_test_split(digits_demo, harness_cache):
    """``spikesmith simulate`` (the harness by default): 100% agreement, accuracy and cycles per image."""
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--data", "digits", "--build-dir", str(harness_cache),
                   "--valid", "0.5", "--ready", "0.5", "--seed", "4", "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["engine"] == "harness"
    assert report["images"] == report["results"] == 450
    assert report["agreement"] == 1.0 and report["mismatches"] == 0
    assert report["accuracy"] == report["golden_accuracy"] > 0.9
    assert 0 < report["steady_state_cycles_per_image"] <= report["initiation_interval_worst"]
    human = run_cli("simulate", str(digits_demo["net_path"]), "-n", "30", "--build-dir", str(harness_cache))
    assert "agreement with the golden model: 30/30 images (100.00%)" in human.stdout
    assert "compiled Verilator harness" in human.stdout


def test_simulate_command_writes_waves(small_digits_net, harness_cache, tmp_path):
    run_cli("simulate", str(small_digits_net), "-n", "8", "--build-dir", str(harness_cache),
            "--waves", str(tmp_path / "waves"), "--wave-images", "2", "-q")
    dump = tmp_path / "waves" / ("dump.fst" if fst_available() else "dump.vcd")
    assert dump.is_file() and dump.stat().st_size > 1000


def test_simulate_refuses_bad_input(tmp_path, digits_demo):
    write_mnist(tmp_path / "mnist", np.zeros((3, 28, 28)), np.zeros(3))
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--data", str(tmp_path / "mnist"),
                   "--build-dir", str(tmp_path / "cache"), check=False)
    assert_one_line_error(proc, "784 values")
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--lanes", "3", "--build-dir", str(tmp_path / "cache"),
                   check=False)
    assert_one_line_error(proc, "--lanes gives 1 values")
    proc = run_cli("simulate", str(digits_demo["net_path"]), "--ready", "0", "--build-dir", str(tmp_path / "cache"),
                   check=False)
    assert_one_line_error(proc, "--ready")
    assert not (tmp_path / "cache").exists(), "nothing built for bad input"
