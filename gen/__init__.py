"""Model import, conversion passes, the converted-network file and hardware sizing.

torch is imported only by :mod:`spikesmith.gen.importer` (and the demo trainer), so the
golden model and the hardware generator load without it.
"""
