"""Errors that reach the user as one line and a non-zero exit (see ``spikeforge.cli``)."""


class SpikeforgeError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class UnsupportedModelError(SpikeforgeError):
    """The model uses a layer or a pattern the converter does not support."""


class ModelFileError(SpikeforgeError):
    """A model file (``.pt2``) is missing, corrupt, or asks to unpickle objects."""


class ConversionError(SpikeforgeError):
    """The model cannot be converted (non-finite weights, empty calibration set, ...)."""


class NetFileError(SpikeforgeError):
    """A converted-network file is missing, corrupt, truncated or of an unknown version."""


class DatasetError(SpikeforgeError):
    """A data set cannot be read, or its images do not fit the network."""
