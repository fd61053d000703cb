"""spikeforge: an FPGA accelerator generator for spiking neural networks.

Subpackages follow the data flow (see README):

- ``spikeforge.gen``: model import, conversion passes, the converted-network file, sizing.
- ``spikeforge.sim``: the integer golden model and simulation runners.
- ``spikeforge.hw``: Amaranth components of the spiking core.
- ``spikeforge.host``: the host driver and its transports.
"""

__version__ = "0.1.0"
