"""Host driver and transports for a spiking core in simulation or on a board."""
