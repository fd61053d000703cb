"""The emitted Verilog under Verilator driven by cocotb: where per-cycle control is the point.

The compiled harness (tests/test_harness.py) checks every design bit for bit at speed; these
tests keep the cocotb bench honest for what only it does: a reset in the middle of a stream,
its own scoreboard, waveforms, and ``simulate --engine cocotb``.
"""

import json

import numpy as np
import pytest

from spikesmith.sim import golden
from spikesmith.sim.random_networks import random_codes
from spikesmith.sim.verilator import build_core, fst_available, run_core

from conftest import random_core, run_cli


@pytest.fixture(scope="session")
def verilator_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("verilator")


def test_random_network_under_backpressure(verilator_cache):
    net, plan = random_core(3, seed=303, skip_silent=False)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 60, seed=3, sparse=False)
    expected = golden.run(net, codes)
    run = run_core(build, plan, codes, expected, seed=3, valid_probability=0.6, ready_probability=0.4)
    assert run.first_mismatch is None and run.passed and run.extra == [] and run.lost == []
    assert run.images.tolist() == list(range(len(codes))), "every image once, in order"
    assert np.array_equal(run.logits, expected.logits) and np.array_equal(run.labels, expected.predictions)


@pytest.mark.long
@pytest.mark.parametrize("case", [1, 3])
def test_reset_in_the_middle_of_a_stream(case, verilator_cache):
    """Images in flight at the reset are lost; every image sent after it gets its correct result."""
    net, plan = random_core(case, seed=300 + case, skip_silent=case % 2 == 0)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 40, seed=50 + case, sparse=False)
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
    net, plan = random_core(3, seed=303, skip_silent=False)
    build = build_core(plan, verilator_cache)
    codes = random_codes(net, 20, seed=9, sparse=False)
    expected = golden.run(net, codes)
    expected.logits[13, 2] += 1
    run = run_core(build, plan, codes, expected)
    assert not run.passed and run.mismatches == 1
    assert run.first_mismatch.startswith("image 13: output layer logit 2 is ")


@pytest.mark.long
def test_waveform_dump(tmp_path, monkeypatch, verilator_cache):
    monkeypatch.setenv("SPIKESMITH_WAVES", "1")
    net, plan = random_core(3, seed=303)
    build = build_core(plan, verilator_cache)
    assert build.waves
    codes = random_codes(net, 3, seed=1, sparse=False)
    run = run_core(build, plan, codes, golden.run(net, codes), test_dir=tmp_path)
    assert run.passed and run.waves == tmp_path / ("dump.fst" if fst_available() else "dump.vcd")
    assert run.waves.is_file() and run.waves.stat().st_size > 1000


@pytest.mark.long
def test_simulate_command_with_the_cocotb_engine(small_digits_net, verilator_cache):
    """``simulate --engine cocotb``: the old path, still exact."""
    proc = run_cli("simulate", str(small_digits_net), "-n", "20", "--engine", "cocotb",
                   "--build-dir", str(verilator_cache), "--json", "-q")
    report = json.loads(proc.stdout)
    assert report["engine"] == "cocotb" and report["images"] == report["results"] == 20
    assert report["agreement"] == 1.0 and report["mismatches"] == 0


def test_the_harness_and_cocotb_see_the_same_cycles(verilator_cache, tmp_path):
    """Free-running, both benches make the same transfers on the same cycles: every result's cycle agrees."""
    from spikesmith.sim.harness import build_harness, run_harness

    net, plan = random_core(3, seed=303, skip_silent=False)
    codes = random_codes(net, 40, seed=8, sparse=False)
    expected = golden.run(net, codes)
    cocotb_run = run_core(build_core(plan, verilator_cache), plan, codes, expected)
    harness_run = run_harness(build_harness(plan, tmp_path), plan, codes, expected)
    assert cocotb_run.passed and harness_run.passed
    assert harness_run.result_cycles.tolist() == cocotb_run.result_cycles.tolist()
