"""The conversion pipeline: torch model -> float IR -> calibrated, quantised spiking network.

    graph = import_module(model, input_shape)        # or import_program(load_program("m.pt2"))
    net = convert_graph(graph, calib_images, ConversionOptions(timesteps=8))

Each step is a pass of its own module (importer, passes, calibrate, quantise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import __version__
from ..errors import ConversionError
from .calibrate import THRESHOLD_MODES, calibrate
from .ir import FloatNetwork, Graph, SpikeCode
from ..contract.network import SpikingNetwork, check_images
from .passes import lower
from .quantise import WEIGHT_SCALES, quantise

#: How a convolution is converted: kept as its kernel (the hardware's convolution engine) or a dense matrix.
CONVOLUTION_MODES = ("kernel", "dense")

__all__ = ["CONVOLUTION_MODES", "ConversionOptions", "convert_float_network", "convert_graph", "convert_module",
           "load_model_graph", "model_timesteps", "THRESHOLD_MODES", "WEIGHT_SCALES"]


@dataclass(frozen=True)
class ConversionOptions:
    """Conversion knobs; the defaults reproduce the README's numbers."""
    timesteps: int = 8            # T: accumulation steps = firing steps = code bits
    weight_bits: int = 8          # signed weight width, bits
    weight_scale: str = "channel"  # "channel" (per output neuron) or "layer"
    threshold: str = "search"     # "search", "max" or "percentile"
    percentile: float = 99.99     # for threshold="percentile"
    convolutions: str = "kernel"  # "kernel": convolution layers keep their kernel; "dense": lowered to matrices


def convert_float_network(network: FloatNetwork, calib_images: np.ndarray | None,
                          options: ConversionOptions = ConversionOptions(), source: str = "") -> SpikingNetwork:
    """The spiking network of ``network``; ``calib_images`` may be None when the model gives every full
    scale (spike codes, ``spikesmith finetune``)."""
    x = None if calib_images is None else check_images(calib_images, network.input_shape, "calibration images")
    if network.timesteps is not None and options.timesteps != network.timesteps:
        raise ConversionError(f"the model's spike codes are {network.timesteps}-bit (fine-tuned for "
                              f"T={network.timesteps}); convert it at T={network.timesteps}, not T={options.timesteps}")
    calibration = calibrate(network, x, options.timesteps, options.threshold, options.percentile)
    metadata = {
        "source": source,
        "spikesmith_version": __version__,
        "options": asdict(options),
        "calibration_images": calibration.images,
        "thresholds_from": _thresholds_from(network),
        "layer_sources": [layer.source for layer in network.layers],
    }
    if options.convolutions not in CONVOLUTION_MODES:
        raise ConversionError(f"unknown convolution mode {options.convolutions!r}; "
                              f"choose one of {', '.join(CONVOLUTION_MODES)}")
    return quantise(network, calibration, options.timesteps, options.weight_bits, options.weight_scale, metadata,
                    keep_convolutions=options.convolutions == "kernel")


def _thresholds_from(network: FloatNetwork) -> str:
    """Where the thresholds came from: ``model`` (all given by spike codes), ``calibration``, or both."""
    given = [network.input_full_scale] + [layer.full_scale for layer in network.layers if layer.relu]
    known = sum(value is not None for value in given)
    return "model" if known == len(given) else "calibration" if known == 0 else "model and calibration"


def model_timesteps(graph: Graph) -> int | None:
    """The T a model's spike codes fix (a ``spikesmith finetune`` model), or None. (Codes of several T
    are refused by conversion.)"""
    return next((op.timesteps for op in graph.ops if isinstance(op, SpikeCode)), None)


def convert_graph(graph: Graph, calib_images: np.ndarray | None, options: ConversionOptions = ConversionOptions(),
                  source: str = "") -> SpikingNetwork:
    return convert_float_network(lower(graph), calib_images, options, source)


def convert_module(module, calib_images: np.ndarray, options: ConversionOptions = ConversionOptions(),
                   source: str = "torch.nn.Module") -> SpikingNetwork:
    """Convert a ``torch.nn.Module``; its input shape is that of one calibration image."""
    from .importer import import_module     # imports torch (seconds): only this entry point needs it

    calib_images = np.asarray(calib_images)
    if calib_images.ndim < 2 or len(calib_images) == 0:
        raise ConversionError("the calibration set is empty; give at least one image")
    graph = import_module(module, tuple(calib_images.shape[1:]))
    return convert_graph(graph, calib_images, options, source)


def load_model_graph(path) -> Graph:
    """The float IR of a model file: a NIR graph (``.nir``, :mod:`~spikesmith.gen.nirgraph`) or a
    ``torch.export`` program (anything else, :mod:`~spikesmith.gen.importer`)."""
    from pathlib import Path

    if Path(path).suffix == ".nir":
        from .nirgraph import import_graph, read_nir

        return import_graph(read_nir(path), source=f"NIR {Path(path).name}")
    from .importer import import_program, load_program     # imports torch (seconds)

    return import_program(load_program(path))
