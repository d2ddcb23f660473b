"""The registry is the one home of the nets' and datasets' facts, and everything reads it."""
from __future__ import annotations

import numpy as np
import pytest

from fcn_repro import registry
from fcn_repro.caffe import fcn_nets
from fcn_repro.caffe.prototxt import parse_prototxt
from fcn_repro.data import READERS, make_dataset, resource_path
from fcn_repro.data.layers import find_data_layer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_generated_net_has_a_card_and_the_zoo_is_the_registry():
    assert list(registry.NETS) == list(fcn_nets.NETS)
    assert set(READERS) == set(registry.DATASETS)
    with pytest.raises(ValueError, match="known nets: fcn32s"):
        registry.net("fcn4s")


def test_published_references_and_file_facts():
    four = {n: (r.pixel_acc, r.mean_acc, r.mean_iu, r.fwavacc)
            for n, c in registry.NETS.items() for r in c.references if r.asserted and r.decimals == 4}
    assert four == {"fcn32s": (90.4810, 76.4824, 63.6261, 83.4580), "fcn16s": (90.9971, 78.0710, 65.0050, 84.2614),
                    "fcn8s": (91.2212, 77.6146, 65.5126, 84.5445),
                    "fcn8s-atonce": (91.1288, 78.4979, 65.3998, 84.4326)}
    alex = registry.net("fcn-alexnet").reference(asserted=True)
    assert (alex.mean_iu, alex.decimals, alex.pixel_acc) == (48.0, 1, None)
    # the paper's other datasets: context only, never asserted
    sift = registry.net("siftflow-fcn16s").reference("score_sem")
    assert not sift.asserted and (sift.pixel_acc, sift.mean_iu, dict(sift.extra)) == (85.2, 39.5, {"geometric acc": 94.3})
    w = registry.net("fcn8s").weights
    assert w.sha1 == "c449ea74dd7d83751d1357d6a8c323fcf4038962" and len(w.urls) == 2
    assert w.url == "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel"
    assert registry.net("fcn32s").weights.bytes == 544_614_787
    assert registry.INIT_WEIGHTS["vgg16"].bytes == 553_432_081
    assert registry.net("nyud-fcn32s-color-d").weights is None


def test_api_for_predictors():
    m = registry.mean("fcn8s")
    assert m.dtype == np.float64 and m[2] == pytest.approx(122.67891434)
    assert registry.mean("siftflow-fcn8s").dtype == np.float32
    assert registry.mean("nyud-fcn32s-hha")[0] == pytest.approx(132.431)
    assert len(registry.classes("fcn8s")) == 21 and len(registry.classes("siftflow-fcn8s", "score_geo")) == 3
    assert len(registry.classes("pascalcontext-fcn8s")) == 60 and registry.classes("sample")[1] == "disc"
    assert [(i.blob, i.channels, i.reads) for i in registry.inputs("nyud-fcn32s-color-hha")] == \
        [("color", 3, ("color",)), ("hha", 3, ("hha",))]
    assert registry.net("nyud-fcn32s-color").input_map == {"data": ("color",)}
    assert registry.net("siftflow-fcn8s").pairing == {"score_sem": "sem", "score_geo": "geo"}


@pytest.mark.parametrize("name", list(registry.NETS))
def test_generated_data_layers_name_the_cards_datasets(name):
    card = registry.net(name)
    for phase, ds in (("train", registry.dataset(card.train_dataset)), ("val", card.data)):
        net = parse_prototxt(REPO / "prototxt" / name / f"{phase}.prototxt")
        layer = find_data_layer(net, [i.blob for i in card.inputs])
        assert layer.dataset == ds.key
        assert layer.split == (ds.train_split if phase == "train" else ds.val_split)
        assert list(layer.blobs) == [i.blob for i in card.inputs] + list(ds.labels)
        for blob, ch in zip(layer.blobs, [i.channels for i in card.inputs]):
            assert registry.DATA_TOP_CHANNELS.get(blob, ch) == ch


def test_readers_take_heads_and_protocol_from_their_card():
    ds = make_dataset("sample", resource_path("sample", "sample"))
    assert ds.split == "val" and ds.heads == {"label": registry.class_names("sample")}
    assert not ds.exclude_absent
    assert registry.dataset("siftflow").exclude_absent
    assert registry.dataset_for_layer("SBDDSegDataLayer").key == "sbd"
