"""The FCN nets, written with :mod:`fcn_repro.caffe.netspec`.

Every net of the FCN paper's model zoo, layer for layer as the original
release (names, types and order; tests/test_original_names.py), so the
original caffemodels load by name with nothing left over, and
Crop offsets computed from the graph, at any width::

    from fcn_repro.caffe import fcn_nets
    deploy = fcn_nets.build_net("fcn8s")                          # a Message
    small = fcn_nets.build_net("fcn8s", widths=fcn_nets.VGG16_FIXTURE_WIDTHS,
                               input_shape=(8, 8))
    text = fcn_nets.net_text("fcn16s", "train")                   # prototxt text

New variants take a few lines: ``vgg_fcn(n, data, num_classes=21, stride=4)``
adds FCN-4s (a pool2 skip) to a NetSpec.

Variants (``phase``):

* ``deploy``: ``Input`` layers (placeholder shapes: reshape to the image);
  no loss.
* ``train`` / ``val``: the inputs come from a ``Python`` data layer, as in
  the original train/val prototxts: ``python_param { module:
  "fcn_repro.data.layers" layer: "<Reader>" param_str: "<JSON>" }`` whose
  tops are the net's input and label blobs (``data``, ``label``; SIFT Flow
  ``data``, ``sem``, ``geo``; NYUDv2 color-HHA ``color``, ``hha``,
  ``label``). ``param_str`` is JSON (also a Python literal): ``split``,
  ``seed`` (1337, as the originals) and, for NYUDv2, ``tops``: the
  modalities the reader yields, in top order (``color``, ``hha``, ``depth``,
  ``label``). The dataset directory and preprocessing (mean, BGR) belong to
  the reader and the tool that runs it, not to the net. The net builder
  turns the Python layer into named inputs; the train tool reads
  ``layer``/``param_str`` to pick the reader and split. Then
  ``SoftmaxWithLoss`` per score with ``ignore_label: 255`` and the
  original normalization (``normalize: false`` = sum over pixels, divided by
  the batch size; FCN-AlexNet ``normalize: true``).
* ``data_layer=False`` replaces the Python layer by ``Input`` layers for the
  data and label blobs (this is how the reduced-width Caffe fixtures are
  written; :func:`fixture_net`).

The data layers keep the original layer names (each dataset's card in
:mod:`fcn_repro.registry` holds its layer name, splits and reader): ``SBDDSegDataLayer`` (VOC
training on SBD ``train``), ``VOCSegDataLayer`` (``seg11valid``),
``SIFTFlowSegDataLayer``, ``NYUDSegDataLayer``, ``PASCALContextSegDataLayer``.

NYUDv2 color-D (early fusion) reads ``color`` (3 channels) and ``depth`` (1
channel) and concatenates them into the 4-channel ``data``; its first
convolution is named ``conv1_1_bgrd`` so that transplanting VGG-16 by name
leaves it to be learnt (VGG's ``conv1_1`` has 3 input channels). No original
color-D caffemodel is published, so no file depends on that name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from fcn_repro import registry
from fcn_repro.caffe.netspec import L, NetSpec, NetSpecError, Top, to_message
from fcn_repro.caffe.prototxt import Message, format_text

__all__ = [
    "VGG16_WIDTHS", "VGG16_FIXTURE_WIDTHS", "ALEXNET_WIDTHS", "ALEXNET_FIXTURE_WIDTHS", "SAMPLE_WIDTHS",
    "LEARNED", "FROZEN", "NetDef", "NETS", "FIXTURE_NETS", "vgg16_trunk",
    "alexnet_trunk", "fcn_head", "vgg_fcn", "build_net", "fixture_net", "net_text",
    "solver_message", "solver_text", "generate_files", "DATA_MODULE",
]

#: conv1..conv5 block widths, then fc6/fc7 width.
VGG16_WIDTHS = (64, 128, 256, 512, 512, 4096)
#: the reduced widths of the Caffe fixtures (tests/fixtures/caffe).
VGG16_FIXTURE_WIDTHS = (4, 6, 8, 10, 12, 16)
#: conv1..conv5, fc6/fc7.
ALEXNET_WIDTHS = (96, 256, 384, 384, 256, 4096)
ALEXNET_FIXTURE_WIDTHS = (8, 12, 16, 16, 12, 16)
#: the bundled sample's reduced FCN-8s (fcn_repro/resources/sample: trained in Caffe with a normalized loss)
SAMPLE_WIDTHS = (8, 16, 24, 32, 32, 64)

#: weights lr 1, decay 1; biases lr 2, decay 0 (the originals' ParamSpecs).
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
#: fixed parameters: the bilinear upsampling and the at-once scale factors.
FROZEN = [dict(lr_mult=0)]

DATA_MODULE = "fcn_repro.data.layers"
SEED = 1337  # the originals' data layer seed


# ------------------------------------------------------------------ pieces

def conv_relu(n: NetSpec, name: str, relu: str, bottom: Top, nout: int, ks: int = 3,
              stride: int = 1, pad: int = 1, group: int = 1) -> Top:
    """Convolution ``name`` plus in-place ReLU ``relu``; returns the ReLU's top."""
    n[name] = L.Convolution(bottom, num_output=nout, pad=pad, kernel_size=ks, stride=stride,
                            group=group, param=LEARNED)
    n[relu] = L.ReLU(n[name], in_place=True)
    return n[relu]


def score_conv(bottom: Top, num_classes: int) -> Top:
    """1x1 scoring convolution (no stride/group written, as the originals)."""
    return L.Convolution(bottom, num_output=num_classes, pad=0, kernel_size=1, param=LEARNED)


def upsample(bottom: Top, num_classes: int, ks: int, stride: int) -> Top:
    """Upsampling Deconvolution: no bias, no group, fixed (lr_mult 0)."""
    return L.Deconvolution(bottom, num_output=num_classes, bias_term=False, kernel_size=ks,
                           stride=stride, param=FROZEN)


def vgg16_trunk(n: NetSpec, data: Top, widths: Sequence[int] = VGG16_WIDTHS, *, suffix: str = "",
                dropout_ratio: float = 0.5, conv1_1: str | None = None) -> dict[str, Top]:
    """VGG-16 as FCN uses it: conv1_1 pad 100, fc6 a 7x7 and fc7 a 1x1 conv.

    Layer names get ``suffix`` appended (NYUDv2 late fusion: ``conv1_1color``).
    Returns the tops ``pool1``..``pool5`` and ``fc7`` (after drop7).
    """
    blocks = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    x = data
    out: dict[str, Top] = {}
    for (b, reps), width in zip(blocks, widths[:5]):
        for i in range(1, reps + 1):
            name = f"conv{b}_{i}{suffix}"
            if (b, i) == (1, 1) and conv1_1:
                name = conv1_1
            # pad 100 in conv1_1 lets the net see images smaller than its 404
            # pixel receptive field and keeps the score map larger than needed.
            x = conv_relu(n, name, f"relu{b}_{i}{suffix}", x, width,
                          pad=100 if (b, i) == (1, 1) else 1)
        n[f"pool{b}{suffix}"] = L.Pooling(x, pool="MAX", kernel_size=2, stride=2)
        x = out[f"pool{b}"] = n[f"pool{b}{suffix}"]
    x = conv_relu(n, f"fc6{suffix}", f"relu6{suffix}", x, widths[5], ks=7, pad=0)
    n[f"drop6{suffix}"] = L.Dropout(x, dropout_ratio=dropout_ratio, in_place=True)
    x = conv_relu(n, f"fc7{suffix}", f"relu7{suffix}", n[f"drop6{suffix}"], widths[5], ks=1, pad=0)
    n[f"drop7{suffix}"] = L.Dropout(x, dropout_ratio=dropout_ratio, in_place=True)
    out["fc7"] = n[f"drop7{suffix}"]
    return out


def alexnet_trunk(n: NetSpec, data: Top, widths: Sequence[int] = ALEXNET_WIDTHS, *,
                  dropout_ratio: float = 0.5) -> dict[str, Top]:
    """CaffeNet/AlexNet as FCN-AlexNet uses it: conv1 11x11 s4 pad 100, LRN
    after pool1/pool2, group 2 in conv2/4/5, fc6 a 6x6 conv. Returns ``fc7``."""
    c1, c2, c3, c4, c5, fc = widths
    x = conv_relu(n, "conv1", "relu1", data, c1, ks=11, stride=4, pad=100)
    n.pool1 = L.Pooling(x, pool="MAX", kernel_size=3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    x = conv_relu(n, "conv2", "relu2", n.norm1, c2, ks=5, pad=2, group=2)
    n.pool2 = L.Pooling(x, pool="MAX", kernel_size=3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    x = conv_relu(n, "conv3", "relu3", n.norm2, c3, ks=3, pad=1)
    x = conv_relu(n, "conv4", "relu4", x, c4, ks=3, pad=1, group=2)
    x = conv_relu(n, "conv5", "relu5", x, c5, ks=3, pad=1, group=2)
    n.pool5 = L.Pooling(x, pool="MAX", kernel_size=3, stride=2)
    x = conv_relu(n, "fc6", "relu6", n.pool5, fc, ks=6, pad=0)
    n.drop6 = L.Dropout(x, dropout_ratio=dropout_ratio, in_place=True)
    x = conv_relu(n, "fc7", "relu7", n.drop6, fc, ks=1, pad=0)
    n.drop7 = L.Dropout(x, dropout_ratio=dropout_ratio, in_place=True)
    return {"fc7": n.drop7}


def fcn_head(n: NetSpec, tops: dict[str, Top], data: Top, num_classes: int, stride: int = 32, *,
             at_once: bool = False, suffix: str = "", final_ks: int | None = None) -> Top:
    """Scoring, skip fusion and upsampling of FCN-``stride``s; returns ``score``.

    FCN-32s: score_fr -> upscore (k64 s32) -> score. Finer strides fuse the
    pool4, pool3, ... skips: upscore2 (k4 s2) + crop of score_pool4 ->
    fuse_pool4 -> upscore_pool4 (k4 s2) + crop of score_pool3 -> fuse_pool3
    -> ... -> upscore<stride> (k 2*stride, s stride) -> score, cropped to the
    input. At-once: each pool is scaled by 0.01 per level below fc7 before
    scoring (Scale with a constant filler, fixed). Names get ``suffix``.
    """
    def nm(base: str) -> str:
        return base + suffix

    if stride not in (2, 4, 8, 16, 32):
        raise NetSpecError(f"FCN stride must be 2, 4, 8, 16 or 32, got {stride}")
    n[nm("score_fr")] = score_conv(tops["fc7"], num_classes)
    if stride == 32:
        n[nm("upscore")] = upsample(n[nm("score_fr")], num_classes, final_ks or 64, 32)
        n[nm("score")] = L.Crop(n[nm("upscore")], data)
        return n[nm("score")]
    levels = list(range(4, stride.bit_length() - 2, -1))  # 16 -> [4], 8 -> [4, 3], ...
    n[nm("upscore2")] = upsample(n[nm("score_fr")], num_classes, 4, 2)
    up = n[nm("upscore2")]
    fuse = up
    for j, lvl in enumerate(levels):
        pool = tops[f"pool{lvl}"]
        if at_once:
            # FCN-8s at-once: pool4 x 0.01, pool3 x 0.0001 (in the caffemodel as a blob).
            n[nm(f"scale_pool{lvl}")] = L.Scale(
                pool, param=FROZEN, filler=dict(type="constant", value=10.0 ** (-2 * (5 - lvl))))
            pool = n[nm(f"scale_pool{lvl}")]
        n[nm(f"score_pool{lvl}")] = score_conv(pool, num_classes)
        # the crop is named after what it crops, plus "c": score_pool4c, score_pool4_semc
        crop = nm(f"score_pool{lvl}") + "c"
        n[crop] = L.Crop(n[nm(f"score_pool{lvl}")], up)
        n[nm(f"fuse_pool{lvl}")] = L.Eltwise(up, n[crop], operation="SUM")
        fuse = n[nm(f"fuse_pool{lvl}")]
        if j < len(levels) - 1:
            n[nm(f"upscore_pool{lvl}")] = upsample(fuse, num_classes, 4, 2)
            up = n[nm(f"upscore_pool{lvl}")]
    n[nm(f"upscore{stride}")] = upsample(fuse, num_classes, final_ks or 2 * stride, stride)
    n[nm("score")] = L.Crop(n[nm(f"upscore{stride}")], data)
    return n[nm("score")]


def vgg_fcn(n: NetSpec, data: Top, num_classes: int = 21, stride: int = 32, *,
            widths: Sequence[int] = VGG16_WIDTHS, at_once: bool = False,
            dropout_ratio: float = 0.5) -> Top:
    """A VGG-16 FCN-``stride``s on ``data``; returns its ``score`` top."""
    tops = vgg16_trunk(n, data, widths, dropout_ratio=dropout_ratio)
    return fcn_head(n, tops, data, num_classes, stride, at_once=at_once)


# ---------------------------------------------------------------- net bodies

# body(n, inputs, widths, dropout_ratio, loss, num_classes) builds the net after
# its inputs; loss(score, label blob, loss layer name) adds a head's loss where
# the original net has it (right after the head; nothing in deploy);
# num_classes: None for the original class count(s), else the score outputs of
# a single-head net (a user's own classes).
Loss = Callable[[Top, str, str], None]
Body = Callable[[NetSpec, dict[str, Top], Sequence[int], float, Loss, Optional[int]], None]


@dataclass(frozen=True)
class NetDef:
    """How one net of prototxt/ is built; its facts (dataset, inputs, heads) are
    its card in :mod:`fcn_repro.registry`."""

    name: str
    body: Body
    full_widths: tuple[int, ...] = VGG16_WIDTHS
    fixture_widths: tuple[int, ...] = VGG16_FIXTURE_WIDTHS
    normalize: bool = False
    solver: dict[str, Any] = field(default_factory=dict)
    solver_notes: tuple[str, ...] = ()

    @property
    def card(self) -> registry.NetCard:
        return registry.net(self.name)

    @property
    def dataset(self) -> registry.DatasetCard:
        return self.card.data

    @property
    def train_dataset(self) -> registry.DatasetCard:
        return registry.dataset(self.card.train_dataset)

    @property
    def inputs(self) -> tuple[tuple[str, int], ...]:
        """(blob, channels) of the net's inputs, labels excluded."""
        return tuple((i.blob, i.channels) for i in self.card.inputs)

    @property
    def reader_tops(self) -> tuple[str, ...] | None:
        """What the data layer yields, in top order, where the dataset has several inputs (NYUDv2)."""
        if len(self.dataset.inputs) < 2:
            return None
        return self.card.tops + tuple(self.dataset.labels)


def _voc_like(num_classes: int, stride: int, at_once: bool = False) -> Body:
    def body(n, inputs, widths, dropout_ratio, loss, nc):
        score = vgg_fcn(n, inputs["data"], nc or num_classes, stride, widths=widths, at_once=at_once,
                        dropout_ratio=dropout_ratio)
        loss(score, "label", "loss")
    return body


def _alexnet_body(n, inputs, widths, dropout_ratio, loss, nc):
    tops = alexnet_trunk(n, inputs["data"], widths, dropout_ratio=dropout_ratio)
    # k63 s32: AlexNet's output stride is 32 but its centre offset differs
    # from VGG's; the crop offset (18) comes out of the graph.
    loss(fcn_head(n, tops, inputs["data"], nc or 21, 32, final_ks=63), "label", "loss")


def _siftflow_body(stride: int) -> Body:
    def body(n, inputs, widths, dropout_ratio, loss, nc):
        _single_head("siftflow", nc)
        tops = vgg16_trunk(n, inputs["data"], widths, dropout_ratio=dropout_ratio)
        # the original: the semantic head and its loss ("loss"), then the geometric head and "loss_geo"
        loss(fcn_head(n, tops, inputs["data"], 33, stride, suffix="_sem"), "sem", "loss")
        loss(fcn_head(n, tops, inputs["data"], 3, stride, suffix="_geo"), "geo", "loss_geo")
    return body


def _nyud_single(source: str, conv1_1: str | None = None) -> Body:
    def body(n, inputs, widths, dropout_ratio, loss, nc):
        if source == "color-d":
            # early fusion: 4-channel BGR-D input
            n.data = L.Concat(inputs["color"], inputs["depth"])
            data = n.data
        else:
            data = inputs["data"]
        tops = vgg16_trunk(n, data, widths, dropout_ratio=dropout_ratio, conv1_1=conv1_1)
        loss(fcn_head(n, tops, data, nc or 40, 32), "label", "loss")
    return body


def _nyud_color_hha(n, inputs, widths, dropout_ratio, loss, nc):
    # Late fusion: two VGG trunks (names suffixed "color" / "hha"), each
    # scored right after its trunk, the scores averaged (Eltwise SUM
    # 0.5/0.5), then upsampled once.
    color = vgg16_trunk(n, inputs["color"], widths, suffix="color", dropout_ratio=dropout_ratio)
    n.score_frcolor = score_conv(color["fc7"], nc or 40)
    hha = vgg16_trunk(n, inputs["hha"], widths, suffix="hha", dropout_ratio=dropout_ratio)
    n.score_frhha = score_conv(hha["fc7"], nc or 40)
    n.score_fused = L.Eltwise(n.score_frcolor, n.score_frhha, operation="SUM", coeff=[0.5, 0.5])
    n.upscore = upsample(n.score_fused, nc or 40, 64, 32)
    n.score = L.Crop(n.upscore, inputs["color"])
    loss(n.score, "label", "loss")


def _single_head(name: str, nc: Optional[int]) -> None:
    if nc is not None:
        raise NetSpecError(f"{name}: a net with several score heads keeps its own class counts "
                         "(own classes need a single-head net: fcn32s, fcn16s, fcn8s, fcn8s-atonce, fcn-alexnet)")


# The unnormalized-loss recipe of the original VGG nets: SGD, base_lr 1e-10,
# momentum 0.99, weight_decay 5e-4, fixed policy, batch 1.
_HEAVY = dict(base_lr=1e-10, momentum=0.99, weight_decay=0.0005, lr_policy="fixed", iter_size=1)
_HEAVY_NOTE = ("From the original recipe: SGD, base_lr 1e-10 for the unnormalized loss (a sum "
               "over pixels), momentum 0.99, weight_decay 5e-4, lr_policy fixed, batch 1 "
               "(iter_size 1).")
_OURS_NOTE = ("Our choices (not among the documented facts): max_iter 100000, snapshot 4000, "
              "display and average_loss 20, test_interval 999999999 with test_initialization "
              "false (the solver never runs the test net itself: our train tool validates with "
              "the evaluate metrics), snapshot_prefix.")


def _def(name, body, **kw) -> NetDef:
    solver = dict(_HEAVY)
    solver.update(kw.pop("solver", {}))
    dataset = registry.net(name).data
    default_note = _HEAVY_NOTE if dataset.key == "voc" else (
        _HEAVY_NOTE.replace("From the original recipe", "From the original VOC recipe, applied to "
                            f"{dataset.key} as well (our choice: the documented facts give it for "
                            "the VOC nets)"))
    notes = kw.pop("solver_notes", (default_note,))
    return NetDef(name, body, solver=solver, solver_notes=tuple(notes) + (_OURS_NOTE,), **kw)


NETS: dict[str, NetDef] = {d.name: d for d in [
    _def("fcn32s", _voc_like(21, 32)),
    _def("fcn16s", _voc_like(21, 16)),
    _def("fcn8s", _voc_like(21, 8)),
    _def("fcn8s-atonce", _voc_like(21, 8, at_once=True)),
    _def("fcn-alexnet", _alexnet_body, full_widths=ALEXNET_WIDTHS,
         fixture_widths=ALEXNET_FIXTURE_WIDTHS, normalize=True,
         solver=dict(base_lr=1e-4, momentum=0.9, iter_size=20),
         solver_notes=("FCN-AlexNet's own recipe: loss normalized over valid pixels, base_lr 1e-4, "
                       "gradients accumulated over iter_size 20 images; weight_decay 5e-4, "
                       "lr_policy fixed. Our choice: momentum 0.9 (the usual value with a "
                       "normalized loss).",)),
    _def("siftflow-fcn32s", _siftflow_body(32)),
    _def("siftflow-fcn16s", _siftflow_body(16)),
    _def("siftflow-fcn8s", _siftflow_body(8)),
    _def("nyud-fcn32s-color", _nyud_single("color")),
    _def("nyud-fcn32s-hha", _nyud_single("hha")),
    _def("nyud-fcn32s-color-d", _nyud_single("color-d", conv1_1="conv1_1_bgrd")),
    _def("nyud-fcn32s-color-hha", _nyud_color_hha),
    _def("pascalcontext-fcn32s", _voc_like(60, 32)),
    _def("pascalcontext-fcn16s", _voc_like(60, 16)),
    _def("pascalcontext-fcn8s", _voc_like(60, 8)),
]}

#: the nets of which tests/fixtures/caffe holds a reduced-width Caffe copy.
FIXTURE_NETS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "pascalcontext-fcn8s",
                "siftflow-fcn8s", "nyud-fcn32s-color-hha")

PHASES = ("deploy", "train", "val")


def _netdef(name: str) -> NetDef:
    try:
        return NETS[name]
    except KeyError:
        raise registry.UnknownNameError(f"unknown net {name!r}; known: {', '.join(NETS)}") from None


def build_net(name: str, phase: str = "deploy", *, widths: Sequence[int] | None = None,
              input_shape: tuple[int, int] | None = None, dropout_ratio: float = 0.5,
              data_layer: bool = True, num_classes: Optional[int] = None,
              normalize: Optional[bool] = None) -> Message:
    """The NetParameter of net ``name`` for ``phase`` (deploy, train, val).

    ``widths``: the trunk widths (default: the real ones). ``input_shape``:
    (H, W) of the Input layers' placeholder shape (default: the dataset's
    typical image). ``data_layer=False`` feeds train/val nets from Input
    layers (data then labels, 1 channel each) instead of the Python reader.
    ``num_classes``: the score outputs of a single-head net (a user's own
    classes; default: the original dataset's). ``normalize``: the loss's
    normalization (default: the original net's).
    """
    d = _netdef(name)
    if num_classes is not None and not 1 <= int(num_classes) <= registry.IGNORE_LABEL:
        raise NetSpecError(f"num_classes must be 1..{registry.IGNORE_LABEL}, got {num_classes}")
    norm = d.normalize if normalize is None else bool(normalize)
    if phase not in PHASES:
        raise NetSpecError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    widths = tuple(widths or d.full_widths)
    if len(widths) != len(d.full_widths):
        raise NetSpecError(f"{name}: {len(d.full_widths)} widths expected, got {len(widths)}")
    h, w = input_shape or d.dataset.image_shape
    n = NetSpec()
    inputs: dict[str, Top] = {}
    labels = tuple(d.dataset.labels)
    if phase == "deploy" or not data_layer:
        for blob, ch in d.inputs:
            n[blob] = L.Input(shape=dict(dim=[1, ch, h, w]))
            inputs[blob] = n[blob]
        if phase != "deploy":
            for lab in labels:
                n[lab] = L.Input(shape=dict(dim=[1, 1, h, w]))
    else:
        source = d.train_dataset if phase == "train" else d.dataset
        blobs = [b for b, _ in d.inputs] + list(labels)
        params: dict[str, Any] = {"split": source.train_split if phase == "train" else source.val_split,
                                  "seed": SEED}
        if d.reader_tops:
            params["tops"] = list(d.reader_tops)
        tops = L.Python(module=DATA_MODULE, layer=source.layer, param_str=json.dumps(params, sort_keys=True),
                        ntop=len(blobs))
        tops = tops if isinstance(tops, tuple) else (tops,)
        for blob, t in zip(blobs, tops):
            n[blob] = t
        inputs = {b: n[b] for b, _ in d.inputs}

    def loss(score: Top, label: str, name: str) -> None:
        if phase != "deploy":
            n[name] = L.SoftmaxWithLoss(score, n[label], loss_param=dict(ignore_label=registry.IGNORE_LABEL,
                                                                         normalize=norm))

    d.body(n, inputs, widths, dropout_ratio, loss, None if num_classes is None else int(num_classes))
    return n.to_proto()


def fixture_net(name: str, train: bool = False) -> Message:
    """The reduced-width net as the Caffe fixtures have it (8x8 Input layers;
    the train variant with label Inputs, the loss, and dropout_ratio 0)."""
    d = _netdef(name)
    return build_net(name, "train" if train else "deploy", widths=d.fixture_widths,
                     input_shape=(8, 8), dropout_ratio=0 if train else 0.5, data_layer=False)


def _header(lines: Sequence[str]) -> str:
    return "".join(f"# {ln}\n" for ln in lines)


def net_text(name: str, phase: str = "deploy", **kw: Any) -> str:
    """The text of prototxt/<name>/<phase>.prototxt (with its header comment)."""
    d = _netdef(name)
    what = {"deploy": "deploy net (Input placeholder shape: the net reshapes to the image)",
            "train": f"training net ({d.train_dataset.key} {d.train_dataset.train_split} split)",
            "val": f"validation net ({d.dataset.key} {d.dataset.val_split} split)"}[phase]
    head = [f"{name}: {what}.",
            "Generated by `python -m fcn_repro.netspec` from fcn_repro/caffe/fcn_nets.py; "
            "do not edit. Crop offsets are computed from the graph."]
    return _header(head) + format_text(build_net(name, phase, **kw))


def solver_message(name: str, overrides: dict[str, Any] | None = None) -> Message:
    """The SolverParameter of prototxt/<name>/solver.prototxt (with ``overrides``: another run's fields)."""
    d = _netdef(name)
    fields: dict[str, Any] = dict(
        train_net="train.prototxt", test_net="val.prototxt", test_iter=d.dataset.val_images,
        test_interval=999999999, test_initialization=False, display=20, average_loss=20,
        max_iter=100000, snapshot=4000, snapshot_prefix="snapshot/train")
    fields.update(d.solver)
    fields.update(overrides or {})
    return to_message("SolverParameter", fields, f"solver of {name}")


def solver_text(name: str) -> str:
    d = _netdef(name)
    head = [f"{name}: solver. Generated by `python -m fcn_repro.netspec`; do not edit.",
            *d.solver_notes,
            f"test_iter {d.dataset.val_images}: the images of the {d.dataset.key} "
            f"{d.dataset.val_split} split, one per iteration.",
            "Net paths are relative to this file's directory."]
    return _header(head) + format_text(solver_message(name))


def generate_files(names: Sequence[str] | None = None) -> dict[str, str]:
    """``{"<net>/<file>.prototxt": text}`` for every net of prototxt/."""
    out: dict[str, str] = {}
    for name in names or list(NETS):
        for phase in PHASES:
            out[f"{name}/{phase}.prototxt"] = net_text(name, phase)
        out[f"{name}/solver.prototxt"] = solver_text(name)
    return out
