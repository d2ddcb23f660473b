"""Caffe layer implementations, one small module per layer type.

``LAYER_TYPES`` maps the Caffe type string (``"Convolution"``) to the
:class:`~fcn_repro.caffe.layers.base.Layer` subclass implementing it.
"""
from .base import LAYER_TYPES, Layer, LayerError, NetError, register  # noqa: F401
from . import (  # noqa: F401  (importing registers the types)
    accuracy, concat, convolution, crop, deconvolution, dropout, eltwise, inner_product, input, lrn,
    pooling, relu, scale, simple, softmax, softmax_loss,
)

__all__ = ["LAYER_TYPES", "Layer", "LayerError", "NetError", "register"]
