"""The project error family and the memory budget (fcn_repro.errors, fcn_repro.limits)."""
import pickle

import pytest

from fcn_repro import limits
from fcn_repro.caffe.caffemodel import CaffeModelError, WeightsError
from fcn_repro.caffe.hdf5 import HDF5WeightsError
from fcn_repro.caffe.prototxt import PrototxtError
from fcn_repro.errors import FcnReproError, LimitError, OutputError
from fcn_repro.solver import SolverError


def test_family():
    for cls in (WeightsError, CaffeModelError, HDF5WeightsError, PrototxtError, SolverError,
                LimitError, OutputError):
        assert issubclass(cls, FcnReproError) and issubclass(cls, ValueError)


def test_message_names_location():
    e = FcnReproError("bad size", "a.caffemodel", offset=12, layer="conv1", blob=1)
    assert str(e) == "a.caffemodel: byte 12: layer 'conv1' blob 1: bad size"
    assert (e.filename, e.offset, e.layer, e.blob, e.reason) == ("a.caffemodel", 12, "conv1", 1, "bad size")
    p = PrototxtError("expected an integer", "n.prototxt", 3, 7, layer="fc6", field="num_output")
    assert str(p) == "n.prototxt:3:7: layer 'fc6' field 'num_output': expected an integer"
    assert str(FcnReproError("plain")) == "plain"


@pytest.mark.parametrize("err", [
    CaffeModelError("truncated", "x.caffemodel", offset=5, layer="l", blob=0),
    HDF5WeightsError("bad", "w.h5", h5path="/data/l/0", layer="l"),
    PrototxtError("x", "p.prototxt", 2, 3, field="f"),
    LimitError("too big", "f.npz"),
])
def test_pickle_roundtrip(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert back.__dict__ == err.__dict__


def test_limits_env_configure_override(monkeypatch):
    assert limits.current() == limits.Limits()
    monkeypatch.setenv("FCN_REPRO_MAX_READ_BYTES", "3K")
    assert limits.current().read_bytes == 3072
    with pytest.raises(LimitError, match=r"f.bin: .*over the limit of 3.0 KiB.*FCN_REPRO_MAX_READ_BYTES"):
        limits.check("read_bytes", 4000, "a blob", "f.bin")
    assert limits.check("read_bytes", 3072, "a blob") == 3072
    try:
        limits.configure(read_bytes=10_000)
        assert limits.current().read_bytes == 10_000
        with limits.override(read_bytes=5):
            assert limits.current().read_bytes == 5
            with pytest.raises(CaffeModelError, match="byte 9"):
                limits.check("read_bytes", 6, "x", "f", error=CaffeModelError, offset=9)
        assert limits.current().read_bytes == 10_000
    finally:
        limits.configure(read_bytes=None)
    assert limits.current().read_bytes == 3072
    monkeypatch.setenv("FCN_REPRO_MAX_TEXT_DEPTH", "lots")
    with pytest.raises(FcnReproError, match="FCN_REPRO_MAX_TEXT_DEPTH"):
        limits.current()
    with pytest.raises(TypeError):
        limits.configure(bogus=1)


def test_budget_accumulates():
    with limits.override(read_bytes=100):
        b = limits.Budget("m.caffemodel", error=CaffeModelError)
        b.charge(60, "layer records")
        with pytest.raises(CaffeModelError, match="m.caffemodel: byte 7: .*120 bytes"):
            b.charge(60, "layer records", offset=7)
        assert b.used == 60


def test_tools_errors_join_the_family():
    from fcn_repro.caffe.coord_map import CoordMapError
    from fcn_repro.caffe.netspec import NetSpecError
    from fcn_repro.cli import UsageError, error_line
    from fcn_repro.data.layers import ParamStrError
    from fcn_repro.evaluation import WeightsIncompleteError
    from fcn_repro.resolve import MissingError
    from fcn_repro.trainer import TrainError

    for cls in (UsageError, MissingError, WeightsIncompleteError, CoordMapError, NetSpecError, TrainError,
                ParamStrError):
        assert issubclass(cls, FcnReproError) and issubclass(cls, ValueError)
        e = cls("what went wrong", "f.txt", layer="l")   # the family's constructor
        assert str(e) == "f.txt: layer 'l': what went wrong" and e.reason == "what went wrong"
        assert str(cls("plain")) == "plain"
    # a missing file is both: `except FileNotFoundError` and `except ValueError` both catch it
    m = MissingError("weights not found", "w.caffemodel")
    assert isinstance(m, FileNotFoundError) and isinstance(m, FcnReproError)
    assert str(m) == "w.caffemodel: weights not found" and m.filename == "w.caffemodel"
    assert error_line(m) == "error: w.caffemodel: weights not found"
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is MissingError and str(back) == str(m) and back.filename == "w.caffemodel"
