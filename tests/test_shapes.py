"""Caffe's shape and state rules in one torch-free home (fcn_repro.caffe.shapes)."""
import subprocess
import sys

import pytest

from fcn_repro.caffe import Message, parse_prototxt
from fcn_repro.caffe.shapes import (ShapeRuleError, Window, conv_window, layer_included, phase_name, pool_window)


def layer(text):
    return parse_prototxt('layer { name: "l" type: "ReLU" ' + text + ' }').getall("layer")[0]


def test_layer_included_phase_level_stages():
    lp = layer("include { phase: TRAIN }")
    assert layer_included(lp, "TRAIN") and not layer_included(lp, "TEST") and layer_included(lp, 0)
    lp = layer("exclude { phase: TEST }")
    assert layer_included(lp, "TRAIN") and not layer_included(lp, "TEST")
    lp = layer('include { stage: "a" not_stage: "b" }')
    assert not layer_included(lp, "TEST") and layer_included(lp, "TEST", stages=["a"])
    assert not layer_included(lp, "TEST", stages=["a", "b"])           # not_stage is honoured
    lp = layer("include { min_level: 1 max_level: 2 }")
    assert [layer_included(lp, "TEST", level=v) for v in (0, 1, 2, 3)] == [False, True, True, False]
    lp = layer("include { phase: 1 }")                                  # by number, as Caffe's enum
    assert layer_included(lp, "TEST") and not layer_included(lp, "TRAIN")
    with pytest.raises(ShapeRuleError, match="either include or exclude"):
        layer_included(layer("include { phase: TEST } exclude { phase: TRAIN }"), "TEST")
    with pytest.raises(ShapeRuleError, match="TRAIN or TEST"):
        phase_name("VAL")
    with pytest.raises(KeyError):                                        # the caller's error type
        layer_included(Message([("include", Message([("phase", 7)]))]), "TEST", error=KeyError)


def param(text, name="convolution_param"):
    return parse_prototxt('layer { name: "l" type: "X" ' + name + ' { ' + text + ' } }').getall("layer")[0].sub(name)


def test_windows():
    assert conv_window(param("kernel_size: 3 pad: 1")) == Window((3, 3), (1, 1), (1, 1), (1, 1))
    w = conv_window(param("kernel_h: 3 kernel_w: 5 stride: 2 dilation: 2 dilation: 3"))
    assert w == Window((3, 5), (2, 2), (0, 0), (2, 3)) and w.extent == (5, 13)
    for bad, msg in (("num_output: 1", "required"), ("kernel_size: 3 kernel_h: 3 kernel_w: 3", "either"),
                     ("kernel_h: 3", "both"), ("kernel_size: 1 kernel_size: 2 kernel_size: 3", "3 values"),
                     ("kernel_size: 0", "positive"), ("kernel_size: 3 stride: 0", "positive")):
        with pytest.raises(ShapeRuleError, match=msg):
            conv_window(param(bad))
    p = pool_window(param("pool: MAX kernel_size: 3 stride: 2", "pooling_param"))
    assert p == Window((3, 3), (2, 2), (0, 0))
    assert pool_window(param("global_pooling: true", "pooling_param")).kernel is None
    with pytest.raises(ShapeRuleError, match="smaller than the kernel"):
        pool_window(param("kernel_size: 2 pad: 2", "pooling_param"))


def test_torch_free():
    code = "import sys, fcn_repro.caffe.shapes; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
