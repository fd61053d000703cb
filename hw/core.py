"""The spiking core: input encoder -> one engine per layer -> results, and its Verilog.

Port list of the emitted top module (docs/core.md, "Ports"); all synchronous to ``clk``,
``rst`` synchronous and active high:

- ``images__valid``, ``images__ready``, ``images__payload`` (``lanes * T`` bits: the image's
  input codes, ``lanes`` per beat, code 0 in the LSBs; ``words`` beats per image);
- ``results__valid``, ``results__ready``, ``results__payload`` (``label`` in the LSBs, then the
  ``classes`` logits, ``logit_width``-bit two's complement each, logit 0 first).
"""

from __future__ import annotations

from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..gen.sizing import CorePlan
from .engines import InputEncoder, LayerEngine, OutputEngine
from .events import image_beat_layout, result_layout

__all__ = ["SpikingCore", "TOP_NAME", "emit_verilog"]

#: Name of the emitted top-level Verilog module.
TOP_NAME = "spikeforge_core"


class SpikingCore(wiring.Component):
    """Layer-parallel spiking core: every layer works on a different image at once.

    Each layer's firing step t streams into the next layer's accumulation step t, so an
    image flows through all layers step by step; a new image enters every
    ``plan.initiation_interval`` cycles in the worst case.
    """

    def __init__(self, plan: CorePlan):
        self.plan = plan
        super().__init__({
            "images": In(stream.Signature(image_beat_layout(plan.input.lanes, plan.timesteps))),
            "results": Out(stream.Signature(result_layout(plan.classes, plan.label_width, plan.logit_width))),
        })

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        m.submodules.encoder = encoder = InputEncoder(plan.input, plan.skip_silent)
        wiring.connect(m, wiring.flipped(self.images), encoder.images)
        upstream = encoder.events
        for layer in plan.layers[:-1]:
            engine = LayerEngine(layer, plan.skip_silent)
            m.submodules[f"layer{layer.index}"] = engine
            wiring.connect(m, upstream, engine.spikes_in)
            upstream = engine.spikes_out
        output = OutputEngine(plan.layers[-1])
        m.submodules[f"layer{plan.layers[-1].index}"] = output
        wiring.connect(m, upstream, output.spikes_in)
        wiring.connect(m, output.results, wiring.flipped(self.results))
        return m


def emit_verilog(plan: CorePlan) -> str:
    """Verilog text of the core for ``plan``, top module :data:`TOP_NAME`."""
    core = SpikingCore(plan)
    return verilog.convert(core, name=TOP_NAME, emit_src=False)
