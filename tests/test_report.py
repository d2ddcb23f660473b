"""fcn_repro.report without a browser: the gallery's bounded keeping, per-image IU, the plots, the
page's reference verdicts, the missing-extra errors, and infer's legend, palette and names."""
from __future__ import annotations

import html
import io
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import fcn_repro.evaluate as ev
from fcn_repro import infer as inf
from fcn_repro.data import resource_path
from fcn_repro.evaluation import reference_comparison
from fcn_repro.labels import LabelSet
from fcn_repro.metrics import fast_hist
from fcn_repro.report import Gallery, MissingExtraError, image_iu, panels, require
from fcn_repro.report.gallery import WRONG_RGB

SAMPLE = resource_path("sample")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))


def _no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` now raises ImportError


# ------------------------------------------------------------------ gallery

def test_image_iu_is_the_mean_over_classes_present():
    lab = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 2, 2]])
    h = fast_hist(lab, pred, 3)
    # class 0: 4 / 5; class 1: 1 / 3; class 2 (only predicted): 0 / 1; the 255 pixel is not counted
    assert image_iu(h) == pytest.approx((4 / 5 + 1 / 3 + 0) / 3)
    assert image_iu(np.zeros((3, 3))) is None


def test_gallery_keeps_exactly_the_k_worst_and_best_in_bounded_memory():
    rng = np.random.default_rng(0)
    g = Gallery(k=3, first=2, longest=16)
    ious = {}
    for i in range(40):
        lab = rng.integers(0, 3, (24, 40)).astype(np.uint8)
        pred = np.where(rng.random(lab.shape) < rng.random(), lab, rng.integers(0, 3, lab.shape)).astype(np.uint8)
        h = fast_hist(lab, pred, 3)
        ious[f"im{i}"] = image_iu(h)
        g.observe(f"im{i}", "score", rng.integers(0, 256, lab.shape + (3,), dtype=np.uint8), lab, pred, h)
        kept = {id(e) for _, _, e in g.heads["score"].worst} | {id(e) for _, _, e in g.heads["score"].best}
        assert len(kept) <= 6                                   # never more than 2k kept
    order = sorted(ious, key=lambda k: ious[k])
    assert [e.id for e in g.worst("score")] == order[:3]
    assert [e.id for e in g.best("score")] == order[::-1][:3]
    assert [e.id for e in g.first("score")] == ["im0", "im1"]
    assert g.ranked("score") == 40
    e = g.worst("score")[0]
    assert max(e.label.shape) == 16 and e.image.shape == e.label.shape + (3,)   # thumbnails, labels by nearest
    assert set(np.unique(e.label)) <= {0, 1, 2}


def test_gallery_splits_a_small_set_between_worst_and_best():
    g = Gallery(k=4)
    for i, acc in enumerate((0.2, 0.9, 0.5)):
        lab = np.zeros((10, 10), np.uint8)
        lab[:, :5] = 1
        pred = lab.copy()
        pred.reshape(-1)[: int((1 - acc) * 100)] = 2
        g.observe(f"i{i}", "score", None, lab, pred, fast_hist(lab, pred, 3))
    shown = [e.id for e in g.worst("score")] + [e.id for e in g.best("score")]
    assert sorted(shown) == ["i0", "i1", "i2"]                 # each image once


def test_panels_mark_wrong_pixels_and_use_the_users_colours():
    ls = LabelSet(("soil", "leaf"), np.array([[200, 200, 200], [40, 200, 60]]))
    g = Gallery(k=1)
    lab = np.array([[0, 1], [1, 255]], np.uint8)
    pred = np.array([[0, 0], [1, 1]], np.uint8)
    g.observe("a", "score", np.full((2, 2, 3), 90, np.uint8), lab, pred, fast_hist(lab, pred, 2))
    p = panels(g.worst("score")[0], ls)
    assert list(p) == ["image", "truth", "prediction", "difference"]
    assert p["truth"][0, 1].tolist() == [40, 200, 60]
    assert p["difference"][0, 1].tolist() == list(WRONG_RGB)      # leaf predicted soil
    assert p["difference"][1, 1].tolist() == [90, 90, 90]         # unlabelled: not wrong
    assert p["difference"][0, 0].tolist() == [90, 90, 90]


# ------------------------------------------------------------------ plots and the page

def test_plots_are_pngs():
    pytest.importorskip("matplotlib")
    from fcn_repro.report import plots

    names = [f"c{i}" for i in range(6)]
    for png in (plots.iu_chart(names, np.linspace(0, 1, 6), reference=np.linspace(0, 1, 6), excluded=[2]),
                plots.confusion_heatmap(np.arange(36).reshape(6, 6), names),
                plots.learning_curve([{"type": "train", "iter": i, "loss": 10.0 / (i + 1), "smoothed_loss": 5.0}
                                      for i in range(30)]
                                     + [{"type": "test", "iter": 10, "scores": {"score": {"mean_iu": 0.4}}}])):
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 150
    strip = plots.legend_strip(LabelSet.voc(names), [0, 3], 400)
    assert strip.shape[1] == 400 and strip.dtype == np.uint8


def _head(ours: float, ref: float, comparable: bool = True) -> dict:
    return {"overall_acc": ours, "mean_acc": ours, "mean_iu": ours, "fwavacc": ours,
            "reference": {"source": "a paper", "split": "val", "decimals": 1, "comparable": comparable,
                          "scores": {"mean_iu": ref}}}


def test_reference_comparison_verdicts():
    assert reference_comparison({"mean_iu": 0.5}, "val", None) is None
    same = reference_comparison(_head(0.6231, 0.623), "val", None)   # 62.31 vs 62.3 at one decimal: within 0.05
    assert same["verdict"] == "MATCH" and [r["key"] for r in same["rows"]] == ["mean_iu"]
    assert reference_comparison(_head(0.64, 0.623), "val", None)["verdict"] == "DIFFERENT"
    other = reference_comparison(_head(0.64, 0.623, comparable=False), "train", 5)
    assert other["verdict"] is None and "first 5 images" in other["note"]


def test_report_needs_matplotlib_says_the_extra_in_one_line(tmp_path, monkeypatch, capsys):
    _no_matplotlib(monkeypatch)
    with pytest.raises(MissingExtraError, match=r"pip install 'fcn_repro\[report\]'"):
        require("matplotlib", "the plots")
    rc = ev.main(["--net", "sample", "--report", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fcn_repro[report]" in err[0] and err[0].startswith("error:")
    assert not (tmp_path / "r").exists()


def test_report_json_stays_plain_json(tmp_path):
    pytest.importorskip("matplotlib")
    rep = ev.evaluate(net="sample", progress=False, out=io.StringIO(), workers=0, limit=3, gallery=1,
                      report_dir=str(tmp_path / "r"), json_path=str(tmp_path / "r.json"))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["heads"]["score"]["classes"] == rep["heads"]["score"]["classes"]
    assert len(saved["heads"]["score"]["palette"]) == 5 and saved["time"].endswith("Z")
    text = (tmp_path / "r" / "index.html").read_text()
    assert html.escape("against Caffe's predictions on the same images") in text     # --limit: like with like


# ------------------------------------------------------------------ infer

def _copy(name: str, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "sample" / "JPEGImages" / f"{name}.jpg", dst)
    return dst


def test_infer_shared_stems_keep_their_extension_and_inputs_are_never_named(tmp_path):
    out = tmp_path / "o"
    x_jpg = _copy("s0002", tmp_path / "in" / "x.jpg")
    x_png = tmp_path / "in" / "x.png"
    Image.open(x_jpg).save(x_png)
    y_png = out / "y.png"                                   # an input inside the output directory
    out.mkdir()
    Image.open(x_jpg).save(y_png)
    before = y_png.read_bytes()
    res = inf.infer([str(x_jpg), str(x_png), str(y_png)], net="sample", outdir=str(out), out=io.StringIO())
    names = {src: rec["outputs"]["score"]["labels"] for src, rec in res.items()}
    assert names[str(x_jpg)].endswith("x_jpg.png") and names[str(x_png)].endswith("x_png.png")
    assert names[str(y_png)].endswith("y-2.png")             # y.png is the input: not replaced
    assert y_png.read_bytes() == before


def test_infer_side_by_side_and_a_users_palette(tmp_path):
    pytest.importorskip("matplotlib")
    img = _copy("s0004", tmp_path / "a.jpg")
    w, h = Image.open(img).size
    mine = {"score": LabelSet(("soil", "leaf", "stem", "flower", "pest"),
                              np.array([[0, 0, 0], [30, 160, 60], [120, 70, 20], [240, 200, 0], [200, 0, 160]]))}
    res = inf.infer([str(img)], net="sample", outdir=str(tmp_path / "o"), out=io.StringIO(), side_by_side=True,
                    labelsets=mine)
    rec = res[str(img)]["outputs"]["score"]
    with Image.open(rec["overlay"]) as ov:
        a = np.asarray(ov)
    assert a.shape[1] == 2 * w + 8 and a.shape[0] > h         # image | overlay, legend below
    assert np.array_equal(a[:h, :w], np.asarray(Image.open(img).convert("RGB")))
    with Image.open(rec["labels"]) as lab:
        assert np.array(lab.getpalette()).reshape(-1, 3)[1].tolist() == [30, 160, 60]
    assert {c["name"] for c in rec["classes"]} <= set(mine["score"].names)


def test_infer_without_matplotlib_warns_once_and_writes_plain_overlays(tmp_path, monkeypatch, capsys):
    _no_matplotlib(monkeypatch)
    img = _copy("s0006", tmp_path / "a.jpg")
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("fcn_repro[report]") == 1 and "legend" in err
    assert Image.open(tmp_path / "o" / "a_overlay.png").size == Image.open(img).size


def test_page_shows_a_published_reference_with_its_verdict():
    pytest.importorskip("matplotlib")
    from fcn_repro.evaluation import head_result
    from fcn_repro.report import render

    class Set:   # a reader's protocol: every class scored
        exclude_absent = False

    rng = np.random.default_rng(1)
    hist = rng.integers(0, 50, (3, 3)) + np.diag([400, 300, 200])
    head = head_result(hist, Set(), LabelSet.voc(["background", "cat", "dog"]), "label")
    head["reference"] = {"source": "the paper", "split": "seg11valid", "decimals": 1, "comparable": True,
                         "scores": {"mean_iu": 0.62, "overall_acc": 0.9}}
    report = {"net": "fcn8s", "prototxt": "deploy.prototxt", "weights": "nowhere.caffemodel", "dataset": "voc",
              "data": "/data/VOC2011", "split": "seg11valid", "split_file": "", "limit": None, "images": 3,
              "seconds": 1.0, "images_per_s": 3.0, "device": "cpu", "world_size": 1, "time": "2026-01-01T00:00:00Z",
              "heads": {"score": head}}
    text = render(report)
    ours = 100 * head["mean_iu"]
    assert '<span class="badge DIFFERENT">DIFFERENT</span>' in text    # our random matrix is not the paper's
    assert f"<td>{ours:.4f}</td><td>62.0000</td><td>{ours - 62:+.4f}</td>" in text
    assert "published (the paper, seg11valid)" in text and "PASCAL VOC 2011" in text
    head["reference"]["scores"] = {"mean_iu": head["mean_iu"]}
    assert '<span class="badge MATCH">MATCH</span>' in render(report)


# ------------------------------------------------------------------ colours, plots, paths, names

def test_class_lists_without_a_background_colour_class_0():
    """SIFT Flow's awning and sky, NYUDv2's wall are classes, not background: no class of theirs
    is black (the colour overlays leave untinted), and an overlay tints them; PASCAL's class 0
    stays black and untinted."""
    from fcn_repro import registry
    from fcn_repro.data.transforms import overlay
    from fcn_repro.labels import for_net

    for name in ("siftflow-fcn8s", "nyud-fcn32s-color"):
        card = registry.net(name)
        for h in card.heads:
            cols = for_net(card, h.blob).colours()
            assert cols.max(axis=1).min() > 0, (name, h.blob)                  # no black class
            assert len({tuple(c) for c in cols}) == len(cols)                   # all distinct
    voc = for_net(registry.net("fcn8s"))
    assert voc.colours()[0].tolist() == [0, 0, 0] and voc.palette[255].tolist() == [224, 224, 192]
    geo = for_net(registry.net("siftflow-fcn8s"), "score_geo")
    img = np.full((4, 4, 3), 200, np.uint8)
    sky = np.zeros((4, 4), np.uint8)
    assert not np.array_equal(overlay(img, sky, labels=geo), img)               # sky is tinted
    assert np.array_equal(overlay(img, sky, labels=voc), img)                   # background is not


def test_plots_leave_out_classes_without_pixels_only_when_many():
    from fcn_repro.report.page import PLOT_ALL_UP_TO, _plotted

    few = np.zeros((5, 5), np.int64)
    few[0, 0] = few[1, 2] = 3
    assert _plotted(few) == (list(range(5)), [])                                 # a short list: all shown
    n = PLOT_ALL_UP_TO + 21
    many = np.zeros((n, n), np.int64)
    many[0, 0], many[3, 7], many[n - 1, n - 1] = 5, 2, 1                         # class 7: predicted only
    shown, hidden = _plotted(many)
    assert shown == [0, 3, 7, n - 1] and hidden == [c for c in range(n) if c not in shown]


def test_page_shows_bundled_paths_inside_the_package(tmp_path):
    import fcn_repro
    from fcn_repro.report.page import shown_path

    inside = resource_path("sample", "fcn8s-shapes.prototxt")
    assert shown_path(inside) == "fcn_repro/resources/sample/fcn8s-shapes.prototxt"
    assert shown_path(tmp_path / "mine.caffemodel") == str(tmp_path / "mine.caffemodel")
    assert shown_path("") == "" and shown_path(None) == ""
    assert str(fcn_repro.__file__) not in shown_path(inside)


def test_overlay_legend_widens_for_long_names_and_says_untinted():
    pytest.importorskip("matplotlib")
    from fcn_repro.report.overlays import overlay_picture

    img = np.full((30, 40, 3), 120, np.uint8)
    lab = np.zeros((30, 40), np.uint8)
    lab[:, 20:] = 1
    short = overlay_picture(img, lab, LabelSet.voc(["bg", "a"]))
    long = overlay_picture(img, lab, LabelSet.voc(["bg", "a rather long class name for a legend"]))
    assert short.shape[1] >= 180 and long.shape[1] > short.shape[1]              # the name is not cut
    assert np.array_equal(long[:30, :40, :], overlay_picture(img, lab, LabelSet.voc(["bg", "a"]), legend=False))
    right = long[30:, long.shape[1] - 40:]
    assert (right < 128).any()                                                    # text reaches the far end


def test_infer_refuses_a_json_path_that_is_an_input(tmp_path, capsys):
    img = _copy("s0006", tmp_path / "a.jpg")
    before = img.read_bytes()
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o"), "--json", str(img)])
    err = capsys.readouterr().err
    assert rc == 2 and "is one of the inputs" in err and img.read_bytes() == before
    assert not (tmp_path / "o" / "a.png").exists()                               # refused before the work


def test_plots_draw_any_class_name_letter_for_letter():
    """A '$' in a user's class name is not mathtext (a malformed formula would fail the plot), and
    a very long name is cut on the axes (the legend, bounded in width, keeps what fits)."""
    pytest.importorskip("matplotlib")
    from fcn_repro.report import plots

    names = ["bg", r"$\frac$", "a$b$c", "x" * 500]
    assert plots.plain("a$b$c") == r"a\$b\$c" and len(plots.tick("x" * 500)) == 32
    assert [plots.percent(f) for f in (0.0, 0.0001, 0.0005, 0.5)] == ["0.0%", "<0.1%", "0.1%", "50.0%"]
    for png in (plots.iu_chart(names, [0.1, 0.2, 0.3, 0.4]), plots.confusion_heatmap(np.eye(4) * 10, names),
                plots.learning_curve([{"type": "train", "iter": 0, "loss": 1.0}], title=r"run $\x$")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    strip = plots.legend_strip(LabelSet.voc(names), range(4), 300)
    assert strip.shape[1] <= plots.LEGEND_MAX_WIDTH and strip.shape[0] > 0


def test_gallery_zero_leaves_the_gallery_out(tmp_path):
    pytest.importorskip("matplotlib")
    assert ev.main(["--net", "sample", "--limit", "2", "--report", str(tmp_path / "r"), "--gallery", "0",
                    "--no-progress", "--workers", "0"]) == 0
    text = (tmp_path / "r" / "index.html").read_text()
    assert "Gallery" not in text and "No image with labelled pixels" not in text and "per-class IU" in text


def test_gallery_of_several_processes_equals_one_process():
    """evaluate under torchrun: each process keeps its share's worst and best; rank 0 absorbs the
    others' and shows the whole set's (the same images as one process keeping them all)."""
    rng = np.random.default_rng(5)
    one, shards = Gallery(k=3, longest=8), [Gallery(k=3, longest=8) for _ in range(3)]
    for i in range(31):
        lab = rng.integers(0, 4, (8, 10)).astype(np.uint8)
        pred = np.where(rng.random(lab.shape) < rng.random(), lab, rng.integers(0, 4, lab.shape)).astype(np.uint8)
        h = fast_hist(lab, pred, 4)
        for g in (one, shards[i % 3]):
            g.observe(f"im{i}", "score", None, lab, pred, h)
    merged = shards[0]
    for other in shards[1:]:
        merged.absorb(other.heads)
    assert [e.id for e in merged.worst("score")] == [e.id for e in one.worst("score")]
    assert [e.id for e in merged.best("score")] == [e.id for e in one.best("score")]
    assert merged.ranked("score") == one.ranked("score") == 31
    assert merged.gathered(1) is merged                                  # one process: itself
