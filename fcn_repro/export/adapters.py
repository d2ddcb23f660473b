"""Adapters that let a :class:`~fcn_repro.caffe.net.Net` drop into code written for other model APIs."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from fcn_repro.export.program import ExportError

__all__ = ["TorchvisionStyle"]


class TorchvisionStyle(nn.Module):
    """A net with torchvision's segmentation-model interface: ``model(x)["out"]``.

    torchvision's FCN/DeepLab models take one (N, 3, H, W) batch and return an
    ``OrderedDict`` whose ``"out"`` entry holds the class scores (N, K, H, W)
    at the input's size. This wraps a Caffe FCN the same way::

        model = TorchvisionStyle(Net("prototxt/fcn8s/deploy.prototxt", weights))
        scores = model(x)["out"]            # x: (N, 3, H, W), Caffe's BGR, mean-subtracted

    Args:
        net: a built :class:`~fcn_repro.caffe.net.Net`.
        out: the output blob returned as ``"out"``; needed only when the net
            has several (SIFT Flow: ``score_sem`` or ``score_geo``).
        aux: optionally another output blob, returned as ``"aux"``.

    The input is the net's own (Caffe's preprocessing: BGR, mean-subtracted,
    0-255), not torchvision's normalised RGB. Nets with several inputs (NYUD
    color + HHA) take them positionally in ``net.inputs`` order.
    """

    def __init__(self, net: nn.Module, out: Optional[str] = None, aux: Optional[str] = None):
        super().__init__()
        outputs = list(net.outputs)
        if out is None:
            if len(outputs) != 1:
                raise ExportError(f"{net.filename}: the net has the outputs {outputs}; choose one with "
                                 "TorchvisionStyle(net, out=...)")
            out = outputs[0]
        for role, blob in (("out", out), ("aux", aux)):
            if blob is not None and blob not in outputs:
                raise ExportError(f"{net.filename}: {role}={blob!r} is not an output of the net {outputs}")
        self.net = net
        self.out_blob = out
        self.aux_blob = aux

    def forward(self, *inputs: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        y = self.net(*inputs)
        result = OrderedDict(out=y[self.out_blob])
        if self.aux_blob is not None:
            result["aux"] = y[self.aux_blob]
        return result
