"""The golden model and the simulators: amaranth.sim, Verilator (the compiled harness, cocotb), the simulated board.

:mod:`.golden`, :mod:`.reference` and :mod:`.floatsim` read only the network contract (no
Amaranth, no torch); the simulators build gateware from ``spikesmith.hw``.
"""
