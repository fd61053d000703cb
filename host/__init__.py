"""The host driver: speaks the wire protocol (``spikesmith.contract.protocol``) to a board on a
serial port or to the simulated board's socket. Reads only the contracts."""
