"""LabelSet (class names and colours of a head) and the run directory record (run.json)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fcn_repro import registry
from fcn_repro.labels import LabelSet, LabelsError, for_net, voc_palette
from fcn_repro.rundir import RunDirError, RunInfo, is_run_dir, read_run, write_run


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal[:21]}) == 21


def test_for_net_uses_registry_classes():
    ls = for_net(registry.net("fcn8s"))
    assert ls.names == tuple(registry.classes("fcn8s")) and len(ls) == 21
    assert ls.colorize(np.array([[0, 1], [255, 2]])).tolist()[1][0] == [224, 224, 192]


def test_own_takes_png_palette_and_falls_back():
    flat = [10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (3 * 253)
    ls = LabelSet.own(["bg", "leaf", "stem"], flat)
    assert ls.colours().tolist() == [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    assert ls.palette[255].tolist() == [224, 224, 192]          # ignore keeps its colour
    grey = [0] * 768                                              # one colour for all: not a palette
    assert LabelSet.own(["a", "b"], grey).colours().tolist() == voc_palette()[:2].tolist()


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", " b"], ["a,b"], [""], [f"c{i}" for i in range(256)]])
def test_bad_names_refused(names):
    with pytest.raises(LabelsError):
        LabelSet.own(names, where="classes.txt")


def test_json_round_trip_and_refusals():
    ls = LabelSet.own(["bg", "disc", "square"], [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert LabelSet.from_json(ls.to_json()) == ls
    with pytest.raises(LabelsError, match="x.json"):
        LabelSet.from_json({"names": ["a"], "palette": [[1, 2]]}, "x.json")
    with pytest.raises(LabelsError):
        LabelSet.from_json({"names": ["a"], "palette": [[1, 2, 300]]}, "x.json")


def _run(tmp_path, **over):
    (tmp_path / "deploy.prototxt").write_text("name: 'x'\n")
    (tmp_path / "final.caffemodel").write_bytes(b"")
    info = RunInfo(tmp_path, tmp_path / "deploy.prototxt", tmp_path / "final.caffemodel",
                   {"score": LabelSet.own(["bg", "disc", "square"])}, {"data": np.array([1.0, 2.0, 3.0])},
                   net="sample", iteration=7, complete=True, extra={"data": "/d"})
    write_run(info)
    rec = json.loads((tmp_path / "run.json").read_text())
    rec.update(over)
    (tmp_path / "run.json").write_text(json.dumps(rec))
    return info


def test_run_round_trip(tmp_path):
    info = _run(tmp_path)
    assert is_run_dir(tmp_path) and not is_run_dir(tmp_path / "deploy.prototxt")
    back = read_run(tmp_path)
    assert back.deploy == info.deploy and back.weights == info.weights and back.heads == info.heads
    assert back.mean["data"].tolist() == [1.0, 2.0, 3.0] and back.iteration == 7 and back.complete
    assert back.net == "sample" and back.extra == {"data": "/d"}


@pytest.mark.parametrize("over", [{"deploy": "../deploy.prototxt"}, {"weights": "/etc/passwd"},
                                  {"weights": "missing.caffemodel"}, {"format": "other"}, {"version": 2},
                                  {"heads": {}}, {"mean": {"data": ["x"]}}, {"iteration": -1},
                                  {"heads": {"score": {"names": ["a", "a"]}}}])
def test_run_refusals_name_the_file(tmp_path, over):
    _run(tmp_path, **over)
    with pytest.raises(RunDirError, match="run.json"):
        read_run(tmp_path)


def test_run_not_json_fifo_missing(tmp_path):
    with pytest.raises(RunDirError, match="no run.json"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_bytes(b"\xff{")
    with pytest.raises(RunDirError, match="JSON"):
        read_run(tmp_path)
    os.remove(tmp_path / "run.json")
    os.mkfifo(tmp_path / "run.json")
    with pytest.raises(RunDirError, match="regular"):
        read_run(tmp_path)
