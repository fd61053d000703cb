"""The golden model and simulation runners (no Amaranth, no torch)."""
