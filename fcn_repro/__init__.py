"""fcn_repro: the original Fully Convolutional Networks, Caffe-exact, in PyTorch.

``import fcn_repro`` imports nothing heavy: the error family is here at once;
the net builder (``Net``, torch), the weight and prototxt readers and
:func:`load` are imported on first use.
"""
from fcn_repro.errors import (CaffeModelError, FcnReproError, HDF5WeightsError, LimitError, OutputError,
                              PrototxtError, WeightsError)

__version__ = "0.1.0"

#: names of fcn_repro.caffe served from here on first use
_CAFFE_NAMES = ("Net", "NetError", "LayerError", "BlobLimitError", "load_weights", "save_weights",
                "weights_info", "parse_prototxt", "write_prototxt")

__all__ = ["__version__", "load", "FcnReproError", "LimitError", "OutputError", "PrototxtError", "WeightsError",
           "CaffeModelError", "HDF5WeightsError", *_CAFFE_NAMES]


def load(name: str, **kwargs):
    """A pretrained zoo net with its weights, preprocessing and class names, in one call.

    ``fcn_repro.load("fcn8s", download=True)``; see :func:`fcn_repro.predict.load`.
    """
    from fcn_repro.predict import load as _load   # lazy: ``import fcn_repro`` stays free of torch

    return _load(name, **kwargs)


def __getattr__(name):
    if name in _CAFFE_NAMES:
        from fcn_repro import caffe   # lazy: ``import fcn_repro`` stays free of torch and h5py
        return getattr(caffe, name)
    raise AttributeError(f"module 'fcn_repro' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CAFFE_NAMES))
