"""The layering the import contracts promise, checked by importing in a fresh interpreter."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str, *modules: str) -> dict[str, bool]:
    """Which of ``modules`` a fresh Python has loaded after running ``statement``."""
    probe = f"import sys; {statement}; print(' '.join(str(m in sys.modules) for m in {modules!r}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return dict(zip(modules, (word == "True" for word in out.split())))


@pytest.mark.parametrize("package", ["spikesmith.hw.core", "spikesmith.hw.board"])
def test_gateware_loads_without_torch(package):
    loaded = _loaded_after(f"import {package}", "amaranth", "torch")
    assert loaded == {"amaranth": True, "torch": False}


def test_golden_model_loads_without_amaranth_or_torch():
    loaded = _loaded_after("import spikesmith.sim.golden, spikesmith.sim.reference", "numpy", "amaranth", "torch")
    assert loaded == {"numpy": True, "amaranth": False, "torch": False}


def test_host_driver_loads_without_the_generator_or_gateware():
    loaded = _loaded_after("import spikesmith.host.driver", "spikesmith.gen", "spikesmith.hw", "amaranth", "torch")
    assert not any(loaded.values()), loaded
