"""Amaranth components of the spiking core (no torch here: hw/ takes a plan from gen/)."""
