"""Input and data layers: their tops are the net's named inputs.

``Input`` declares shapes (``input_param.shape``: none, one for every top, or
one per top); legacy ``input``/``input_dim`` nets are upgraded to it by the
parser. Data-producing layers of train/val prototxts (``Python`` layers with
no bottoms, ``Data``, ``ImageData``, ``HDF5Data``, ...) cannot run here:
their tops become inputs too, fed by the caller. Their shapes are unknown to
the prototxt; the FCN data layers' tops are known by name (their channel
counts: ``registry.DATA_TOP_CHANNELS``) and anything else can be given with
``Net(..., input_shapes=)``.
"""
from __future__ import annotations

from fcn_repro.registry import DATA_TOP_CHANNELS

from .base import Layer, register

DATA_LAYER_TYPES = ("Python", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData")


@register("Input")
class Input(Layer):
    exact_bottoms = 0
    min_tops = 1
    fresh_output = False  # tops are the caller's tensors

    def declared_shapes(self):
        shapes = [tuple(int(d) for d in s.getall("dim")) for s in self.param.sub("input_param").getall("shape")]
        n = len(self.top_names)
        if len(shapes) == 0:
            return [None] * n
        if len(shapes) == 1:
            return shapes * n
        if len(shapes) != n:
            raise self.error(f"input_param gives {len(shapes)} shapes for {n} tops (need 0, 1 or {n})")
        return shapes

    def setup(self, bottom_shapes):
        return self.declared_shapes()

    def forward(self, *xs, inplace=False):
        raise self.error("input layers are fed by Net.forward(**inputs), not run")


@register(*DATA_LAYER_TYPES)
class DataInput(Input):
    """A data layer whose tops become net inputs (a Python layer only without bottoms)."""
    exact_bottoms = None  # checked below with a message saying why

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.bottom_names:
            raise self.error(f"a {self.type_name} layer with bottoms is not a data layer; only data-producing "
                             f"Python layers (no bottoms) are supported, as net inputs")

    def declared_shapes(self):
        return [(None, DATA_TOP_CHANNELS[t], None, None) if t in DATA_TOP_CHANNELS else None
                for t in self.top_names]
