"""The ``Python`` data layers named by prototxt/<net>/{train,val}.prototxt.

The generated train/val nets (fcn_repro/caffe/fcn_nets.py) keep the original
nets' shape: a ``Python`` layer with ``module: "fcn_repro.data.layers"``, a
``layer`` name from the original FCN code and a JSON ``param_str`` (``split``,
``seed``, and for NYUDv2 ``tops``). This module maps those names onto our
readers and the reader's output onto the layer's tops, in top order, with the
shapes the original layers gave them: inputs (C, H, W) float32, labels
(1, H, W) uint8 (the leading singleton the loss wants).

The dataset directory is not in the prototxt: the tool that runs the net
passes it.
"""
from __future__ import annotations

import ast
import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from fcn_repro.data.base import Sample, SegDataset

__all__ = ["LAYERS", "parse_param_str", "layer_tops", "reader_from_layer", "sample_to_tops"]

#: original data layer name -> reader kind (fcn_repro.data.READERS)
LAYERS = {
    "VOCSegDataLayer": "voc",
    "SBDDSegDataLayer": "sbd",
    "SIFTFlowSegDataLayer": "siftflow",
    "NYUDSegDataLayer": "nyud",
    "PASCALContextSegDataLayer": "context",
}


def parse_param_str(param_str: str) -> Dict[str, Any]:
    """``param_str`` as JSON, else as a Python literal (the originals used dict literals)."""
    if not param_str.strip():
        return {}
    try:
        v = json.loads(param_str)
    except ValueError:
        try:
            v = ast.literal_eval(param_str)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"param_str is neither JSON nor a Python literal: {param_str!r} ({e})") from None
    if not isinstance(v, dict):
        raise ValueError(f"param_str must hold a dict, got {type(v).__name__}: {param_str!r}")
    return v


def layer_tops(layer: str, params: Dict[str, Any]) -> List[str]:
    """What each top of the layer carries, in top order (sample input or label keys)."""
    kind = _kind(layer)
    if kind == "siftflow":
        return ["data", "sem", "geo"]
    if kind == "nyud":
        tops = list(params.get("tops") or ["color", "label"])
        return tops
    return ["data", "label"]


def reader_from_layer(layer: str, param_str: str | Dict[str, Any], root: str | os.PathLike, **kwargs) -> SegDataset:
    """The reader a data layer stands for, on the dataset directory ``root``."""
    from fcn_repro.data import make_dataset

    params = parse_param_str(param_str) if isinstance(param_str, str) else dict(param_str)
    kind = _kind(layer)
    if "split" not in params:
        raise ValueError(f"data layer {layer}: param_str has no 'split'")
    if kind == "nyud":
        kwargs.setdefault("tops", tuple(t for t in layer_tops(layer, params) if t != "label"))
    return make_dataset(kind, root, str(params["split"]), **kwargs)


def sample_to_tops(sample: Sample, tops: Sequence[str]) -> List[np.ndarray]:
    """The arrays of the layer's tops: inputs (C, H, W) float32, labels (1, H, W) uint8."""
    out = []
    for t in tops:
        if t in sample.inputs:
            out.append(sample.inputs[t])
        elif t in sample.labels:
            out.append(sample.labels[t][np.newaxis])
        else:
            raise KeyError(f"sample {sample.id} has no {t!r} (inputs {sorted(sample.inputs)}, "
                           f"labels {sorted(sample.labels)})")
    return out


def _kind(layer: str) -> str:
    try:
        return LAYERS[layer]
    except KeyError:
        raise ValueError(f"unknown data layer {layer!r}; known: {', '.join(LAYERS)}") from None
