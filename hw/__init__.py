"""Amaranth gateware of the spiking core and the board top, built from a plan.

Reads only ``spikesmith.contract`` (the plan, the network's widths, the wire protocol);
never torch, never the rest of spikesmith.
"""
