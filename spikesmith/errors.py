"""Errors that reach the user as one line and a non-zero exit (see ``spikesmith.cli``)."""


class SpikesmithError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class UnsupportedModelError(SpikesmithError):
    """The model uses a layer or a pattern the converter does not support."""


class ModelFileError(SpikesmithError):
    """A model file (``.pt2``) is missing, corrupt, or asks to unpickle objects."""


class ConversionError(SpikesmithError):
    """The model cannot be converted (non-finite weights, empty calibration set, ...)."""


class NetFileError(SpikesmithError):
    """A converted-network file is missing, corrupt, truncated or of an unknown version."""


class DatasetError(SpikesmithError):
    """A data set cannot be read, or its images do not fit the network."""
