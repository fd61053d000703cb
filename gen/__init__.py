"""Model import, conversion passes, the network file, hardware sizing, Verilog and bitstreams.

Produces what the contracts (``spikesmith.contract``) describe: a network from a torch model,
a plan from a network; uses ``spikesmith.hw`` to emit Verilog and build bitstreams. torch is
imported only by :mod:`spikesmith.gen.importer` (and the demo trainer).
"""
