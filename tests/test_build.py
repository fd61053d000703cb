"""``spikeforge build``: real bitstreams with yosys + nextpnr from PyPI, and the fit check before them."""

import json

import numpy as np
import pytest

from spikeforge.gen.build import BOARDS, BuildError, check_fit, parse_nextpnr_log, plan_for_board
from spikeforge.gen.netfile import save_network

from conftest import assert_one_line_error, make_network, run_cli

NEXTPNR_LOG = """Info: Device utilisation:
Info: 	         ICESTORM_LC:    3704/   5280    70%
Info: 	        ICESTORM_RAM:      28/     30    93%
Info: 	               SB_IO:       3/     39     7%
Info: Max frequency for clock 'board.clk': 18.10 MHz (PASS at 12.00 MHz)
Info: Device utilisation:
Info: 	         ICESTORM_LC:    3710/   5280    70%
Info: Max frequency for clock 'board.clk': 20.54 MHz (PASS at 12.00 MHz)
"""


def test_nextpnr_log_parsing_takes_the_final_figures():
    figures = parse_nextpnr_log(NEXTPNR_LOG)
    assert figures["utilisation"]["ICESTORM_LC"] == {"used": 3710, "total": 5280}
    assert figures["utilisation"]["ICESTORM_RAM"] == {"used": 28, "total": 30}
    assert (figures["fmax_mhz"], figures["clock_mhz"], figures["timing_met"]) == (20.54, 12.0, True)
    with pytest.raises(BuildError):
        parse_nextpnr_log("Info: nothing here\n")


def test_a_network_too_large_for_the_up5k_is_refused_before_synthesis(tmp_path):
    """A 784-128-10 MLP: 101,632 8-bit weights, far beyond the UP5K's 30 x 4 Kbit block RAM."""
    net = make_network(np.random.default_rng(0), [784, 128, 10], 8)
    with pytest.raises(BuildError, match="weights need 813,056 bits of block RAM, the device has 122,880"):
        check_fit(plan_for_board(net, BOARDS["icebreaker"]), BOARDS["icebreaker"])
    check_fit(plan_for_board(net, BOARDS["ulx3s-85f"]), BOARDS["ulx3s-85f"])    # the ECP5 has room
    path = save_network(net, tmp_path / "big.net.npz")
    proc = run_cli("build", str(path), "--board", "icebreaker", "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "does not fit the icebreaker (iCE40UP5K)", "122,880")
    assert not (tmp_path / "out").exists()


def test_digits_bitstream_for_the_icebreaker(tmp_path, digits_demo):
    """The digits MLP on the iCE40UP5K: a real bitstream, utilisation within the device, timing met."""
    out = tmp_path / "icebreaker"
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "icebreaker", "-o", str(out), "--json", "-q")
    report = json.loads(proc.stdout)
    assert (out / "top.bin").stat().st_size > 100_000
    assert json.loads((out / "report.json").read_text()) == report
    use = report["utilisation"]
    assert 0 < use["ICESTORM_LC"]["used"] <= use["ICESTORM_LC"]["total"] == 5280
    assert 0 < use["ICESTORM_RAM"]["used"] <= 30
    assert report["timing_met"] and report["fmax_mhz"] >= 12.0
    assert report["lanes"] == [1, 1, 1]
