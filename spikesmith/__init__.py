"""spikesmith: an FPGA accelerator generator for spiking neural networks.

Subpackages follow the data flow (see README):

- ``spikesmith.gen``: model import, conversion passes, the converted-network file, sizing.
- ``spikesmith.sim``: the integer golden model and simulation runners.
- ``spikesmith.hw``: Amaranth components of the spiking core.
- ``spikesmith.host``: the host driver and its transports.
"""

__version__ = "0.1.0"
