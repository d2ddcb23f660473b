"""netspec: the net-specification library, crop offsets, the FCN nets, prototxt/.

The crop offsets are checked three ways: against the offsets real Caffe's
NetSpec/coord_map wrote into the fixture prototxts (and FACTS.md's list),
and against an independent brute-force measurement that runs the net's
geometry numerically (a coordinate ramp pushed through averaging
convolutions and bilinear deconvolutions) and reads the alignment off the
numbers.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import caffe_fixture
from fcn_repro.caffe import fcn_nets
from fcn_repro.caffe.netspec import (
    L, P, CoordMapError, NetSpec, NetSpecError, blob_coord_maps, check_crop_offsets,
    compute_crop_offsets, to_message,
)
from fcn_repro.caffe.prototxt import Enum, Message, format_text, parse_prototxt, parse_text

REPO = Path(__file__).resolve().parent.parent
PROTOTXT = REPO / "prototxt"

# FACTS.md "Architecture facts": the offsets Caffe's coord_map gives.
FACT_OFFSETS = {
    "fcn32s": {"score": 19},
    "fcn16s": {"score_pool4c": 5, "score": 27},
    "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn8s-atonce": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn-alexnet": {"score": 18},
}


# ------------------------------------------------------------ brute force

def _axis_geometry(param: Message, axis: int, pooling: bool) -> tuple[int, int, int, int]:
    """(kernel, stride, pad, dilation) along axis 0 (y) or 1 (x), read plainly."""
    def one(single, h, w, default):
        if param.has(h if axis == 0 else w):
            return int(param.get(h if axis == 0 else w))
        vals = param.getall(single)
        if not vals:
            return default
        return int(vals[axis] if len(vals) > 1 else vals[0])
    k = one("kernel_size", "kernel_h", "kernel_w", None)
    s = one("stride", "stride_h", "stride_w", 1)
    p = one("pad", "pad_h", "pad_w", 0)
    d = 1 if pooling else one("dilation", "_no_h", "_no_w", 1)
    return k, s, p, d


def brute_force_offsets(net: Message, size: int = 900) -> dict[str, tuple[int, int]]:
    """Measure every Crop's alignment numerically, one spatial axis at a time.

    Each blob carries two 1-D signals: R, the input coordinate its positions
    sit on, and M, the fraction of that position's support lying inside the
    input. The input is R = 0, 1, 2, ..., M = 1. A convolution or pooling
    window averages (uniform weights); a deconvolution interpolates with the
    bilinear kernel (exact on a ramp when stride = ceil(k/2)). Where M == 1,
    R is exactly the input position the blob position is centred on. A Crop
    offset is read off as the shift that puts A's R on B's R; Eltwise bottoms
    must agree wherever both are interior.
    """
    result: dict[str, list[int]] = {}
    for axis in (0, 1):
        blobs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in net.getall("layer"):
            lname, ltype = layer.get("name"), layer.get("type")
            bottoms, tops = layer.getall("bottom"), layer.getall("top")
            if ltype == "Input":
                r = torch.arange(size, dtype=torch.float64).view(1, 1, -1)
                out = [(r, torch.ones_like(r))]
            elif ltype in ("Convolution", "Pooling"):
                pooling = ltype == "Pooling"
                k, s, p, d = _axis_geometry(layer.sub("pooling_param" if pooling else
                                                      "convolution_param"), axis, pooling)
                w = torch.full((1, 1, k), 1.0 / k, dtype=torch.float64)
                r, m = blobs[bottoms[0]]
                out = [tuple(F.conv1d(t, w, stride=s, padding=p, dilation=d) for t in (r, m))]
            elif ltype == "Deconvolution":
                k, s, p, d = _axis_geometry(layer.sub("convolution_param"), axis, False)
                f = math.ceil(k / 2)
                assert s == f and d == 1, "brute force interpolates exactly only for s = ceil(k/2)"
                c = f - 1 if k % 2 else f - 0.5
                w = torch.tensor([1 - abs(j - c) / f for j in range(k)], dtype=torch.float64)
                r, m = blobs[bottoms[0]]
                out = [tuple(F.conv_transpose1d(t, w.view(1, 1, k), stride=s, padding=p)
                             for t in (r, m))]
            elif ltype == "Crop":
                (ra, ma), (rb, mb) = blobs[bottoms[0]], blobs[bottoms[1]]
                ra, ma, rb, mb = (t.flatten() for t in (ra, ma, rb, mb))
                int_b = torch.nonzero((mb - 1).abs() < 1e-9).flatten()
                int_a = torch.nonzero((ma - 1).abs() < 1e-9).flatten()
                assert len(int_a) and len(int_b), f"{lname}: no interior positions; enlarge size"
                # for each interior position of B, the interior position of A on the same
                # input coordinate (if any); all must differ by the same shift
                dist = (ra[int_a].view(1, -1) - rb[int_b].view(-1, 1)).abs()
                best, j = dist.min(dim=1)
                matched = best < 1e-7
                shifts = set((int_a[j[matched]] - int_b[matched]).tolist())
                assert len(shifts) == 1, f"{lname}: B's positions sit on A's at shifts {shifts}"
                off = shifts.pop()
                ys = int_b[(int_b + off >= 0) & (int_b + off < len(ma))]
                ys = ys[((ma[ys + off] - 1).abs() < 1e-9)]
                assert len(ys) > 1
                assert torch.allclose(ra[ys + off], rb[ys], atol=1e-9), lname
                result.setdefault(lname, []).append(off)
                nb = len(rb)
                out = [(ra[off:off + nb].view(1, 1, -1), ma[off:off + nb].view(1, 1, -1))]
            elif ltype in ("Eltwise", "Concat"):
                sigs = [blobs[b] for b in bottoms]
                (r0, m0) = sigs[0]
                for r1, m1 in sigs[1:]:
                    both = ((m0 - 1).abs() < 1e-9) & ((m1 - 1).abs() < 1e-9)
                    assert both.any(), f"{lname}: bottoms never both interior"
                    assert torch.allclose(r0[both], r1[both], atol=1e-9), f"{lname}: misaligned"
                out = [(sum(s[0] for s in sigs) / len(sigs), sum(s[1] for s in sigs) / len(sigs))]
            elif ltype in ("ReLU", "Dropout", "LRN", "Scale"):
                out = [blobs[bottoms[0]]]
            else:
                raise AssertionError(f"brute force does not model {ltype}")
            for t, sig in zip(tops, out * len(tops)):
                blobs[t] = sig
    return {k: tuple(v) for k, v in result.items()}


# ------------------------------------------------------------ the fixtures

def _fixture_file(name: str, train: bool) -> Path:
    return caffe_fixture(f"{name}{'.train' if train else ''}.prototxt")


# The Caffe fixtures were written before the generated nets took the original
# release's crop names and layer order (tests/test_original_names.py holds
# those): their SIFT Flow crops are named score_pool4c_sem, ... where the
# original has score_pool4_semc, ...; their SIFT Flow train net has both losses
# at the end, and their NYUDv2 late-fusion net scores both trunks after both,
# where the original puts each loss after its head and each score_fr after its
# trunk. The renames are applied to the fixture's text; reordered nets are
# compared layer by layer by name.
FIXTURE_RENAMES = {"siftflow-fcn8s": {f"score_pool{p}c_{h}": f"score_pool{p}_{h}c"
                                      for p in (3, 4) for h in ("sem", "geo")}}
FIXTURE_REORDERED = {("siftflow-fcn8s", True), ("nyud-fcn32s-color-hha", False), ("nyud-fcn32s-color-hha", True)}


@pytest.mark.parametrize("train", [False, True], ids=["deploy", "train"])
@pytest.mark.parametrize("name", fcn_nets.FIXTURE_NETS)
def test_reduced_nets_equal_caffe_fixtures(name, train):
    path = _fixture_file(name, train)
    text = path.read_text()
    for old, new in FIXTURE_RENAMES.get(name, {}).items():
        assert f'"{old}"' in text
        text = text.replace(f'"{old}"', f'"{new}"')
    want = parse_prototxt(text)
    got = fcn_nets.fixture_net(name, train)
    wl, gl = want.getall("layer"), got.getall("layer")
    if (name, train) in FIXTURE_REORDERED:
        by_name = {x.get("name"): x for x in wl}
        assert sorted(by_name) == sorted(x.get("name") for x in gl)
        assert [x.get("name") for x in gl] != [x.get("name") for x in wl]
        for g in gl:
            w = by_name[g.get("name")]
            assert g == w, f"{path}: layer {w.get('name')!r} differs:\n{format_text(g)}\nvs Caffe's\n{format_text(w)}"
        return
    assert [x.get("name") for x in gl] == [x.get("name") for x in wl]
    for w, g in zip(wl, gl):
        assert g == w, f"{path}: layer {w.get('name')!r} differs:\n{format_text(g)}\nvs Caffe's\n{format_text(w)}"
    assert got == want
    # and byte for byte, as Caffe's NetSpec printed it
    assert format_text(got) == text


@pytest.mark.parametrize("name", fcn_nets.FIXTURE_NETS)
def test_fixture_offsets_recomputed(name):
    path = _fixture_file(name, False)
    assert check_crop_offsets(path) == {}
    offs = compute_crop_offsets(path)
    written = {layer.get("name"): tuple(layer.sub("crop_param").getall("offset"))
               for layer in parse_prototxt(path).getall("layer") if layer.get("type") == "Crop"}
    assert set(offs) == set(written)
    for k, v in offs.items():
        assert v == written[k] * 2 if len(written[k]) == 1 else v == written[k]
    for k, v in FACT_OFFSETS.get(name, {}).items():
        assert offs[k] == (v, v)


def test_check_crop_offsets_reports_a_wrong_offset():
    net = parse_prototxt(_fixture_file("fcn16s", False))
    for layer in net.getall("layer"):
        if layer.get("name") == "score_pool4c":
            layer.sub("crop_param").set("offset", 6)
    bad = check_crop_offsets(net)
    assert bad == {"score_pool4c": ((6, 6), (5, 5))}
    # taken as written, the wrong offset misaligns the Eltwise after it
    with pytest.raises(CoordMapError, match=r"layer 'fuse_pool4' combines bottoms with different"):
        compute_crop_offsets(net, only=["score"])
    assert compute_crop_offsets(net)["score"] == (27, 27)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet",
                                  "siftflow-fcn8s", "nyud-fcn32s-color-hha"])
def test_offsets_match_brute_force_on_generated_nets(name):
    net = fcn_nets.build_net(name, "deploy", widths=fcn_nets.NETS[name].fixture_widths)
    computed = compute_crop_offsets(net)
    assert computed
    assert brute_force_offsets(net) == computed


def test_fcn_alexnet_coordinate_maps():
    maps = blob_coord_maps(fcn_nets.build_net("fcn-alexnet"))
    my, mx = maps["fc7"]["data"]
    # 32 pixels per fc7 step; the brute force measures the same
    assert my.scale == 32 and mx.scale == 32
    up = maps["upscore"]["data"][0]
    assert up.scale == 1 and up.shift == -18


# --------------------------------------------------------------- variants

def _stride3_net(rect: bool = False) -> NetSpec:
    """Stride-3 pools, a dilated conv, a padded odd deconvolution, a 3x skip."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 64, 64]))
    if rect:
        n.c1 = L.Convolution(n.data, num_output=2, kernel_h=5, kernel_w=3, pad_h=8, pad_w=4)
    else:
        n.c1 = L.Convolution(n.data, num_output=2, kernel_size=5, pad=8)
    n.p1 = L.Pooling(n.c1, pool=P.Pooling.MAX, kernel_size=3, stride=3, pad=1)
    n.c2 = L.Convolution(n.p1, num_output=2, kernel_size=3, pad=1, dilation=2)
    n.r2 = L.ReLU(n.c2, in_place=True)
    n.p2 = L.Pooling(n.r2, pool="MAX", kernel_size=3, stride=3)
    n.s2 = L.Convolution(n.p2, num_output=2, kernel_size=1)
    n.up = L.Deconvolution(n.s2, num_output=2, kernel_size=5, stride=3, pad=1, bias_term=False)
    n.s1 = L.Convolution(n.p1, num_output=2, kernel_size=1)
    n.s1c = L.Crop(n.s1, n.up)
    n.fuse = L.Eltwise(n.up, n.s1c, operation="SUM")
    n.up2 = L.Deconvolution(n.fuse, num_output=2, kernel_size=5, stride=3, bias_term=False)
    n.score = L.Crop(n.up2, n.data)
    return n


def test_stride3_variant_matches_brute_force():
    net = _stride3_net().to_proto()
    computed = compute_crop_offsets(net)
    assert brute_force_offsets(net, size=300) == computed
    assert computed["score"] != (0, 0) and computed["s1c"] != (0, 0)
    # the written net carries them (one value: equal on both axes)
    crops = {x.get("name"): x.sub("crop_param") for x in net.getall("layer") if x.get("type") == "Crop"}
    assert crops["score"].getall("offset") == [computed["score"][0]]
    assert crops["score"].get("axis") == 2


def test_rectangular_variant_gets_two_offsets():
    net = _stride3_net(rect=True).to_proto()
    computed = compute_crop_offsets(net)
    oy, ox = computed["score"]
    assert oy != ox
    assert brute_force_offsets(net, size=300) == computed
    crop = [x for x in net.getall("layer") if x.get("name") == "score"][0].sub("crop_param")
    assert crop.getall("offset") == [oy, ox]


@pytest.mark.parametrize("stride", [4, 2])
def test_fcn4s_and_fcn2s(stride):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    fcn_nets.vgg_fcn(n, n.data, 21, stride, widths=fcn_nets.VGG16_FIXTURE_WIDTHS)
    net = n.to_proto()
    names = [x.get("name") for x in net.getall("layer")]
    assert f"upscore{stride}" in names and "score_pool2c" in names
    computed = compute_crop_offsets(net)
    # the shared part agrees with FCN-8s, the rest with the measurement
    assert computed["score_pool4c"] == (5, 5) and computed["score_pool3c"] == (9, 9)
    assert brute_force_offsets(net) == computed


def test_crop_axis3_and_explicit_offsets():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.c = L.Convolution(n.data, num_output=1, kernel_size=3, pad=4)
    n.x_only = L.Crop(n.c, n.data, axis=3)
    n.given = L.Crop(n.c, n.data, offset=[1, 2])
    net = n.to_proto()
    layers = {x.get("name"): x for x in net.getall("layer")}
    assert layers["x_only"].sub("crop_param") == Message([("axis", 3), ("offset", 3)])
    assert layers["given"].sub("crop_param") == Message([("offset", 1), ("offset", 2)])
    assert check_crop_offsets(net) == {"given": ((1, 2), (3, 3))}


# ------------------------------------------------------------------ errors

def _base() -> NetSpec:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1)
    n.pool = L.Pooling(n.conv, pool="MAX", kernel_size=2, stride=2)
    return n


def test_error_fractional_offset():
    n = _base()
    n.up = L.Deconvolution(n.pool, num_output=4, kernel_size=3, stride=2, bias_term=False)
    n.score = L.Crop(n.up, n.data)
    with pytest.raises(CoordMapError, match=r"layer 'score' \(Crop\).*fractional offset 1/2"):
        n.to_proto()


def test_error_scales_differ():
    n = _base()
    n.score = L.Crop(n.pool, n.data)
    with pytest.raises(CoordMapError, match=r"'score'.*different scales"):
        n.to_proto()


def test_error_no_shared_input():
    n = _base()
    n.other = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.score = L.Crop(n.conv, n.other)
    with pytest.raises(CoordMapError, match=r"'conv' and 'other' share no input"):
        n.to_proto()


def test_error_negative_offset():
    n = _base()
    n.big = L.Convolution(n.data, num_output=4, kernel_size=3, pad=5)
    n.score = L.Crop(n.data, n.big)
    with pytest.raises(CoordMapError, match="cannot be negative"):
        n.to_proto()


def test_error_through_unmappable_layer():
    n = _base()
    n.fc = L.InnerProduct(n.pool, num_output=4)
    n.score = L.Crop(n.fc, n.data)
    with pytest.raises(CoordMapError, match=r"coordinates restart at layer 'fc' \(InnerProduct\)"):
        n.to_proto()


def test_error_misaligned_eltwise():
    n = _base()
    n.a = L.Convolution(n.data, num_output=4, kernel_size=3, pad=0)
    n.sum = L.Eltwise(n.conv, n.a)
    n.score = L.Crop(n.sum, n.data)
    with pytest.raises(CoordMapError, match=r"layer 'sum' combines bottoms with different"):
        n.to_proto()


def test_error_axis_1_crop():
    n = _base()
    n.score = L.Crop(n.conv, n.data, axis=1)
    with pytest.raises(CoordMapError, match="give the offsets explicitly"):
        n.to_proto()


def test_common_input_found_through_late_fusion():
    # color-hha: the fused score derives from both inputs; only 'color' is shared.
    net = fcn_nets.build_net("nyud-fcn32s-color-hha", widths=fcn_nets.VGG16_FIXTURE_WIDTHS)
    maps = blob_coord_maps(net)
    assert set(maps["score_fused"]) == {"color", "hha"}
    assert compute_crop_offsets(net) == {"score": (19, 19)}


# ------------------------------------------------------------ netspec API

def test_in_place_naming_ntop_and_order():
    n = NetSpec()
    n.data, n.label = L.Python(module="m", layer="Lay", param_str="{}", ntop=2)
    n.conv1 = L.Convolution(n.data, num_output=2, kernel_size=3, param=fcn_nets.LEARNED)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label, ignore_label=255, normalize=False)
    net = n.to_proto()
    layers = net.getall("layer")
    assert [x.get("name") for x in layers] == ["data", "conv1", "relu1", "loss"]
    assert layers[0].getall("top") == ["data", "label"]
    assert layers[2].getall("bottom") == ["conv1"] and layers[2].getall("top") == ["conv1"]
    assert layers[3].getall("bottom") == ["conv1", "label"]
    assert layers[3].sub("loss_param") == Message([("ignore_label", 255), ("normalize", False)])
    text = format_text(net)
    assert parse_text(text) == net


def test_field_order_follows_caffe_proto_not_kwargs():
    n1, n2 = NetSpec(), NetSpec()
    for n, kw in ((n1, dict(num_output=3, pad=1, kernel_size=3, stride=2, group=1, dilation=2)),
                  (n2, dict(group=1, dilation=2, stride=2, kernel_size=3, pad=1, num_output=3))):
        n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
        n.c = L.Convolution(n.data, param=[dict(decay_mult=1, lr_mult=1)], **kw)
    assert n1.to_text() == n2.to_text()
    cp = n1.to_proto().getall("layer")[1].sub("convolution_param")
    assert [k for k, _ in cp.fields] == ["num_output", "pad", "kernel_size", "stride", "dilation", "group"]
    spec = n1.to_proto().getall("layer")[1].sub("param")
    assert [k for k, _ in spec.fields] == ["lr_mult", "decay_mult"]


def test_enums_and_strings():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.p = L.Pooling(n.data, pool="AVE", kernel_size=2, stride=2, round_mode=P.Pooling.FLOOR)
    n.e = L.Eltwise(n.data, n.data, operation=P.Eltwise.PROD)
    n.d = L.Dropout(n.data, dropout_ratio=0.5, include=dict(phase="TRAIN"))
    text = n.to_text()
    assert "pool: AVE\n" in text and "round_mode: FLOOR\n" in text and "operation: PROD\n" in text
    assert "phase: TRAIN\n" in text
    layer = n.to_proto().getall("layer")[1]
    assert isinstance(layer.sub("pooling_param").get("pool"), Enum)
    assert type(layer.get("name")) is str  # quoted
    with pytest.raises(NetSpecError, match="not a value of enum PoolMethod"):
        n.bad = L.Pooling(n.data, pool="MAXIMUM", kernel_size=2)
        n.to_proto()


def test_schema_errors():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.c = L.Convolution(n.data, num_output=2, kernel_sise=3)
    with pytest.raises(NetSpecError, match=r"layer 'c' \(Convolution\).*no field 'kernel_sise'"):
        n.to_proto()
    n.c = L.Convolution(n.data, num_output="2", kernel_size=3)
    with pytest.raises(NetSpecError, match="'num_output' needs an integer"):
        n.to_proto()
    n.c = L.Convolution(n.data, num_output=[2, 3], kernel_size=3)
    with pytest.raises(NetSpecError, match="not repeated"):
        n.to_proto()
    with pytest.raises(NetSpecError, match="unpack them"):
        n.x = L.Python(module="m", layer="l", ntop=2)
    n2 = NetSpec()
    n2.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n2.w = L.WeirdType(n2.data, foo=1)
    with pytest.raises(NetSpecError, match="no parameter message is known"):
        n2.to_proto()
    n2.w = L.WeirdType(n2.data)
    assert n2.to_proto().getall("layer")[1].get("type") == "WeirdType"
    # a parameter message caffe.proto has but SCHEMA does not list passes through as given
    n2.w = L.Embed(n2.data, num_output=3, input_dim=7)
    assert n2.to_proto().getall("layer")[1].sub("embed_param") == Message(
        [("num_output", 3), ("input_dim", 7)])


def test_write(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.write(tmp_path / "x" / "net.prototxt", name="tiny")
    m = parse_prototxt(tmp_path / "x" / "net.prototxt")
    assert m.get("name") == "tiny" and m.getall("layer")[0].get("type") == "Input"


def test_unknown_bottom_in_parsed_net():
    net = parse_text('layer { name: "c" type: "Crop" bottom: "a" bottom: "b" top: "c" }')
    with pytest.raises(CoordMapError, match=r"layer 'c' reads blob 'a', which no earlier layer produces"):
        compute_crop_offsets(net)


def test_reading_a_blob_overwritten_in_place_is_refused():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=1)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.other = L.Convolution(n.conv, num_output=2, kernel_size=1)  # pre-ReLU conv: wrong in Caffe
    with pytest.raises(NetSpecError, match=r"reads blob 'conv' as it was before in-place layer 'relu'"):
        n.to_proto()


def test_duplicate_names_refused():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.a = L.Convolution(n.data, num_output=2, kernel_size=1, name="same")
    n.b = L.Convolution(n.a, num_output=2, kernel_size=1, name="same")
    with pytest.raises(NetSpecError, match="two layers are named 'same'"):
        n.to_proto()


def test_unnamed_tops_get_unique_names():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.out = L.ReLU(L.Convolution(L.Convolution(n.data, num_output=1, kernel_size=1),
                                 num_output=1, kernel_size=1))
    names = [x.get("name") for x in n.to_proto().getall("layer")]
    assert names == ["data", "convolution1", "convolution2", "out"]


def test_to_message_solver_order_and_checks():
    m = to_message("SolverParameter", dict(momentum=0.99, base_lr=1e-10, train_net="t.prototxt",
                                           solver_mode="GPU"))
    assert format_text(m) == 'train_net: "t.prototxt"\nbase_lr: 1e-10\nmomentum: 0.99\nsolver_mode: GPU\n'
    with pytest.raises(NetSpecError, match="no field 'learning_rate'"):
        to_message("SolverParameter", dict(learning_rate=1))


# ------------------------------------------------------- nets, prototxt/

def test_registry_has_every_net():
    assert set(fcn_nets.NETS) == {
        "fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "siftflow-fcn32s",
        "siftflow-fcn16s", "siftflow-fcn8s", "nyud-fcn32s-color", "nyud-fcn32s-hha",
        "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha", "pascalcontext-fcn32s",
        "pascalcontext-fcn16s", "pascalcontext-fcn8s"}


def test_committed_prototxt_equal_generator():
    files = fcn_nets.generate_files()
    assert len(files) == 4 * len(fcn_nets.NETS)
    for rel, text in files.items():
        p = PROTOTXT / rel
        assert p.exists(), f"{p} missing: run python -m fcn_repro.netspec"
        assert p.read_text() == text, f"{p} is out of date: run python -m fcn_repro.netspec"
    on_disk = {p.relative_to(PROTOTXT).as_posix() for p in PROTOTXT.glob("*/*.prototxt")}
    assert on_disk == set(files)


def test_cli_check_and_generate(tmp_path, capsys):
    from fcn_repro.netspec import main
    # the entry point itself, once, as users run it
    r = subprocess.run([sys.executable, "-m", "fcn_repro.netspec", "--check"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "p"
    assert main(["--out", str(out), "fcn8s", "fcn-alexnet"]) == 0
    assert sorted(p.name for p in (out / "fcn8s").iterdir()) == [
        "deploy.prototxt", "solver.prototxt", "train.prototxt", "val.prototxt"]
    assert main(["--out", str(out), "--check", "fcn8s"]) == 0
    (out / "fcn8s" / "val.prototxt").write_text("layer {}\n")
    capsys.readouterr()
    assert main(["--out", str(out), "--check", "fcn8s"]) == 1
    err = capsys.readouterr().err
    assert "differs" in err and "val.prototxt" in err
    # all nets checked against a partial tree: missing files; a stray file is reported too
    (out / "fcn8s" / "old.prototxt").write_text("layer {}\n")
    assert main(["--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "stray" in err and "old.prototxt" in err
    # the suggested command regenerates what was checked (--out D), never the checkout's prototxt/
    assert f"run: python -m fcn_repro.netspec --out {out}" in err
    assert main(["--out", str(out), "--check", "fcn8s"]) == 1
    assert f"run: python -m fcn_repro.netspec --out {out} fcn8s" in capsys.readouterr().err
    assert main(["--out", str(out), "fcn5s"]) == 2
    assert "error: unknown net(s) fcn5s" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(fcn_nets.NETS))
def test_generated_net_contents(name):
    d = fcn_nets.NETS[name]
    deploy = parse_prototxt(PROTOTXT / name / "deploy.prototxt")
    train = parse_prototxt(PROTOTXT / name / "train.prototxt")
    val = parse_prototxt(PROTOTXT / name / "val.prototxt")
    assert check_crop_offsets(deploy) == {} and check_crop_offsets(train) == {}
    for k, v in FACT_OFFSETS.get(name, {}).items():
        assert compute_crop_offsets(deploy)[k] == (v, v)
    by = {x.get("name"): x for x in deploy.getall("layer")}
    # inputs: Input layers with the dataset's placeholder shape
    h, w = d.dataset.image_shape
    for blob, ch in d.inputs:
        assert by[blob].get("type") == "Input"
        assert by[blob].sub("input_param").sub("shape").getall("dim") == [1, ch, h, w]
    assert not any(x.get("type") == "SoftmaxWithLoss" for x in deploy.getall("layer"))
    for net, split, layer in ((train, d.train_dataset.train_split, d.train_dataset.layer),
                              (val, d.dataset.val_split, d.dataset.layer)):
        data = net.getall("layer")[0]
        assert data.get("type") == "Python"
        pp = data.sub("python_param")
        assert pp.get("module") == "fcn_repro.data.layers" and pp.get("layer") == layer
        import json
        params = json.loads(pp.get("param_str"))
        assert params["split"] == split and params["seed"] == 1337
        assert data.getall("top") == [b for b, _ in d.inputs] + list(d.dataset.labels)
        losses = [x for x in net.getall("layer") if x.get("type") == "SoftmaxWithLoss"]
        assert len(losses) == len(d.dataset.labels)
        for loss in losses:
            lp = loss.sub("loss_param")
            assert lp.get("ignore_label") == 255 and lp.get("normalize") is (name == "fcn-alexnet")
        # train/val = deploy's layers after the inputs, plus the losses
        body = [x for x in net.getall("layer")[1:] if x.get("type") != "SoftmaxWithLoss"]
        assert body == [x for x in deploy.getall("layer") if x.get("type") != "Input"]
    # ParamSpecs: convs 1/1 + 2/0, upsampling and scales 0
    for x in deploy.getall("layer"):
        specs = [(s.get("lr_mult"), s.get("decay_mult")) for s in x.getall("param")]
        if x.get("type") == "Convolution":
            assert specs == [(1, 1), (2, 0)]
        elif x.get("type") in ("Deconvolution", "Scale"):
            assert specs == [(0, None)]
        if x.get("type") == "Deconvolution":
            cp = x.sub("convolution_param")
            assert cp.get("bias_term") is False and not cp.has("group")
            assert cp.getall("kernel_size")[0] in (2 * cp.get("stride"), 63)


def test_real_widths_and_names():
    net = fcn_nets.build_net("fcn8s")
    by = {x.get("name"): x for x in net.getall("layer")}
    widths = {k: by[k].sub("convolution_param").get("num_output")
              for k in ("conv1_1", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "fc6", "fc7",
                        "score_fr", "score_pool4", "score_pool3")}
    assert widths == dict(conv1_1=64, conv2_2=128, conv3_3=256, conv4_3=512, conv5_3=512,
                          fc6=4096, fc7=4096, score_fr=21, score_pool4=21, score_pool3=21)
    assert by["conv1_1"].sub("convolution_param").getall("pad") == [100]
    assert by["fc6"].sub("convolution_param").getall("kernel_size") == [7]
    at = {x.get("name"): x for x in fcn_nets.build_net("fcn8s-atonce").getall("layer")}
    assert at["scale_pool4"].sub("scale_param").sub("filler").get("value") == 0.01
    assert at["scale_pool3"].sub("scale_param").sub("filler").get("value") == 0.0001
    ax = {x.get("name"): x for x in fcn_nets.build_net("fcn-alexnet").getall("layer")}
    assert [ax[k].sub("convolution_param").get("group") for k in ("conv1", "conv2", "conv3",
                                                                   "conv4", "conv5")] == [1, 2, 1, 2, 2]
    assert ax["norm1"].sub("lrn_param") == Message([("local_size", 5), ("alpha", 1e-4), ("beta", 0.75)])
    cd = {x.get("name"): x for x in fcn_nets.build_net("nyud-fcn32s-color-d").getall("layer")}
    assert cd["data"].get("type") == "Concat" and cd["data"].getall("bottom") == ["color", "depth"]
    assert cd["conv1_1_bgrd"].getall("bottom") == ["data"] and "conv1_1" not in cd
    ctx = {x.get("name"): x for x in fcn_nets.build_net("pascalcontext-fcn32s").getall("layer")}
    assert ctx["score_fr"].sub("convolution_param").get("num_output") == 60


def test_solvers():
    s = parse_prototxt(PROTOTXT / "fcn8s" / "solver.prototxt")
    assert (s.get("base_lr"), s.get("momentum"), s.get("weight_decay"), s.get("lr_policy"),
            s.get("iter_size"), s.get("test_iter")) == (1e-10, 0.99, 0.0005, "fixed", 1, 736)
    assert s.get("train_net") == "train.prototxt" and s.get("test_net") == "val.prototxt"
    a = parse_prototxt(PROTOTXT / "fcn-alexnet" / "solver.prototxt")
    assert (a.get("base_lr"), a.get("iter_size")) == (1e-4, 20)
    assert parse_prototxt(PROTOTXT / "siftflow-fcn8s" / "solver.prototxt").get("test_iter") == 200
    assert parse_prototxt(PROTOTXT / "nyud-fcn32s-hha" / "solver.prototxt").get("test_iter") == 654
    text = (PROTOTXT / "fcn-alexnet" / "solver.prototxt").read_text()
    assert "Our choice" in text  # values that are ours say so


# ------------------------------------------------- with the net builder

def _net_class():
    try:
        from fcn_repro.caffe.net import Net
    except ImportError as e:  # the builder is another part of the package
        pytest.fail(f"fcn_repro.caffe.net.Net is not importable: {e}")
    return Net


@pytest.fixture
def meta_net(monkeypatch):
    """Build nets with parameters on the meta device and no fillers run:
    shapes only, so full-width VGG nets build in milliseconds."""
    Net = _net_class()
    import fcn_repro.caffe.fillers as fillers
    monkeypatch.setattr(fillers, "fill_params", lambda *a, **k: None)

    def build(*a, **k):
        with torch.device("meta"):
            return Net(*a, **k)
    return build


NUM_CLASSES = {"voc": {"score": 21}, "siftflow": {"score_sem": 33, "score_geo": 3},
               "nyud": {"score": 40}, "context": {"score": 60}}


@pytest.mark.parametrize("name", list(fcn_nets.NETS))
def test_generated_full_width_nets_build(name, meta_net):
    d = fcn_nets.NETS[name]
    net = meta_net(PROTOTXT / name / "deploy.prototxt")
    assert net.inputs == [b for b, _ in d.inputs]
    h, w = d.dataset.image_shape
    out = net.forward(**{b: torch.empty(1, ch, h, w, device="meta") for b, ch in d.inputs})
    want = NUM_CLASSES[d.dataset.key]
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (1, c, h, w) for k, c in want.items()}
    for phase in ("train", "val"):
        tnet = meta_net(PROTOTXT / name / f"{phase}.prototxt", phase="TRAIN" if phase == "train" else "TEST")
        assert tnet.inputs == [b for b, _ in d.inputs] + list(d.dataset.labels)
        assert sorted(tnet.outputs) == sorted(loss for loss in ("loss", "loss_geo")
                                              if loss == "loss" or d.dataset.key == "siftflow")
        assert {k: [tuple(p.shape) for p in v] for k, v in tnet.params.items()} == \
            {k: [tuple(p.shape) for p in v] for k, v in net.params.items()}
        assert tnet.param_specs == net.param_specs


def test_full_width_parameter_shapes(meta_net):
    shapes = lambda net: {k: [tuple(p.shape) for p in v] for k, v in net.params.items()}  # noqa: E731
    s = shapes(meta_net(PROTOTXT / "fcn8s" / "deploy.prototxt"))
    assert s["conv1_1"] == [(64, 3, 3, 3), (64,)]
    assert s["fc6"] == [(4096, 512, 7, 7), (4096,)]
    assert s["fc7"] == [(4096, 4096, 1, 1), (4096,)]
    assert s["score_pool3"] == [(21, 256, 1, 1), (21,)]
    assert s["upscore8"] == [(21, 21, 16, 16)]
    assert sorted(s) == sorted(["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                                "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2",
                                "conv5_3", "fc6", "fc7", "score_fr", "upscore2", "score_pool4",
                                "upscore_pool4", "score_pool3", "upscore8"])
    # 134.5M parameters, as the 537,963,159-byte caffemodel holds (4 bytes each)
    assert sum(math.prod(x) for v in s.values() for x in v) * 4 < 537_963_159 < \
        sum(math.prod(x) for v in s.values() for x in v) * 4 + 100_000
    a = shapes(meta_net(PROTOTXT / "fcn-alexnet" / "deploy.prototxt"))
    assert a["conv1"][0] == (96, 3, 11, 11) and a["conv2"][0] == (256, 48, 5, 5)
    assert a["fc6"][0] == (4096, 256, 6, 6) and a["upscore"] == [(21, 21, 63, 63)]
    at = shapes(meta_net(PROTOTXT / "fcn8s-atonce" / "deploy.prototxt"))
    assert at["scale_pool4"] == [(512,)] and at["scale_pool3"] == [(256,)]
    cd = shapes(meta_net(PROTOTXT / "nyud-fcn32s-color-d" / "deploy.prototxt"))
    assert cd["conv1_1_bgrd"][0] == (64, 4, 3, 3)


TRAIN_RUN = ("fcn8s", "fcn-alexnet", "siftflow-fcn16s", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha")


@pytest.mark.parametrize("name", list(fcn_nets.NETS))
def test_reduced_nets_run(name):
    """Every net at reduced width, deploy and train (Python data layer), forward on CPU."""
    Net = _net_class()
    d = fcn_nets.NETS[name]
    h, w = 21, 27
    torch.manual_seed(0)
    feed = {b: torch.randn(1, ch, h, w) for b, ch in d.inputs}
    deploy = Net(fcn_nets.build_net(name, "deploy", widths=d.fixture_widths, input_shape=(h, w)), seed=0)
    out = deploy.forward(**feed)
    for k, c in NUM_CLASSES[d.dataset.key].items():
        assert tuple(out[k].shape) == (1, c, h, w)
        assert torch.isfinite(out[k]).all()
    if name not in TRAIN_RUN:
        return  # same loss and data layer as a net below; their building is tested at full width
    train = Net(fcn_nets.build_net(name, "train", widths=d.fixture_widths), phase="TRAIN", seed=0)
    labels = {lab: torch.randint(0, 3, (1, 1, h, w)).float() for lab in d.dataset.labels}
    res = train.forward(**feed, **labels)
    assert set(res) == {"loss", "loss_geo"} if d.dataset.key == "siftflow" else {"loss"}
    assert all(torch.isfinite(v).all() for v in res.values())


@pytest.mark.parametrize("name", ["fcn8s", "fcn8s-atonce", "fcn16s", "fcn32s", "fcn-alexnet",
                                  "pascalcontext-fcn8s", "siftflow-fcn8s", "nyud-fcn32s-color-hha"])
def test_reduced_nets_take_caffe_weights_and_give_caffes_scores(name):
    """Our reduced net + the fixture caffemodel: nothing left over, and Caffe's outputs."""
    import numpy as np
    from fcn_repro.caffe import load_weights
    Net = _net_class()
    model = caffe_fixture(f"{name}.caffemodel")
    io = np.load(caffe_fixture(f"{name}.io.npz"))
    weights = load_weights(model)
    ours = fcn_nets.fixture_net(name)
    with_params = {x.get("name") for x in ours.getall("layer")
                   if x.get("type") in ("Convolution", "Deconvolution", "Scale")}
    assert set(weights) == with_params
    net = Net(ours, weights=model, strict=True)
    assert net.weights_report.complete
    d = fcn_nets.NETS[name]
    for size in ("s0", "s1"):
        out = net.forward(**{b: torch.from_numpy(io[f"{size}/{b}"]) for b, _ in d.inputs})
        for k in NUM_CLASSES[d.dataset.key]:
            ref = torch.from_numpy(io[f"{size}/{k}"])
            assert out[k].shape == ref.shape
            err = (out[k].double() - ref.double()).abs().max() / ref.double().abs().max()
            assert err < 1e-4, f"{name} {size} {k}: relative error {err:.2e}"


def test_fcn4s_crops_align_in_the_net_builder():
    """FCN-4s through the real net builder: every Crop's top lines up with its reference.

    Three channels carry the input's y coordinate, x coordinate and 1. Every
    convolution averages each channel on its own, pooling averages (MAX
    swapped for AVE, same windows: the window centre is then exact), the
    upsampling layers interpolate bilinearly, Eltwise sums. Wherever the
    third channel is at its plateau (no zero padding reached the position),
    channel/third channel is exactly the input coordinate the position sits
    on; after each Crop it must equal the reference blob's, and a shift by
    one position must not.
    """
    from fcn_repro.caffe.prototxt import Enum as _Enum
    Net = _net_class()
    H = 698  # H + 198 divisible by 32: no pooling window is clipped at the far edge
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, H, H]))
    fcn_nets.vgg_fcn(n, n.data, 3, 4, widths=(3,) * 6)
    msg = n.to_proto()
    for lay in msg.getall("layer"):
        if lay.get("type") == "Pooling":
            lay.sub("pooling_param").set("pool", _Enum("AVE"))
    net = Net(msg, keep_blobs=True, seed=0).double()
    types = dict(zip(net.layer_names, net.layer_types))

    def bilinear(k):
        f = math.ceil(k / 2)
        c = f - 1 if k % 2 else f - 0.5
        v = torch.tensor([1 - abs(j - c) / f for j in range(k)], dtype=torch.float64)
        return v[:, None] * v[None, :]

    with torch.no_grad():
        for lname, params in net.params.items():
            w = params[0]
            w.zero_()
            for c in range(3):
                w[c, c] = bilinear(w.shape[2]) if types[lname] == "Deconvolution" else 1.0 / w[0, 0].numel()
            for p in params[1:]:
                p.zero_()
    ys = torch.arange(H, dtype=torch.float64)
    x = torch.stack([ys[:, None].expand(H, H), ys[None, :].expand(H, H),
                     torch.ones(H, H, dtype=torch.float64)])[None]
    net.forward(data=x)
    crops = [lay for lay in msg.getall("layer") if lay.get("type") == "Crop"]
    assert [c.get("name") for c in crops] == ["score_pool4c", "score_pool3c", "score_pool2c", "score"]
    for lay in crops:
        top = net.blobs[lay.get("top")][0]
        ref = net.blobs[lay.getall("bottom")[1]][0]
        inside = ((top[2] - top[2].max()).abs() < 1e-9) & ((ref[2] - ref[2].max()).abs() < 1e-9)
        assert inside.sum() > 100, lay.get("name")
        for ch, dim in ((0, 0), (1, 1)):
            got, want = (top[ch] / top[2])[inside], (ref[ch] / ref[2])[inside]
            assert torch.allclose(got, want, atol=1e-9), f"{lay.get('name')}: misaligned along {'yx'[dim]}"
            shifted = (top[ch] / top[2]).roll(1, dim)[inside]
            assert not torch.allclose(shifted, want, atol=1e-3)
