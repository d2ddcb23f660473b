"""Caffe HDF5 weights (.caffemodel.h5): Caffe's own file, layout, order, round trips."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from conftest import caffe_fixture
from fcn_repro.caffe import WeightsError, load_weights, save_weights, weights_info
from fcn_repro.caffe.hdf5 import HDF5WeightsError, load_hdf5, save_hdf5


@pytest.mark.parametrize("net", ["fcn8s", "fcn-alexnet"])   # both in tests/fixtures/caffe
def test_caffe_h5_equals_caffe_caffemodel(net):
    a = load_weights(caffe_fixture(f"{net}.caffemodel"), keep_empty=True)
    b = load_weights(caffe_fixture(f"{net}.caffemodel.h5"), keep_empty=True)
    # Caffe's ToHDF5 writes a group for every layer, as ToProto writes every layer
    assert sorted(a) == sorted(b)
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for x, y in zip(a[k], b[k]):
            assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), k


def test_caffe_h5_layout_and_order():
    path = caffe_fixture("fcn8s.caffemodel.h5")
    with h5py.File(path, "r") as f:
        # Caffe does not track creation order: its groups list by name
        assert f["data"].id.get_create_plist().get_link_creation_order() == 0
        names = list(f["data"].keys())
    assert names == sorted(names)
    w = load_weights(path)
    assert list(w) == [n for n in names if len(w.get(n, []))]
    info = weights_info(path)
    assert info.format == "hdf5"
    assert [lay.name for lay in info.layers] == names
    conv = {lay.name: lay for lay in info.layers}["conv1_1"]
    assert conv.blobs[0].shape == w["conv1_1"][0].shape and conv.blobs[0].dtype == "float32"
    assert conv.blobs[0].nbytes == w["conv1_1"][0].nbytes


def test_written_layout_is_caffes_and_keeps_order(tmp_path):
    rng = np.random.default_rng(1)
    weights = {
        "zeta": [rng.standard_normal((3, 2, 3, 3)).astype(np.float32), np.arange(3, dtype=np.float32)],
        "alpha": [rng.standard_normal((4, 5)).astype(np.float32)],
        "relu": [],
        "mid": [np.float32(2.5), rng.standard_normal(3)],       # scalar; float64 stays float64
        **{f"b{i}": [np.full(i + 1, i, np.float32)] for i in range(12)},   # dataset names 0..11 below
        "many": [np.full(2, i, np.float32) for i in range(12)],
    }
    path = tmp_path / "w.caffemodel.h5"
    save_weights(path, weights)
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["data"]
        g = f["data"]
        assert list(g.keys()) == list(weights)                  # creation order tracked
        assert list(g["relu"].keys()) == []                     # empty group, as Caffe writes
        assert g["zeta/0"].dtype == np.float32 and g["zeta/0"].shape == (3, 2, 3, 3)
        assert g["mid/0"].shape == () and g["mid/1"].dtype == np.float64
        assert sorted(g["many"].keys(), key=int) == [str(i) for i in range(12)]
    back = load_weights(path, keep_dtype=True, keep_empty=True)
    assert list(back) == list(weights)
    for k, blobs in weights.items():
        assert len(back[k]) == len(blobs)
        for x, y in zip(blobs, back[k]):
            x = np.asarray(x)
            assert y.dtype == x.dtype and y.shape == x.shape and y.tobytes() == x.tobytes(), k
    assert [b[0] for b in load_weights(path)["many"]] == list(range(12))    # numeric, not "0","1","10"
    assert load_weights(path)["mid"][1].dtype == np.float32


def test_caffemodel_to_h5_to_caffemodel_exact(tmp_path):
    src = caffe_fixture("fcn8s.caffemodel")
    a = load_weights(src)
    save_weights(tmp_path / "x.h5", a)
    b = load_weights(tmp_path / "x.h5")
    save_weights(tmp_path / "y.caffemodel", b)
    c = load_weights(tmp_path / "y.caffemodel")
    assert list(a) == list(b) == list(c)
    for k in a:
        for x, y, z in zip(a[k], b[k], c[k]):
            assert x.tobytes() == y.tobytes() == z.tobytes() and x.shape == y.shape == z.shape


def test_format_detected_by_content_not_suffix(tmp_path):
    h5 = tmp_path / "really_h5.caffemodel"
    shutil.copy(caffe_fixture("fcn8s.caffemodel.h5"), h5)
    pb = tmp_path / "really_caffemodel.h5"
    shutil.copy(caffe_fixture("fcn8s.caffemodel"), pb)
    assert weights_info(h5).format == "hdf5"
    assert weights_info(pb).format == "caffemodel-v2"
    a, b = load_weights(h5), load_weights(pb)
    assert sorted(a) == sorted(b)


def test_hdf5_with_user_block_is_detected(tmp_path):
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("data/a/0", data=np.arange(3, dtype=np.float32))
    assert load_weights(path)["a"][0].tolist() == [0, 1, 2]


def test_hdf5_errors(tmp_path):
    p = tmp_path / "nodata.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("weights", data=np.zeros(2))
    with pytest.raises(HDF5WeightsError, match="no /data group") as ei:
        load_weights(p)
    assert isinstance(ei.value, ValueError) and ei.value.filename == str(p)

    p = tmp_path / "int.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", data=np.zeros(2, np.int64))
    with pytest.raises(HDF5WeightsError, match="/data/conv/0: dataset holds int64") as ei:
        load_hdf5(p)
    assert ei.value.layer == "conv" and ei.value.blob == 0

    p = tmp_path / "trunc.h5"
    save_hdf5(p, {"conv": [np.ones(10000, np.float32)]})
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(HDF5WeightsError, match="trunc.h5"):
        load_weights(p)

    with pytest.raises(WeightsError, match="can not be an HDF5 group name"):
        save_weights(tmp_path / "slash.h5", {"inception/1x1": [np.ones(1)]})
    assert not (tmp_path / "slash.h5").exists()


def test_failed_h5_write_leaves_nothing(tmp_path):
    path = tmp_path / "w.h5"
    with pytest.raises(TypeError):
        save_weights(path, {"a": [np.ones(2, np.float32)], "b": [np.array([object()])]})
    assert os.listdir(tmp_path) == []
