"""Caffe formats and the Caffe-semantics net builder.

The formats (text, binary, HDF5) need only numpy and h5py; the builder names
(``Net``, ``transplant``, ...) are imported on first use, so that a tool that
only reads or converts weights never pays for importing torch.
"""
from fcn_repro.caffe.prototxt import (
    Enum, Message, format_text, parse_prototxt, parse_text, upgrade_net, write_prototxt,
)
from fcn_repro.caffe.weights import load_weights, save_weights, weights_info
from fcn_repro.errors import CaffeModelError, HDF5WeightsError, PrototxtError, WeightsError

#: the builder's names, from fcn_repro.caffe.net (torch) on first use
_NET_NAMES = ("BlobLimitError", "LayerError", "Net", "NetError", "WeightsReport", "transplant")

__all__ = ["Enum", "Message", "PrototxtError", "format_text", "parse_prototxt", "parse_text", "upgrade_net",
           "write_prototxt", "CaffeModelError", "HDF5WeightsError", "WeightsError", "load_weights",
           "save_weights", "weights_info", *_NET_NAMES]


def __getattr__(name):
    if name in _NET_NAMES:
        from fcn_repro.caffe import net   # lazy: the formats stay free of torch
        return getattr(net, name)
    raise AttributeError(f"module 'fcn_repro.caffe' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NET_NAMES))
