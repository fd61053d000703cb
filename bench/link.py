"""A noisy serial link: 30 runs of 400 images, 1 % of the bytes damaged each way (SECURITY.md).

Each run streams 400 images through the real host driver to a board model (tests/fakeboard.py:
the wire protocol with the golden model's answers) over ``sim/link.py``'s LossyLink, which
drops, duplicates or corrupts each byte in either direction with 1/3 % probability each
(1 % in all). A run counts as complete when every result arrives, correct in every logit,
exactly once and in order. The driver resends a request as often as ``spikesmith infer`` does
by default (``DEFAULT_RETRIES``, its ``--retries``): a run that gives up on one is not complete.
Then one run over the board top itself under Verilator.

    python bench/link.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, log, save

sys.path.insert(0, str(ROOT / "tests"))

RUNS, IMAGES, DAMAGE = 30, 400, 0.01


def _run(port, net, codes, timeout: float) -> dict:
    from spikesmith.host.driver import DEFAULT_RETRIES, Accelerator, BoardError
    from spikesmith.sim import golden

    start = time.perf_counter()
    try:
        with Accelerator(port, timeout=timeout, retries=DEFAULT_RETRIES) as driver:
            driver.expect(net)
            results = list(driver.infer(codes))
            stats = driver.stats
    except BoardError as exc:
        return {"complete": False, "error": str(exc), "seconds": time.perf_counter() - start}
    expected = golden.run(net, codes)
    correct = ([r.index for r in results] == list(range(len(codes)))
               and [r.label for r in results] == expected.predictions.tolist()
               and [r.logits for r in results] == expected.logits.tolist())
    return {"complete": correct, "resent": stats.resent, "unexpected_replies": stats.unexpected_replies,
            "most_sends": stats.most_sends, "seconds": time.perf_counter() - start}


def main() -> None:
    from conftest import make_network
    from fakeboard import FakeBoard
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim.board import SimulatedBoard
    from spikesmith.sim.link import LossyLink

    started = time.time()
    net = make_network(np.random.default_rng(4), [12, 9, 6], 6, negative_bias=0.5, threshold_scale=0.3)
    runs, damaged = [], {"dropped": 0, "duplicated": 0, "corrupted": 0}
    for seed in range(RUNS):
        codes = np.random.default_rng(1000 + seed).integers(0, net.max_code + 1, size=(IMAGES, net.input.size))
        link = LossyLink(FakeBoard(net, seed=seed), seed=seed, drop=DAMAGE / 3, duplicate=DAMAGE / 3,
                         corrupt=DAMAGE / 3)
        runs.append(_run(link, net, codes, timeout=0.05))
        for kind, count in link.damaged.items():
            damaged[kind] += count
        log(f"run {seed + 1}/{RUNS}: {'complete' if runs[-1]['complete'] else 'FAILED: ' + runs[-1].get('error', '')}, "
            f"{runs[-1].get('resent', '-')} resent, at most {runs[-1].get('most_sends', '-')} sends of an image")
    codes = np.random.default_rng(7).integers(0, net.max_code + 1, size=(IMAGES, net.input.size))
    with tempfile.TemporaryDirectory() as cache, SimulatedBoard(plan_core(net, lanes=[3, 2]), Path(cache)) as board:
        verilated = _run(LossyLink(board.open_port(), seed=99, drop=DAMAGE / 3, duplicate=DAMAGE / 3, corrupt=DAMAGE / 3),
                         net, codes, timeout=2.0)
    log(f"board top under Verilator: {'complete' if verilated['complete'] else 'FAILED'}")
    from spikesmith.host.driver import DEFAULT_RETRIES

    save("link", {"runs": RUNS, "images": IMAGES, "damage": DAMAGE, "retries": DEFAULT_RETRIES,
                  "most_sends": max(r.get("most_sends", 0) for r in runs),
                  "complete": sum(r["complete"] for r in runs), "resent": sum(r.get("resent", 0) for r in runs),
                  "damaged_bytes": damaged, "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
                  "verilated": verilated}, started)


if __name__ == "__main__":
    main()
