"""spikesmith: an FPGA accelerator generator for spiking neural networks.

Layers, top to bottom (imports only point down; ``lint-imports`` checks it, pyproject.toml):

- ``spikesmith.cli`` and ``spikesmith.demo``: the command line and the demo.
- ``spikesmith.sim``: the integer golden model and the simulators (amaranth.sim, Verilator,
  the simulated board).
- ``spikesmith.gen``: model import, conversion passes, the network file, sizing, Verilog and
  bitstream generation.
- ``spikesmith.hw`` (Amaranth gateware from a plan) and ``spikesmith.host`` (the host driver),
  independent of each other.
- ``spikesmith.contract``: what every stage reads: the network IR and its width bounds, the
  hardware plan, the wire protocol.
- ``spikesmith.errors``, ``spikesmith.fileio``, ``spikesmith.toolchain``, ``spikesmith.resources``:
  error types, safe output files and folders, tool discovery, free memory.
"""

__version__ = "0.1.0"
