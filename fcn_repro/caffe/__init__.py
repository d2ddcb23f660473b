"""Caffe formats and the Caffe-semantics net builder.

The formats (text, binary, HDF5) need only numpy and h5py; the builder names
(``Net``, ``transplant``, ...) are imported on first use, so that a tool that
only reads or converts weights never pays for importing torch.
"""
from fcn_repro.caffe.prototxt import (  # noqa: F401
    Enum, Message, PrototxtError, format_text, parse_prototxt, parse_text, upgrade_net,
    write_prototxt,
)
from fcn_repro.caffe.weights import (  # noqa: F401,E402
    CaffeModelError, WeightsError, load_weights, save_weights, weights_info,
)

_NET_NAMES = ("LayerError", "Net", "NetError", "WeightsReport", "transplant")


def __getattr__(name):
    if name in _NET_NAMES:
        from fcn_repro.caffe import net
        return getattr(net, name)
    raise AttributeError(f"module 'fcn_repro.caffe' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_NET_NAMES))
