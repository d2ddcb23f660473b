"""Dataset readers that feed the nets exactly what FCN's Python data layers fed.

Every reader returns :class:`~fcn_repro.data.base.Sample` items: preprocessed
(C, H, W) float32 inputs by name and (H, W) uint8 labels by head (255 =
ignore), at the image's own size (batch of 1, no resizing).

- :class:`VOCSegmentation` (voc.py): PASCAL VOC, seg11valid and the standard splits
- :class:`SBDSegmentation` (sbd.py): SBD, FCN's PASCAL training set
- :class:`SIFTFlowSegmentation` (siftflow.py): semantic + geometric heads
- :class:`NYUDSegmentation` (nyud.py): colour, HHA, log-depth; 40 classes
- :class:`ContextSegmentation` (context.py): PASCAL-Context, 59 classes + background
- :class:`SampleLoader` (loader.py): threaded, ordered, prefetching iteration
"""
from __future__ import annotations

from fcn_repro.data.base import (DataMissingError, Sample, SegDataset, class_names, read_id_list,  # noqa: F401
                                 resource_path)
from fcn_repro.data.context import ContextSegmentation
from fcn_repro.data.loader import SampleLoader, shard_indices  # noqa: F401
from fcn_repro.data.nyud import NYUDSegmentation
from fcn_repro.data.sbd import SBDSegmentation
from fcn_repro.data.siftflow import SIFTFlowSegmentation
from fcn_repro.data.voc import VOCSegmentation

#: dataset kind -> reader class (the ``dataset`` of each zoo net)
READERS = {
    "voc": VOCSegmentation,
    "sbd": SBDSegmentation,
    "siftflow": SIFTFlowSegmentation,
    "nyud": NYUDSegmentation,
    "context": ContextSegmentation,
}


def make_dataset(kind: str, root, split: str, **kwargs) -> SegDataset:
    """Reader of ``kind`` ('voc', 'sbd', 'siftflow', 'nyud', 'context') on ``root``."""
    try:
        cls = READERS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {sorted(READERS)}") from None
    return cls(root, split=split, **kwargs)


__all__ = ["Sample", "SegDataset", "DataMissingError", "VOCSegmentation", "SBDSegmentation",
           "SIFTFlowSegmentation", "NYUDSegmentation", "ContextSegmentation", "SampleLoader",
           "shard_indices", "make_dataset", "READERS", "class_names", "resource_path", "read_id_list"]
