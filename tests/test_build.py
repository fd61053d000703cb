"""``spikesmith build``: real bitstreams with yosys + nextpnr from PyPI, and the fit check before them."""

import json

import numpy as np
import pytest

from spikesmith.gen.build import (BOARDS, BuildError, check_fit, clock_for_baud, ecp5_usage, ice40_usage, parse_critical_paths,
                                  fastest, parse_nextpnr_log, place_and_route, plan_for_board, seed_script,
                                  speed_candidates)
from spikesmith.gen.netfile import load_network, save_network
from spikesmith.hw.clocking import ClockError, ecp5_pll, ice40_pll

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


CRITICAL_PATHS_LOG = """Info: Critical path report for clock 'board.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  1.39  1.39 Source board.core.layer1.banks.membranes0.0.1_RDATA_8_SB_DFFE_Q_D_SB_LUT4_O_LC.O
Info:    routing  3.06  4.45 Net board.core.layer1.banks.membranes0.0.0_RDATA[0] (8,22) -> (7,19)
Info:                          Sink board.core.layer1.firestage.fire0.difference_SB_LUT4_I3_LC.I1
Info:      logic  1.23  5.68 Source board.core.layer1.firestage.fire0.difference_SB_LUT4_I3_LC.O
Info:    routing  1.76  7.44 Net board.core.layer1.firestage.fire0.difference[1] (7,19) -> (8,19)
Info:                          Sink board.core.layer1.banks.membranes1.0.0_WDATA_SB_LUT4_O_LC.I3
Info:      setup  0.82  8.26 Source board.core.layer1.banks.membranes1.0.0_WDATA_SB_LUT4_O_LC.I3
Info: 3.44 ns logic, 4.82 ns routing

Info: Critical path report for cross-domain path '<async>' -> 'posedge board.clk':
Info:       type curr  total name
Info:     source  0.00  0.00 Source pin_uart_0__rx.buf.buf0.D_IN_0
Info:    routing  2.41  2.41 Net pin_uart_0__rx$i (0,12) -> (1,12)
Info:                          Sink board.uart_rx.rx$3_SB_LUT4_I3_LC.I3
Info: 0.82 ns logic, 2.41 ns routing
"""


AMARANTH_SCRIPT = """#!/bin/sh
set -e
: ${YOSYS:=yosys}
: ${NEXTPNR_ICE40:=nextpnr-ice40}
"$YOSYS" -q -l top.rpt top.ys
"$NEXTPNR_ICE40" --quiet --log top.tim --up5k --json top.json --asc top.asc
"$ICEPACK" top.asc top.bin
"""


def test_a_failure_yosys_logs_only_in_its_own_log_is_the_one_line(tmp_path):
    """yosys writes an internal assertion only to top.rpt (its ``-l`` log): the one line names it, and a
    failure without any message says so instead of ending in a colon."""
    from spikesmith.gen.build import BOARDS, tools_failed

    (tmp_path / "build.log").write_text("\n\n")
    assert str(tools_failed(tmp_path, BOARDS["ulx3s-85f"])).endswith("failed for the ulx3s-85f: no message in their logs")
    (tmp_path / "top.rpt").write_text("4.46.22.7. Executing ABC_OPS_REINTEGRATE pass\n"
                                      "ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)' failed\n")
    assert str(tools_failed(tmp_path, BOARDS["ulx3s-85f"])).endswith(
        "ulx3s-85f: ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)' failed")


def test_a_further_seed_places_the_same_netlist_again():
    first, again = seed_script(AMARANTH_SCRIPT, 1, synthesis=True), seed_script(AMARANTH_SCRIPT, 4, synthesis=False)
    assert '"$YOSYS"' in first and '"$YOSYS"' not in again and '"$ICEPACK"' in again
    assert "--asc top.asc --seed 1\n" in first and "--asc top.asc --seed 4\n" in again
    users = AMARANTH_SCRIPT.replace("--quiet", "--quiet --seed 9")
    assert "--seed 9" in seed_script(users, 2, synthesis=False) and "--seed 2" not in seed_script(users, 2, synthesis=False)


def _fake_tools(tmp_path, monkeypatch, fmax_by_seed: dict, allow_fail: bool):
    """A work folder whose nextpnr is a stand-in: it logs the given Fmax for its --seed against a 40 MHz
    clock, and fails at a miss unless ``allow_fail`` (as nextpnr does without --timing-allow-fail)."""
    fake = tmp_path / "nextpnr"
    fake.write_text(f"""#!/bin/sh
seed=$(echo "$@" | sed 's/.*--seed \\([0-9]*\\).*/\\1/')
case $seed in {' '.join(f'{k}) f={v};;' for k, v in fmax_by_seed.items())} esac
verdict=$(awk "BEGIN {{print ($f >= 40) ? \\"PASS\\" : \\"FAIL\\"}}")
printf 'Info: Device utilisation:\\nInfo: \\t ICESTORM_LC:  4000/  5280  75%%\\n' > top.tim
printf "Info: Max frequency for clock 'board.clk': %s MHz (%s at 40.00 MHz)\\n" $f $verdict >> top.tim
echo "placed from seed $seed" >> placed.txt
[ $verdict = PASS ] || [ {int(allow_fail)} = 1 ] || {{ echo "ERROR: Max frequency: FAIL"; exit 1; }}
""")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "build_top.sh").write_text(AMARANTH_SCRIPT)
    for tool, path in (("YOSYS", "true"), ("NEXTPNR_ICE40", str(fake)), ("ICEPACK", "true")):
        monkeypatch.setenv(tool, path)
    return work


def test_placement_stops_at_the_first_seed_that_meets_the_clock(tmp_path, monkeypatch):
    work = _fake_tools(tmp_path, monkeypatch, {1: 38.8, 2: 41.5, 3: 45.0}, allow_fail=False)
    figures, placement = place_and_route(work, BOARDS["icebreaker"], 5, progress=lambda message: None)
    assert figures["timing_met"] and figures["fmax_mhz"] == 41.5
    assert placement == {"seed": 2, "fmax_mhz_by_seed": {1: 38.8, 2: 41.5}}


def test_a_clock_no_seed_meets_is_refused_naming_each_seeds_fmax(tmp_path, monkeypatch):
    work = _fake_tools(tmp_path, monkeypatch, {1: 38.8, 2: 38.2, 3: 35.1}, allow_fail=False)
    with pytest.raises(BuildError, match=r"Fmax 38\.8, 38\.2, 35\.1 MHz from seeds 1-3"):
        place_and_route(work, BOARDS["icebreaker"], 3, progress=lambda message: None)


def test_with_timing_allowed_to_fail_the_best_seed_is_placed_again(tmp_path, monkeypatch):
    work = _fake_tools(tmp_path, monkeypatch, {1: 36.0, 2: 38.9, 3: 35.1}, allow_fail=True)
    figures, placement = place_and_route(work, BOARDS["icebreaker"], 3, progress=lambda message: None)
    assert not figures["timing_met"] and figures["fmax_mhz"] == 38.9 and placement["seed"] == 2
    assert (work / "placed.txt").read_text().split("\n")[-2] == "placed from seed 2", "its outputs are the ones kept"


def test_critical_paths_are_read_from_nextpnrs_report():
    """Slowest first, with where each starts and ends, the modules it crosses and its logic/routing split."""
    paths = parse_critical_paths(CRITICAL_PATHS_LOG)
    assert [p["clock"] for p in paths] == ["board.clk", "<async> -> posedge board.clk"]
    core = paths[0]
    assert core["from"] == "board.core.layer1.banks.membranes0.0.1" and core["to"] == "board.core.layer1.banks.membranes1.0.0"
    assert core["through"] == ["board.core.layer1.banks.membranes0.0", "board.core.layer1.firestage.fire0",
                               "board.core.layer1.banks.membranes1.0"]
    assert (core["delay_ns"], core["logic_ns"], core["routing_ns"]) == (8.26, 3.44, 4.82)
    assert parse_nextpnr_log(NEXTPNR_LOG + CRITICAL_PATHS_LOG)["critical_paths"] == paths


def test_a_network_too_large_for_the_up5k_is_refused_before_synthesis(tmp_path):
    """A 784-256-10 MLP: 203,264 8-bit weights, beyond the UP5K's block RAM and SPRAM together."""
    net = make_network(np.random.default_rng(0), [784, 256, 10], 8)
    # Its first layer alone in SPRAM leaves 31 block RAMs (the LOAD buffer's among them): the second goes there too.
    with pytest.raises(BuildError, match=r"needs about 28 block RAMs and 8 SPRAMs \(weights 1,626,112 bits\), "
                                         r"the device has 30 block RAMs of 4096 bits and 4 SPRAMs"):
        check_fit(plan_for_board(net, BOARDS["icebreaker"]), BOARDS["icebreaker"])
    check_fit(plan_for_board(net, BOARDS["ulx3s-85f"]), BOARDS["ulx3s-85f"])    # the ECP5 has room
    path = save_network(net, tmp_path / "big.net.npz")
    proc = run_cli("build", str(path), "--board", "icebreaker", "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "does not fit the icebreaker (iCE40UP5K)", "4 SPRAMs")
    assert not (tmp_path / "out").exists()


def test_membranes_beyond_the_ecp5_are_refused_before_synthesis_naming_them(tmp_path):
    """Two 16-channel 3x3 convolutions on 64x64 maps on the event-driven engines: few weights, but 2 x 2 banks
    of 65,536 membranes each, beyond the ECP5-85F's 208 DP16KD blocks: refused with the estimate per kind,
    membranes first. Streamed (the default), the same network keeps line buffers of its input rows and fits."""
    from conftest import make_conv_network

    net = make_conv_network(np.random.default_rng(0), (1, 64, 64), [(16, (3, 3), (1, 1), (1, 1))] * 2, 2, 8)
    plan = plan_for_board(net, BOARDS["ulx3s-85f"], lanes=[4, 4, 1], streaming=False)
    with pytest.raises(BuildError, match=r"ulx3s-85f \(LFE5U-85F\): it needs about \d+ DP16KD block RAMs "
                                         r"\(membranes \d+, .*\), the device has 208 of 18432 bits"):
        check_fit(plan, BOARDS["ulx3s-85f"])
    streamed = plan_for_board(net, BOARDS["ulx3s-85f"])
    assert streamed.stream and ecp5_usage(streamed).get("membranes", 0) == 0
    check_fit(streamed, BOARDS["ulx3s-85f"])


def test_a_network_beyond_the_ecp5_block_ram_is_refused_in_one_line(tmp_path):
    """A 784-4096-10 MLP: 3.3 Mbit of weights, beyond the ECP5-85F's block RAM: refused before synthesis."""
    net = make_network(np.random.default_rng(0), [784, 4096, 10], 8)
    path = save_network(net, tmp_path / "wide.net.npz")
    proc = run_cli("build", str(path), "--board", "ulx3s-85f", "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "does not fit the ulx3s-85f", "weights")
    assert not (tmp_path / "out").exists()


def test_mnist_sized_mlp_fits_the_up5k_with_its_first_layer_in_spram(digits_demo):
    """784-128-10: the first layer's 802,816 weight bits go to SPRAM, two 8-bit lanes per 16-bit row."""
    net = make_network(np.random.default_rng(0), [784, 128, 10], 8)
    plan = plan_for_board(net, BOARDS["icebreaker"])
    assert [layer.weights_loaded for layer in plan.layers] == [True, False]
    assert plan.layers[0].lanes == 2 and plan.layers[0].weight_row_width == 16
    blocks, sprams = ice40_usage(plan)
    assert sprams == 4 and blocks <= 30
    check_fit(plan, BOARDS["icebreaker"])
    digits = load_network(digits_demo["net_path"])
    assert not plan_for_board(digits, BOARDS["icebreaker"]).loaded_layers      # block RAM is enough


@pytest.mark.parametrize("seeds", ["0", "51", "two"])
def test_a_seed_count_out_of_range_is_refused_in_one_line(tmp_path, seeds):
    proc = run_cli("build", str(tmp_path / "any.net.npz"), "--board", "icebreaker", "--seeds", seeds,
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "--seeds")
    assert not (tmp_path / "out").exists()


def test_spram_on_a_board_without_it_is_refused(tmp_path, digits_demo):
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "ulx3s-85f", "--spram", "0",
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "the ulx3s-85f (LFE5U-85F) has no SPRAM")
    proc = run_cli("generate", str(digits_demo["net_path"]), "--spram", "7", "-o", str(tmp_path / "v"), check=False)
    assert_one_line_error(proc, "--spram names layer 7; the network's layers are 0..2")


PLL_LOG = """Info: Max frequency for clock 'clk12_0__io': 250.00 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock 'clocking.sync_clk': 17.10 MHz (FAIL at 18.00 MHz)
Info: Device utilisation:
Info: 	         ICESTORM_LC:    3704/   5280    70%
Info: Max frequency for clock 'clocking.sync_clk': 19.40 MHz (PASS at 18.00 MHz)
Info: Max frequency for clock 'clk12_0__io': 300.00 MHz (PASS at 12.00 MHz)
"""


def test_with_a_pll_the_fmax_is_the_core_clocks():
    figures = parse_nextpnr_log(PLL_LOG)
    assert (figures["fmax_mhz"], figures["clock_mhz"], figures["timing_met"]) == (19.4, 18.0, True)


@pytest.mark.parametrize("target_mhz", [16, 18, 24, 30, 33.3, 48, 100, 200])
def test_ice40_pll_settings_stay_in_the_device_limits(target_mhz):
    config = ice40_pll(12e6, target_mhz * 1e6)
    pfd = 12e6 / (config.divr + 1)
    vco = pfd * (config.divf + 1)
    assert 10e6 <= pfd <= 133e6 and 533e6 <= vco <= 1066e6 and 1 <= config.divq <= 6
    assert config.output_hz == vco / 2 ** config.divq
    assert abs(config.output_hz - target_mhz * 1e6) <= 0.01 * target_mhz * 1e6


@pytest.mark.parametrize("target_mhz", [12.5, 25, 40, 50, 62.5, 75, 100, 133])
def test_ecp5_pll_settings_stay_in_the_device_limits(target_mhz):
    config = ecp5_pll(25e6, target_mhz * 1e6)
    vco = config.output_hz * config.clkop_div
    assert 3.125e6 <= 25e6 / config.clki_div <= 400e6 and 400e6 <= vco <= 800e6
    assert 1 <= config.clkfb_div <= 80 and 1 <= config.clkop_div <= 128
    assert abs(config.output_hz - target_mhz * 1e6) <= 0.01 * target_mhz * 1e6


@pytest.mark.parametrize("board, baud", [("icebreaker", 115200), ("icebreaker", 3_000_000),
                                         ("ulx3s-85f", 115200), ("ulx3s-85f", 5_000_000)])
def test_an_oscillator_that_makes_the_baud_rate_needs_no_pll(board, baud):
    """12 MHz is 4 bit periods of 3 Mbaud (the FT2232H's top rate); 25 MHz is 5 of 5 Mbaud."""
    assert clock_for_baud(BOARDS[board], baud) is None


@pytest.mark.parametrize("baud", [2_000_000, 3_000_000])
def test_a_baud_rate_the_oscillator_misses_gets_the_slowest_pll_clock_that_makes_it(baud):
    """25 MHz is 8.33 bit periods of 3 Mbaud (4 % off): the PLL clock chosen is a whole number of bit
    periods within 2 %, one the PLL makes, no slower than the oscillator and within the board's limit."""
    board = BOARDS["ulx3s-85f"]
    clock = clock_for_baud(board, baud)
    assert board.clock_hz <= clock <= board.uart_clock_hz
    divisor = round(clock / baud)
    assert divisor >= 4 and abs(clock / divisor - baud) / baud <= 0.02
    assert abs(board.pll(clock).output_hz - clock) < 1, "a clock the PLL really makes"


def test_a_baud_rate_no_clock_makes_is_refused_in_one_line(tmp_path, digits_demo):
    with pytest.raises(BuildError, match="7,000,000 baud: neither the icebreaker's 12 MHz oscillator nor a PLL"):
        clock_for_baud(BOARDS["icebreaker"], 7_000_000)
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "icebreaker", "--baud", "7000000",
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "7,000,000 baud", "give --clock")
    assert not (tmp_path / "out").exists()


def test_a_clock_no_pll_can_make_is_refused_before_synthesis(tmp_path, digits_demo):
    with pytest.raises(ClockError, match="nearest is 16.125 MHz"):
        ice40_pll(12e6, 10e6)               # below the iCE40 PLL's 16 MHz minimum output
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "icebreaker", "--clock", "10",
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "the iCE40 PLL cannot make 10 MHz from 12 MHz")
    assert not (tmp_path / "out").exists()


@pytest.mark.long
def test_digits_bitstream_for_the_icebreaker(tmp_path, digits_demo):
    """The digits MLP on the iCE40UP5K through the real tools, with the PLL (16.125 MHz) and the
    first layer's weights in SPRAM: a bitstream, utilisation within the device, timing met."""
    out = tmp_path / "icebreaker"
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "icebreaker", "--clock", "16", "--spram", "0",
                   "-o", str(out), "--json", "-q")
    report = json.loads(proc.stdout)
    assert (out / "top.bin").stat().st_size > 100_000
    assert json.loads((out / "report.json").read_text()) == report
    use = report["utilisation"]
    assert 0 < use["ICESTORM_LC"]["used"] <= use["ICESTORM_LC"]["total"] == 5280
    assert 0 < use["ICESTORM_RAM"]["used"] <= 30
    assert use["ICESTORM_PLL"]["used"] == 1 and use["ICESTORM_SPRAM"]["used"] == 1
    assert report["pll"] == {"divr": 0, "divf": 85, "divq": 6, "filter_range": 1}
    # clock_mhz is nextpnr's own figure for the PLL output, rounded from a period in ps: 16.13 or 16.14.
    assert report["clock_hz"] == 16_125_000 and report["clock_mhz"] == pytest.approx(16.125, abs=0.02)
    assert report["timing_met"] and report["fmax_mhz"] >= 16.125
    assert report["placement"] == {"seed": 1, "fmax_mhz_by_seed": {"1": report["fmax_mhz"]}}, "met at the first seed"
    assert report["spram_layers"] == [0] and report["lanes"] == [2, 1, 1]
    assert report["sizing"]["chosen_lanes"] == report["lanes"], "the report says why: speed sizing chose them"
    assert report["estimate"]["logic"] == pytest.approx(use["ICESTORM_LC"]["used"], rel=0.25)
    slowest = report["critical_paths"][0]
    assert slowest["clock"] and slowest["from"].startswith("board.") and slowest["through"]
    assert slowest["delay_ns"] == pytest.approx(1000 / report["fmax_mhz"], rel=0.05), "the path that sets Fmax"


def test_speed_sizing_takes_the_fastest_plan_that_fits_the_ecp5(digits_demo):
    net = load_network(digits_demo["net_path"])
    candidates = speed_candidates(net, BOARDS["ulx3s-85f"])
    chosen = fastest(candidates)
    assert chosen["fits"] and sum(chosen["lanes"]) > len(net.layers)
    assert all(c["interval"] >= chosen["interval"] for c in candidates if c["fits"])
    intervals = [c["interval"] for c in candidates]
    assert intervals == sorted(intervals, reverse=True), "a doubled budget is never slower"
    assert [layer.lanes for layer in plan_for_board(net, BOARDS["ulx3s-85f"]).layers] == chosen["lanes"]


def test_speed_sizing_leaves_a_full_device_at_one_lane_per_layer(digits_demo):
    """The iCEBreaker's logic is nearly full with one lane per layer: no bigger plan is estimated to fit."""
    candidates = speed_candidates(load_network(digits_demo["net_path"]), BOARDS["icebreaker"])
    assert candidates[0]["lanes"] == [1, 1, 1] and not any(c["fits"] for c in candidates[1:])
    assert fastest(candidates) is candidates[0]


def test_the_digits_cnn_fits_the_up5k_with_its_kernels_but_not_as_dense_layers(digits_demo, tmp_path):
    """Its convolution engines keep 37 Kbit of kernels: the UP5K takes it (the second convolution's
    weights in SPRAM); lowered to dense layers (``--convolutions dense``) it needs 1.3 Mbit. Streamed, its
    windows' flip-flops alone are estimated beyond the UP5K's logic, so speed sizing builds the event-driven
    engines there (and streams on the ECP5)."""
    net = load_network(digits_demo["cnn_net_path"])
    plan = plan_for_board(net, BOARDS["icebreaker"])
    assert not plan.stream and plan_for_board(net, BOARDS["ulx3s-85f"]).stream
    check_fit(plan, BOARDS["icebreaker"])
    assert [layer.lanes for layer in plan.layers] == [1, 2, 1] and [layer.index for layer in plan.loaded_layers] == [1]
    # nextpnr placed 26 block RAMs and 1 SPRAM (README), before protocol version 4 added the LOAD buffer (one block).
    assert ice40_usage(plan) == (27, 1)
    check_fit(plan_for_board(net, BOARDS["ulx3s-85f"]), BOARDS["ulx3s-85f"])
    # Every RAM is block RAM however shallow: 16 lanes make the second convolution's membrane banks
    # 16 rows of 400 bits, 25 blocks each, and that is refused before synthesis.
    with pytest.raises(BuildError, match="does not fit the icebreaker"):
        check_fit(plan_for_board(net, BOARDS["icebreaker"], lanes=[2, 16, 1], input_lanes=8, spram=[], streaming=False),
                  BOARDS["icebreaker"])
    dense_path = tmp_path / "cnn-dense.net.npz"
    run_cli("convert", str(digits_demo["cnn"]["files"]["model"]), "--calib", "digits", "--convolutions", "dense",
            "-o", str(dense_path), "-q")
    dense = load_network(dense_path)
    assert [layer.kind for layer in dense.layers] == ["dense"] * 3
    with pytest.raises(BuildError, match=r"does not fit the icebreaker .* SPRAMs \(weights 1,331,200 bits\)"):
        check_fit(plan_for_board(dense, BOARDS["icebreaker"]), BOARDS["icebreaker"])


def test_spram_packing_keeps_a_convolution_s_lanes_a_divisor_of_its_channels():
    """Two 8-bit weights fill a 16-bit SPRAM row, but a 5-channel convolution can only take 1 or 5 lanes."""
    from conftest import make_conv_network

    def packed(channels):         # speed sizing's first plan: one lane per layer, SPRAM rows filled
        net = make_conv_network(np.random.default_rng(0), (2, 6, 6), [(channels, (3, 3), (1, 1), (1, 1))], 3, 4)
        return speed_candidates(net, BOARDS["icebreaker"], spram=[0])[0]["plan"]

    assert packed(5).layers[0].weights_loaded and packed(5).layers[0].lanes == 1
    assert packed(6).layers[0].lanes == 2


def test_speed_sizing_keeps_an_spram_layer_at_one_lane_when_two_would_overfill_the_up5k():
    """A 4-layer MLP: its first layer's weights go to SPRAM; two lanes there (a full 16-bit row) would need
    more logic cells than the UP5K has, one lane fits, and that plan is built."""
    net = make_network(np.random.default_rng(0), [64, 50, 33, 17, 10], 8)
    candidates = speed_candidates(net, BOARDS["icebreaker"])
    packed, single = candidates[0], candidates[1]
    assert packed["lanes"] == [2, 1, 1, 1] and not packed["fits_device"]
    assert single["lanes"] == [1, 1, 1, 1] and single["fits_device"] and not single["fits"]
    assert fastest(candidates) is single
    assert [layer.lanes for layer in plan_for_board(net, BOARDS["icebreaker"]).layers] == [1, 1, 1, 1]


def test_a_plan_beyond_the_device_s_logic_is_refused_before_synthesis(tmp_path, digits_demo):
    net = load_network(digits_demo["net_path"])
    with pytest.raises(BuildError, match=r"icebreaker \(iCE40UP5K\): at lanes 2/2/2 it needs about [\d,]+ logic cells "
                                         r"\(estimate\), the device has 5,280; try fewer --lanes"):
        check_fit(plan_for_board(net, BOARDS["icebreaker"], lanes=[2, 2, 2]), BOARDS["icebreaker"])
    proc = run_cli("build", str(digits_demo["net_path"]), "--board", "icebreaker", "--lanes", "2", "2", "2",
                   "-o", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, "does not fit the icebreaker", "logic cells (estimate)")
    assert not (tmp_path / "out").exists()
