"""The spiking core: input encoder -> one engine per layer -> results, and its Verilog.

Port list of the emitted top module (docs/core.md, "Ports"); all synchronous to ``clk``,
``rst`` synchronous and active high:

- ``images__valid``, ``images__ready``, ``images__payload`` (``lanes * T`` bits: the image's
  input codes, ``lanes`` per beat, code 0 in the LSBs; ``words`` beats per image);
- ``results__valid``, ``results__ready``, ``results__payload`` (``label`` in the LSBs, then the
  ``classes`` logits, ``logit_width``-bit two's complement each, logit 0 first);
- only when layers keep their weights in RAM (``plan.loaded_layers``, the iCE40UP5K's SPRAM):
  ``weights_load`` (``en`` in bit 0, then ``addr``, ``data``, ``layer``): one packed weight
  row written per cycle with ``en`` high, only while the core holds no image.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.network import unsigned_width
from ..contract.plan import CorePlan
from ..contract.streaming import StreamConvPlan
from .engines import InputEncoder, LayerEngine, OutputEngine
from .events import image_beat_layout, result_layout, weight_load_layout
from .pool import PoolStage
from .stream_conv import StreamConv
from .stream_pool import StreamMaxPool
from .streams import StreamRegister

__all__ = ["SpikingCore", "TOP_NAME", "emit_verilog", "core_result_layout", "core_weight_load_layout"]

#: Name of the emitted top-level Verilog module.
TOP_NAME = "spikesmith_core"


def core_result_layout(plan: CorePlan):
    """The core's result beat: ``label`` (``label_width`` bits), then the ``classes`` logits."""
    return result_layout(plan.classes, plan.label_width, plan.logit_width)


def core_weight_load_layout(plan: CorePlan):
    """The core's ``weights_load`` port: ``en``, ``addr``, ``data`` (a packed row) and ``layer``."""
    return weight_load_layout(plan.load_addr_width, plan.load_data_width, max(1, unsigned_width(len(plan.layers) - 1)))


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
            "results": Out(stream.Signature(core_result_layout(plan))),
            **({"weights_load": In(core_weight_load_layout(plan))} if plan.loaded_layers else {}),
        })

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        upstream = wiring.flipped(self.images)
        for stage in plan.stream:              # streaming layers: code beats, pixel by pixel
            engine = m.submodules[f"stream_{stage.name}"] = _stream_engine(stage)
            wiring.connect(m, self._registered(m, upstream, f"codes_{stage.name}"), engine.codes_in)
            upstream = engine.codes_out
        m.submodules.encoder = encoder = InputEncoder(plan.reencoder or plan.input, plan.skip_silent)
        wiring.connect(m, self._registered(m, upstream, "codes_encoder") if plan.stream else upstream, encoder.images)
        upstream = encoder.events
        for layer in plan.layers:
            if layer.pool is not None:      # the previous engine's row beats, pooled
                pool = m.submodules[f"pool{layer.index}"] = PoolStage(layer.pool)
                wiring.connect(m, self._registered(m, upstream, f"rows{layer.index}"), pool.rows)
                upstream = pool.spikes
            engine = LayerEngine(layer, plan.skip_silent) if layer.fires else OutputEngine(layer)
            m.submodules[f"layer{layer.index}"] = engine
            wiring.connect(m, self._registered(m, upstream, f"events{layer.index}"), engine.spikes_in)
            upstream = engine.spikes_out if layer.fires else None
        wiring.connect(m, engine.results, wiring.flipped(self.results))
        for layer in plan.loaded_layers:
            engine, load = m.submodules[f"layer{layer.index}"], self.weights_load
            m.d.comb += [engine.weights_load.en.eq(load.en & (load.layer == layer.index)),
                         engine.weights_load.addr.eq(load.addr), engine.weights_load.data.eq(load.data)]
        return m

    @staticmethod
    def _registered(m: Module, upstream, name: str):
        """``upstream`` through a :class:`~.streams.StreamRegister`: no path runs from one stage into the next."""
        stage = m.submodules[name] = StreamRegister(upstream.payload.shape())
        wiring.connect(m, upstream, stage.inlet)
        return stage.outlet


def _stream_engine(stage):
    return StreamConv(stage) if isinstance(stage, StreamConvPlan) else StreamMaxPool(stage)


def emit_verilog(plan: CorePlan) -> str:
    """Verilog text of the core for ``plan``, top module :data:`TOP_NAME`."""
    core = SpikingCore(plan)
    return verilog.convert(core, name=TOP_NAME, emit_src=False)
