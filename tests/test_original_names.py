"""Every generated net equals the original release layer for layer: names and types.

The lists below are the original FCN release's layers (fcn.berkeleyvision.org,
each net's net.py / train and test prototxts), in order, with the data layer
left out ("inputs aside": the original's Python data layer is our Python data
layer in train/val and Input layers in deploy). Deploy nets are the same list
without the losses.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fcn_repro.caffe import fcn_nets
from fcn_repro.caffe.prototxt import parse_prototxt

REPO = Path(__file__).resolve().parent.parent

C, R, P, D = "Convolution", "ReLU", "Pooling", "Dropout"
DC, CR, E, S, LOSS = "Deconvolution", "Crop", "Eltwise", "Scale", "SoftmaxWithLoss"

VGG16 = [
    ("conv1_1", C), ("relu1_1", R), ("conv1_2", C), ("relu1_2", R), ("pool1", P),
    ("conv2_1", C), ("relu2_1", R), ("conv2_2", C), ("relu2_2", R), ("pool2", P),
    ("conv3_1", C), ("relu3_1", R), ("conv3_2", C), ("relu3_2", R), ("conv3_3", C), ("relu3_3", R), ("pool3", P),
    ("conv4_1", C), ("relu4_1", R), ("conv4_2", C), ("relu4_2", R), ("conv4_3", C), ("relu4_3", R), ("pool4", P),
    ("conv5_1", C), ("relu5_1", R), ("conv5_2", C), ("relu5_2", R), ("conv5_3", C), ("relu5_3", R), ("pool5", P),
    ("fc6", C), ("relu6", R), ("drop6", D), ("fc7", C), ("relu7", R), ("drop7", D),
]


def _suffixed(layers, suffix):
    return [(n + suffix, t) for n, t in layers]


HEAD32 = [("score_fr", C), ("upscore", DC), ("score", CR), ("loss", LOSS)]
HEAD16 = [("score_fr", C), ("upscore2", DC), ("score_pool4", C), ("score_pool4c", CR), ("fuse_pool4", E),
          ("upscore16", DC), ("score", CR), ("loss", LOSS)]
HEAD8 = [("score_fr", C), ("upscore2", DC), ("score_pool4", C), ("score_pool4c", CR), ("fuse_pool4", E),
         ("upscore_pool4", DC), ("score_pool3", C), ("score_pool3c", CR), ("fuse_pool3", E), ("upscore8", DC),
         ("score", CR), ("loss", LOSS)]
HEAD8_ATONCE = [("score_fr", C), ("upscore2", DC), ("scale_pool4", S), ("score_pool4", C), ("score_pool4c", CR),
                ("fuse_pool4", E), ("upscore_pool4", DC), ("scale_pool3", S), ("score_pool3", C),
                ("score_pool3c", CR), ("fuse_pool3", E), ("upscore8", DC), ("score", CR), ("loss", LOSS)]
ALEXNET = [("conv1", C), ("relu1", R), ("pool1", P), ("norm1", "LRN"), ("conv2", C), ("relu2", R), ("pool2", P),
           ("norm2", "LRN"), ("conv3", C), ("relu3", R), ("conv4", C), ("relu4", R), ("conv5", C), ("relu5", R),
           ("pool5", P), ("fc6", C), ("relu6", R), ("drop6", D), ("fc7", C), ("relu7", R), ("drop7", D)]
SIFT32 = [("score_fr_sem", C), ("upscore_sem", DC), ("score_sem", CR), ("loss", LOSS),
          ("score_fr_geo", C), ("upscore_geo", DC), ("score_geo", CR), ("loss_geo", LOSS)]
SIFT16 = [("score_fr_sem", C), ("upscore2_sem", DC), ("score_pool4_sem", C), ("score_pool4_semc", CR),
          ("fuse_pool4_sem", E), ("upscore16_sem", DC), ("score_sem", CR), ("loss", LOSS),
          ("score_fr_geo", C), ("upscore2_geo", DC), ("score_pool4_geo", C), ("score_pool4_geoc", CR),
          ("fuse_pool4_geo", E), ("upscore16_geo", DC), ("score_geo", CR), ("loss_geo", LOSS)]
SIFT8 = [("score_fr_sem", C), ("upscore2_sem", DC), ("score_pool4_sem", C), ("score_pool4_semc", CR),
         ("fuse_pool4_sem", E), ("upscore_pool4_sem", DC), ("score_pool3_sem", C), ("score_pool3_semc", CR),
         ("fuse_pool3_sem", E), ("upscore8_sem", DC), ("score_sem", CR), ("loss", LOSS),
         ("score_fr_geo", C), ("upscore2_geo", DC), ("score_pool4_geo", C), ("score_pool4_geoc", CR),
         ("fuse_pool4_geo", E), ("upscore_pool4_geo", DC), ("score_pool3_geo", C), ("score_pool3_geoc", CR),
         ("fuse_pool3_geo", E), ("upscore8_geo", DC), ("score_geo", CR), ("loss_geo", LOSS)]
COLOR_D = [("data", "Concat"), ("conv1_1_bgrd", C)] + VGG16[1:] + HEAD32
COLOR_HHA = (_suffixed(VGG16, "color") + [("score_frcolor", C)] + _suffixed(VGG16, "hha")
             + [("score_frhha", C), ("score_fused", E), ("upscore", DC), ("score", CR), ("loss", LOSS)])

ORIGINAL = {
    "fcn32s": VGG16 + HEAD32, "fcn16s": VGG16 + HEAD16, "fcn8s": VGG16 + HEAD8,
    "fcn8s-atonce": VGG16 + HEAD8_ATONCE, "fcn-alexnet": ALEXNET + HEAD32,
    "siftflow-fcn32s": VGG16 + SIFT32, "siftflow-fcn16s": VGG16 + SIFT16, "siftflow-fcn8s": VGG16 + SIFT8,
    "nyud-fcn32s-color": VGG16 + HEAD32, "nyud-fcn32s-hha": VGG16 + HEAD32, "nyud-fcn32s-color-d": COLOR_D,
    "nyud-fcn32s-color-hha": COLOR_HHA, "pascalcontext-fcn32s": VGG16 + HEAD32,
    "pascalcontext-fcn16s": VGG16 + HEAD16, "pascalcontext-fcn8s": VGG16 + HEAD8,
}


def test_every_net_is_listed():
    assert set(ORIGINAL) == set(fcn_nets.NETS)


def _layers(netparam):
    """(name, type) of the layers after the inputs (Input layers, the Python data layer)."""
    return [(str(x.get("name")), str(x.get("type"))) for x in netparam.getall("layer")
            if x.get("type") not in ("Input", "Python")]


@pytest.mark.parametrize("phase", ["train", "val", "deploy"])
@pytest.mark.parametrize("name", list(ORIGINAL))
def test_generated_nets_are_the_originals_layer_for_layer(name, phase):
    want = ORIGINAL[name] if phase != "deploy" else [x for x in ORIGINAL[name] if x[1] != LOSS]
    assert _layers(fcn_nets.build_net(name, phase)) == want
    # and the committed prototxt/ (python -m fcn_repro.netspec --check keeps them equal)
    assert _layers(parse_prototxt(REPO / "prototxt" / name / f"{phase}.prototxt")) == want
