"""The weight matcher (fcn_repro.caffe.match): Caffe's one shape rule, surgery, the report, errors."""
import subprocess
import sys

import numpy as np
import pytest

from fcn_repro.caffe import WeightsError, weights_info
from fcn_repro.caffe.match import MatchReport, blob_fits, legacy_fits, match_weights
from conftest import caffe_fixture


def test_shape_rule():
    assert blob_fits((3, 4), (3, 4)) and blob_fits((1, 1, 3, 4), (3, 4)) and blob_fits((1, 1, 1, 5), (5,))
    assert not blob_fits((1, 1, 3, 4), (3, 4), legacy=False)       # a V2 4-D blob must be exact
    assert blob_fits((1, 1, 3, 4), (3, 4), legacy=True)
    assert not blob_fits((1, 1, 4, 3), (3, 4)) and not blob_fits((12,), (3, 4))  # counts agree, shape not
    assert not legacy_fits((1, 1, 5, 1), (5,)) and not legacy_fits((1, 1, 1, 1, 5), (5,))
    assert not legacy_fits((1, 1, 2, 3), (1, 1, 1, 2, 3))           # at most 4 axes
    assert legacy_fits((2, 3, 4, 5), (2, 3, 4, 5))


def test_report_records_and_order():
    stored = {"b": [np.zeros((1, 1, 4, 3)), np.zeros((1, 1, 1, 4))], "extra": [np.zeros(2)], "empty": [],
              "a": [np.zeros((2, 2))], "c": [np.zeros((5,))]}
    expected = {"a": [(2, 3)], "b": [(4, 3), (4,)], "c": [(5,), (5,)], "d": [(7,)]}
    rep = match_weights(stored, expected, source="w.caffemodel", target="net.prototxt",
                        layers=["a", "b", "c", "d", "empty", "relu"])
    assert rep.matched == ["b"] and rep.copies == [("b", 0), ("b", 1)]
    assert rep.coerced == [("b", 0, (1, 1, 4, 3), (4, 3)), ("b", 1, (1, 1, 1, 4), (4,))]
    assert rep.mismatched == [("a", 0, (2, 2), (2, 3))]
    assert rep.count_mismatch == [("c", 1, 2)]
    assert rep.missing == ["d"] and rep.unexpected == ["extra"]       # "empty" has no blobs; "relu" no params
    assert rep.failed() and not rep.complete
    errs = rep.errors()
    assert [type(e) for e in errs] == [WeightsError, WeightsError]
    msg = str(errs[1])
    assert msg.startswith("w.caffemodel: layer 'a' blob 0:") and "(2, 2)" in msg and "(2, 3)" in msg
    assert "net.prototxt" in msg and "'c'" in str(errs[0]) and "1 blobs" in str(errs[0])
    with pytest.raises(WeightsError, match="'c'"):
        rep.check()
    js = rep.to_json()
    assert js["ok"] is False and js["mismatched"][0] == {"layer": "a", "blob": 0, "stored": [2, 2], "expected": [2, 3]}


def test_strict_and_complete():
    expected = {"a": [(2,)], "b": [(3,)]}
    rep = match_weights({"a": [np.zeros(2)], "z": [np.zeros(1)]}, expected)
    assert not rep.failed() and rep.failed(strict=True)
    assert rep.check() is rep
    with pytest.raises(WeightsError, match="strict.*'b'.*'z'"):
        rep.check(strict=True)
    assert match_weights({"a": [np.zeros(2)], "b": [np.zeros(3)]}, expected).complete


def test_surgery_reshapes_equal_counts_and_skips_the_rest():
    stored = {"fc6": [np.zeros((8, 12)), np.zeros(8)], "fc8": [np.zeros((10, 8)), np.zeros(10)],
              "short": [np.zeros(3)]}
    expected = {"fc6": [(8, 3, 2, 2), (8,)], "fc8": [(21, 8, 1, 1), (21,)], "short": [(3,), (2,)]}
    rep = match_weights(stored, expected, surgery=True)
    assert rep.matched == ["fc6"] and rep.coerced == [("fc6", 0, (8, 12), (8, 3, 2, 2))]
    assert [(s[0], s[1]) for s in rep.skipped] == [("fc8", 0), ("fc8", 1), ("short", 1)]
    assert ("short", 0) in rep.copies and not rep.failed()
    # without surgery the same is a failure
    assert match_weights(stored, expected).failed()


def test_legacy_flag_from_blob_info():
    """BlobInfo says whether a shape is legacy: a V1 file's (1, 1, O, I) fits (O, I), a V2 4-D one does not."""
    info = weights_info(caffe_fixture("vgg-v1.caffemodel"))
    stored = [(layer.name, layer.blobs) for layer in info.layers]
    fc6 = next(b for n, b in stored if n == "fc6")
    assert fc6[0].legacy_shape and fc6[0].shape == (1, 1, 32, 1024)
    rep = match_weights(stored, {"fc6": [(32, 1024), (32,)]}, layers=["fc6"])
    assert rep.matched == ["fc6"] and ("fc6", 0, (1, 1, 32, 1024), (32, 1024)) in rep.coerced
    rebuilt = [(n, [type(b)(b.index, b.shape, b.dtype, b.nbytes, False, b.offset) for b in bs]) for n, bs in stored]
    assert match_weights(rebuilt, {"fc6": [(32, 1024), (32,)]}, layers=["fc6"]).mismatched


def test_torch_free():
    code = "import sys, fcn_repro.caffe.match; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_report_type_is_the_builders():
    from fcn_repro.caffe.net import WeightsReport
    assert WeightsReport is MatchReport


def test_copy_between_nets_by_the_one_rule():
    """What training validation does: share a net's parameters with another by layer name (exact shapes)."""
    import torch
    from fcn_repro.caffe import Net
    from fcn_repro.caffe.net import copy_matched
    from test_net import CHAIN
    a, b = Net(CHAIN, seed=1), Net(CHAIN, seed=2)
    rep = match_weights(a.params, b.params, source="a", target="b", legacy=False, layers=b.layer_names)
    assert rep.complete and rep.matched == ["conv1", "conv2", "conv3"]
    copy_matched(rep.check(), a.params, b.params)
    assert all(torch.equal(p, q) for n in a.params for p, q in zip(a.params[n], b.params[n]))
