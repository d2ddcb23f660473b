"""The one resolver: registry nets, the bundled sample (its card's resource: entries), deploy
prototxts and training run directories -> one record; one 'weights not found' error; net files
generated when not on disk, never in the working directory."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

import fcn_repro
from fcn_repro import evaluation, hub, registry
from fcn_repro.caffe import fcn_nets
from fcn_repro.labels import LabelSet, for_net
from fcn_repro.resolve import MissingError, WeightsNotFoundError, list_names, listing, resolve
from fcn_repro.rundir import RunDirError, RunInfo, write_run

SAMPLE = registry.resource_path("sample")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_places(tmp_path, monkeypatch):
    """No test reads or writes the user's weights or cache."""
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))


def _run_dir(tmp_path, names=("bg", "disc", "square", "triangle", "ring"), weights=True, extra=None) -> Path:
    """A run directory holding the sample's deploy net and weights under its own class names."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(SAMPLE / "fcn8s-shapes.prototxt", run / "deploy.prototxt")
    w = None
    if weights:
        w = run / "final.caffemodel"
        shutil.copy(SAMPLE / "fcn8s-shapes.caffemodel", w)
    write_run(RunInfo(run, run / "deploy.prototxt", w, {"score": LabelSet.own(names)},
                      {"data": np.array([1.0, 2.0, 3.0])}, net="fcn8s", iteration=2, complete=True,
                      extra=dict(extra or {})))
    return run


def test_a_registry_net_is_its_card_with_generated_or_checkout_files():
    m = resolve("fcn16s")
    assert m.kind == "net" and m.card is registry.net("fcn16s") and m.name == "fcn16s"
    assert m.deploy.is_file() and m.deploy.name == "deploy.prototxt"
    assert m.heads == {"score": for_net(registry.net("fcn16s"))}
    assert np.array_equal(m.means["data"], registry.MEAN_VOC)
    # not downloaded: no weights, and the one error says where it looked and how to get them
    assert m.weights is None and m.weights_how is None
    with pytest.raises(WeightsNotFoundError) as ei:
        m.require_weights()
    msg = str(ei.value)
    assert str(hub.download_dir() / "fcn16s-heavy-pascal.caffemodel") in msg
    assert "python -m fcn_repro.zoo download fcn16s" in msg
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, fcn_repro.FcnReproError)


def test_weights_found_are_pinned_or_recorded_by_what_is_published(tmp_path):
    (tmp_path / "weights").mkdir()
    for name, how in (("fcn8s", "pinned"), ("fcn16s", "recorded")):   # fcn8s has a sha1, fcn16s nothing
        f = tmp_path / "weights" / registry.net(name).caffemodel
        f.write_bytes(b"x")
        m = resolve(name)
        assert m.weights == f and m.weights_how == how and m.verify


def test_the_sample_is_data_its_card_resources_are_read():
    m = resolve("sample")
    card = registry.net("sample")
    assert m.weights_how == "resource" and not m.verify
    assert m.weights == registry.resource_path(card.weights.url) and m.weights.is_file()
    assert m.deploy == registry.resource_path(dict(card.files)["deploy"])
    assert m.net_file("train") == registry.resource_path(dict(card.files)["train"])
    # its solver is its definition's (fcn8s): from the checkout or generated
    assert m.net_file("solver").parent.name == card.definition == "fcn8s"
    assert m.heads["score"].names == tuple(registry.class_names("sample"))
    assert "sample" in list_names()


def test_without_a_checkout_net_files_are_generated_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "repo_root", lambda: None)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    m = resolve("siftflow-fcn32s")
    d = tmp_path / "home" / "prototxt" / "siftflow-fcn32s"
    assert m.deploy == d / "deploy.prototxt"
    assert m.deploy.read_text() == fcn_nets.net_text("siftflow-fcn32s", "deploy")
    solver = m.net_file("solver")
    assert solver == d / "solver.prototxt" and solver.read_text() == fcn_nets.solver_text("siftflow-fcn32s")
    # the solver's relative net paths hold: its train and val nets are beside it
    assert (d / "train.prototxt").is_file() and (d / "val.prototxt").is_file()
    # a stale copy (an older version's text) is rewritten
    m.deploy.write_text("# old\n")
    assert resolve("siftflow-fcn32s").deploy.read_text() == fcn_nets.net_text("siftflow-fcn32s", "deploy")
    assert not any((tmp_path / "cwd").iterdir())   # nothing in the working directory


def test_weights_are_never_looked_for_or_recorded_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("FCN_REPRO_WEIGHTS_DIR")
    monkeypatch.setattr(hub, "repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert hub.weights_dir() == hub.download_dir() == tmp_path / "home" / "weights"
    assert hub.manifest_path() == tmp_path / "home" / "weights" / "manifest.json"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "fcn8s-heavy-pascal.caffemodel").write_bytes(b"x")
    assert resolve("fcn8s").weights is None


def test_a_prototxt_needs_its_weights(tmp_path):
    proto = SAMPLE / "fcn8s-shapes.prototxt"
    m = resolve(str(proto))
    assert m.kind == "prototxt" and m.card is None and m.heads == {} and m.weights is None
    with pytest.raises(WeightsNotFoundError, match="pass its weights"):
        m.require_weights()
    m = resolve(str(proto), SAMPLE / "fcn8s-shapes.caffemodel")
    assert m.weights_how == "given" and m.require_weights() == SAMPLE / "fcn8s-shapes.caffemodel"
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        resolve(str(proto), tmp_path / "none.caffemodel")
    with pytest.raises(MissingError, match="deploy prototxt not found"):
        resolve(str(tmp_path / "none.prototxt"))
    with pytest.raises(MissingError, match="unknown net 'fcn7s'"):
        resolve("fcn7s")


def test_a_run_directory_is_a_model(tmp_path):
    run = _run_dir(tmp_path)
    m = resolve(run)
    assert m.kind == "run" and m.card is None and m.name == "run"
    assert m.deploy == run / "deploy.prototxt" and m.weights == run / "final.caffemodel"
    assert m.weights_how == "run" and not m.verify
    assert m.heads["score"].names == ("bg", "disc", "square", "triangle", "ring")
    assert m.means["data"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(MissingError, match="no solver.prototxt"):
        m.net_file("solver")
    # given weights win over the run's own
    assert resolve(run, SAMPLE / "fcn8s-shapes.caffemodel").weights_how == "given"
    # a directory that is not a run
    with pytest.raises(RunDirError, match="not a run directory"):
        resolve(tmp_path)


def test_a_run_without_weights_says_so(tmp_path):
    m = resolve(_run_dir(tmp_path, weights=False))
    assert m.weights is None
    with pytest.raises(WeightsNotFoundError, match="no weights yet"):
        m.require_weights()


def test_load_and_evaluate_take_a_run_directory(tmp_path):
    run = _run_dir(tmp_path)
    model = fcn_repro.load(run)
    assert model.meta["categories"] == ["bg", "disc", "square", "triangle", "ring"]
    assert model.meta["weights_how"] == "run" and model.transforms().mean.tolist() == [1.0, 2.0, 3.0]
    rep = evaluation.evaluate_set(str(run), data=str(SAMPLE / "sample"), dataset_kind="sample", limit=2,
                                  progress=False)
    assert rep["images"] == 2 and rep["heads"]["score"]["classes"][1] == "disc"
    assert rep["weights_how"] == "run"


def test_evaluate_reads_the_data_a_run_recorded(tmp_path):
    run = _run_dir(tmp_path, extra={"dataset": "sample", "data": str(SAMPLE / "sample"), "split": "val",
                                    "val_split": "val"})
    rep = evaluation.evaluate_set(str(run), limit=1, progress=False)
    assert (rep["dataset"], rep["split"], rep["images"]) == ("sample", "val", 1)
    assert rep["data"] == str(SAMPLE / "sample") and "caffe" not in rep   # given data: no Caffe comparison


def test_the_listing_looks_where_load_looks(tmp_path, monkeypatch):
    monkeypatch.delenv("FCN_REPRO_WEIGHTS_DIR")
    monkeypatch.setattr(hub, "repo_root", lambda: None)
    info = listing()
    assert info["weights_dirs"] == [str(d) for d in hub.weights_dirs()]
    rows = {e["net"]: e for e in info["nets"]}
    assert set(rows) == set(list_names())
    assert rows["sample"]["weights"]["present"] and rows["sample"]["weights"]["bundled"]
    assert not rows["fcn8s"]["weights"]["present"]
    (tmp_path / "home" / "weights").mkdir(parents=True)
    (tmp_path / "home" / "weights" / "fcn8s-heavy-pascal.caffemodel").write_bytes(b"x")   # the cache
    rows = {e["net"]: e for e in listing()["nets"]}
    assert rows["fcn8s"]["weights"]["present"]


def test_evaluate_reports_how_the_weights_are_known():
    rep = evaluation.evaluate_set("sample", limit=1, progress=False)
    assert rep["weights_how"] == "resource" and "caffe" in rep   # bundled data: Caffe's predictions compared
    out = io.StringIO()
    assert rep["net"] == "sample" and out.getvalue() == ""
