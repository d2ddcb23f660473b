"""The ``Python`` data layers named by prototxt/<net>/{train,val}.prototxt.

The generated train/val nets keep the original nets' shape: a ``Python``
layer with ``module: "fcn_repro.data.layers"``, the original data layer's
name (``layer``) and a JSON ``param_str`` (``split``, ``seed``, and for
NYUDv2 ``tops``). The registry maps the layer name onto a dataset card
(:data:`fcn_repro.registry.DATA_LAYERS`); this module reads the layer's
parameters (the one ``param_str`` parser) and turns it into that dataset's
reader, with the layer's tops in order: inputs (C, H, W) float32, labels
(1, H, W) uint8 (the leading singleton the loss wants).

The dataset directory is not in the prototxt: the tool that runs the net
passes it.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fcn_repro import registry
from fcn_repro.data import make_dataset
from fcn_repro.data.base import Sample, SegDataset
from fcn_repro.errors import FcnReproError

__all__ = ["DataLayer", "parse_param_str", "layer_tops", "find_data_layer", "reader_from_layer",
           "sample_to_tops", "ParamStrError"]


class ParamStrError(FcnReproError):
    """A data layer's param_str that is not a dict literal (JSON or Python)."""


def parse_param_str(param_str: str, where: str = "param_str") -> Dict[str, Any]:
    """``param_str`` as JSON, else as a Python literal (the originals used dict literals)."""
    if not param_str.strip():
        return {}
    try:
        v = json.loads(param_str)
    except ValueError:
        try:
            v = ast.literal_eval(param_str)
        except (ValueError, SyntaxError) as e:
            raise ParamStrError(f"{where}: param_str is neither JSON nor a Python literal: "
                                f"{param_str!r} ({e})") from None
    if not isinstance(v, dict):
        raise ParamStrError(f"{where}: param_str must hold a dict, got {type(v).__name__}: {param_str!r}")
    return v


def layer_tops(layer: str, params: Dict[str, Any]) -> List[str]:
    """What each top of the layer carries, in top order (sample input or label keys)."""
    card = registry.dataset_for_layer(layer)
    if "tops" in params:
        return [str(t) for t in params["tops"]]
    return list(card.inputs[:1]) + list(card.labels)


@dataclass(frozen=True)
class DataLayer:
    """A net's Python data layer: its name, top blobs and parameters."""

    layer: str
    blobs: tuple
    params: Dict[str, Any]

    @property
    def dataset(self) -> str:
        return registry.dataset_for_layer(self.layer).key

    @property
    def split(self) -> Optional[str]:
        s = self.params.get("split")
        return None if s is None else str(s)

    @property
    def seed(self) -> Optional[int]:
        s = self.params.get("seed")
        return None if s is None else int(s)

    def top_map(self) -> Dict[str, str]:
        """Top blob -> what the reader yields for it (by position)."""
        return dict(zip(self.blobs, layer_tops(self.layer, self.params)))


def find_data_layer(netparam: Any, inputs: Sequence[str], where: str = "net") -> Optional[DataLayer]:
    """The Python data layer of ``netparam`` feeding any of ``inputs``; None when there is none."""
    for lp in netparam.getall("layer"):
        if str(lp.get("type", "")) != "Python":
            continue
        tops = tuple(str(t) for t in lp.getall("top"))
        if not any(t in inputs for t in tops):
            continue
        pp = lp.sub("python_param")
        name = str(pp.get("layer", ""))
        params = parse_param_str(str(pp.get("param_str", "") or ""), f"{where}: layer {lp.get('name', '')!r}")
        return DataLayer(name, tops, params)
    return None


def reader_from_layer(layer: str, param_str: str | Dict[str, Any], root: str | os.PathLike, **kwargs) -> SegDataset:
    """The reader a data layer stands for, on the dataset directory ``root``."""
    params = parse_param_str(param_str) if isinstance(param_str, str) else dict(param_str)
    card = registry.dataset_for_layer(layer)
    if "split" not in params:
        raise ParamStrError(f"data layer {layer}: param_str has no 'split'")
    if card.key == "nyud":
        kwargs.setdefault("tops", tuple(t for t in layer_tops(layer, params) if t not in card.labels))
    return make_dataset(card.key, root, str(params["split"]), **kwargs)


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
