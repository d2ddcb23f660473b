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

from typing import Optional

from fcn_repro import registry

from fcn_repro.data.base import (DataMissingError, Sample, SegDataset, class_names, read_id_list,  # noqa: F401
                                 resource_path)
from fcn_repro.data.context import ContextSegmentation
from fcn_repro.data.loader import SampleLoader, shard_indices  # noqa: F401
from fcn_repro.data.nyud import NYUDSegmentation
from fcn_repro.data.sbd import SBDSegmentation
from fcn_repro.data.siftflow import SIFTFlowSegmentation
from fcn_repro.data.voc import VOCSegmentation

#: dataset key -> reader class, from the registry's dataset cards
READERS = {key: registry.reader_class(key) for key in registry.DATASETS}


def make_dataset(kind: str, root, split: Optional[str] = None, **kwargs) -> SegDataset:
    """Reader of dataset ``kind`` (a registry key: 'voc', 'sbd', 'siftflow', 'nyud',
    'context', 'sample') on ``root``; ``split`` defaults to the card's."""
    card = registry.dataset(kind)
    reader = READERS[kind]
    if reader.name != kind and len(card.labels) == 1:
        # a card read by another card's reader (the bundled sample: the VOC reader) has its own classes
        kwargs.setdefault("classes", registry.class_names(next(iter(card.labels.values()))))
    return reader(root, split=split or card.split, **kwargs)


__all__ = ["Sample", "SegDataset", "DataMissingError", "VOCSegmentation", "SBDSegmentation",
           "SIFTFlowSegmentation", "NYUDSegmentation", "ContextSegmentation", "SampleLoader",
           "shard_indices", "make_dataset", "READERS", "class_names", "resource_path", "read_id_list"]
