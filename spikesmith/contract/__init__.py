"""The contracts at the bottom of spikesmith: plain data and pure functions every stage reads.

- :mod:`.network`: the converted spiking network (integer IR), its encoding and fingerprint.
- :mod:`.bounds`: worst-case bounds and register widths of a network.
- :mod:`.plan`: the hardware plan (``InputPlan``, ``LayerPlan``, ``CorePlan``, ``BoardParams``).
- :mod:`.protocol`: the wire protocol (frames, codes, identity, result decoding).

Nothing here imports torch or amaranth, or any other spikesmith package but ``errors``.
"""
