"""The evaluation report in a real browser: headless Chromium opens the page from disk, every
image must load (naturalWidth > 0), nothing may be logged to the console as an error, and a
screenshot is saved (beside the page, ``screenshot.png``). Without Chromium (Debian's
``chromium``; .ci/run installs it) these tests skip saying so.

Three reports: the bundled sample (``evaluate --net fcn8s --report``), a two-head SIFT Flow
fixture net (Caffe's reduced-width siftflow-fcn8s) and a user's own classes and palette.
``FCN_REPRO_SCREENSHOTS=DIR`` also copies each screenshot to DIR (to look at them).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib", reason="the report needs matplotlib: pip install 'fcn_repro[report]'")

from conftest import caffe_fixture  # noqa: E402
from test_evaluate import _siftflow_layout, make_sample_voc  # noqa: E402

import fcn_repro.evaluate as ev  # noqa: E402
from fcn_repro.labels import LabelSet  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium); "
                                                             "the report's browser checks did not run")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]

# Put first in <head> of a copy of the page: records script errors, failed loads and console.error,
# then on load writes what it found into the DOM (read back with --dump-dom).
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target || {};
  __errors.push(e.message || ("failed to load " + (t.src || t.href || t.tagName)));
}, true);
(function () { var ce = console.error; console.error = function () {
  __errors.push("console.error: " + [].slice.call(arguments).join(" ")); return ce.apply(console, arguments); }; })();
window.addEventListener("load", function () {
  var imgs = [].slice.call(document.images);
  var out = {images: imgs.length, widths: imgs.map(function (i) { return i.naturalWidth; }),
             bad: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
             errors: __errors, height: document.documentElement.scrollHeight};
  var pre = document.createElement("pre"); pre.id = "__probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args, tmp: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(dir=tmp) as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)


def _console_lines(stderr: str) -> list:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def check_in_browser(page: Path) -> dict:
    """Open ``page`` in headless Chromium: (1) a probed copy reports its images and errors, (2) the
    page itself is screenshot (``screenshot.png`` beside it) with the console log read. Returns
    the probe's findings plus the screenshot path; fails on a broken image or a console error."""
    tmp = page.parent
    text = page.read_text(encoding="utf-8")
    probed = tmp / ("probe-" + page.name)
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        r = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.resolve().as_uri()], tmp)
    finally:
        probed.unlink()
    m = re.search(r'<pre id="__probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium (exit {r.returncode}):\n{r.stderr[-2000:]}"
    found = json.loads(html.unescape(m.group(1)))
    assert found["images"] > 0 and not found["bad"], f"images that did not load: {found['bad']}"
    assert found["errors"] == [], found["errors"]
    # the page as a user opens it: no console message at all (it has no script), and a screenshot
    shot = tmp / "screenshot.png"
    height = min(max(int(found["height"]), 800), 16000)
    r = _chromium([f"--window-size=1280,{height}", f"--screenshot={shot}", page.resolve().as_uri()], tmp)
    assert shot.is_file(), f"no screenshot (exit {r.returncode}):\n{r.stderr[-2000:]}"
    assert _console_lines(r.stderr) == [], _console_lines(r.stderr)
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[1] == 1280 and a.std() > 10, "the screenshot is blank"
    keep = os.environ.get("FCN_REPRO_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / f"{tmp.name}.png")
    found["screenshot"] = shot
    return found


def _self_contained(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    # opens from disk: nothing fetched from a server, every picture embedded
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page refers to the network"
    assert re.findall(r'<img src="([^"]*)"', text) and all(
        s.startswith("data:image/png;base64,") for s in re.findall(r'<img src="([^"]*)"', text))
    return text


@needs_chromium
def test_sample_report_in_the_browser(tmp_path):
    out = tmp_path / "sample"
    rep = ev.main(["--net", "fcn8s", "--report", str(out), "--no-progress", "--workers", "0"])
    assert rep == 0
    text = _self_contained(out / "index.html")
    assert '<span class="badge MATCH">MATCH</span>' in text     # ours vs Caffe's own run, as printed
    assert '<span class="badge DIFFERENT">' not in text
    for name in ("background", "disc", "square", "triangle", "ring"):
        assert f">{name}<" in text                               # class names in the counts table
    assert "Worst 4" in text and "Best 4" in text
    package = str(Path(ev.__file__).resolve().parent)
    assert package not in text and "fcn_repro/resources/sample/fcn8s-shapes.caffemodel" in text   # no checkout path
    assert "<h1>bundled sample: reduced FCN-8s on synthetic shapes (not PASCAL), split val</h1>" in text
    found = check_in_browser(out / "index.html")
    # summary + 2 plots + 8 gallery rows of 4 panels
    assert found["images"] == 2 + 8 * 4 and min(found["widths"]) > 0


@needs_chromium
def test_siftflow_two_heads_report_in_the_browser(tmp_path):
    root = _siftflow_layout(tmp_path)
    out = tmp_path / "siftflow"
    ev.evaluate(net=str(caffe_fixture("siftflow-fcn8s.prototxt")), weights=str(caffe_fixture("siftflow-fcn8s.caffemodel")),
                data=str(root), dataset_kind="siftflow", split="test", progress=False, out=io.StringIO(),
                workers=0, report_dir=str(out), gallery=1)
    text = _self_contained(out / "index.html")
    assert 'id="score_sem"' in text and 'id="score_geo"' in text    # a section per head
    assert "score_sem: 33 classes" in text and "score_geo: 3 classes" in text
    assert "Not scored (no ground truth in the set" in text         # SIFT Flow's protocol, said
    assert ">awning<" in text and ">vertical<" in text
    assert "Not in the plots: the " in text                          # 33 classes, few with pixels: not drawn
    found = check_in_browser(out / "index.html")
    assert found["images"] == 2 * (2 + 2 * 4)


@needs_chromium
def test_user_classes_report_in_the_browser(tmp_path):
    """A user's own class names and palette reach every picture: legend, table, panels."""
    data = make_sample_voc(tmp_path / "mine", ids=("s0001", "s0004", "s0009"))
    colours = [(250, 250, 250), (30, 160, 60), (120, 70, 20), (240, 200, 0), (200, 0, 160)]
    mine = LabelSet(("soil", "leaf", "stem", "flower", "pest"), np.array(colours))
    out = tmp_path / "user"
    rep = ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=io.StringIO(), workers=0,
                      report_dir=str(out), gallery=2, labelsets={"score": mine})
    assert rep["heads"]["score"]["classes"] == list(mine.names)
    text = _self_contained(out / "index.html")
    assert 'rgb(240,200,0)"></span>flower' in text                 # legend: the user's colour and name
    assert ">background<" not in text
    found = check_in_browser(out / "index.html")
    assert found["images"] == 2 + 3 * 4
    # the truth panels are painted in the user's colours: every pixel's colour is one of theirs
    # (or the ignore colour), never VOC's dark red for class 1
    truth = re.findall(r'<img src="data:image/png;base64,([^"]*)" alt="[^"]*: ground truth"', text)
    assert len(truth) == 3
    allowed = {tuple(c) for c in colours} | {tuple(mine.palette[255])}
    for b64 in truth:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            seen = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
        assert seen <= allowed and len(seen - {tuple(mine.palette[255])}) > 1, seen


@needs_chromium
def test_own_classes_training_run_ends_with_its_report_in_the_browser(tmp_path, monkeypatch):
    """``train --net sample --data DIR --classes ...`` on a user's folder (label PNGs with their own
    palette): the report the run writes at its end names the user's classes, in their colours."""
    from fcn_repro.registry import resource_path
    from fcn_repro.train import main as train_main

    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))
    sample = resource_path("sample", "sample")
    data = tmp_path / "garden"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    colours = [(250, 250, 250), (30, 160, 60), (120, 70, 20), (240, 200, 0), (200, 0, 160)]
    flat = [v for c in colours for v in c] + [0] * (3 * (256 - len(colours)))
    for i in ("s0000", "s0003", "s0004", "s0009", "s0012"):
        shutil.copy(sample / "JPEGImages" / f"{i}.jpg", data / "images" / f"{i}.jpg")
        with Image.open(sample / "SegmentationClass" / f"{i}.png") as lab:
            lab = lab.copy()
        lab.putpalette(flat)
        lab.save(data / "labels" / f"{i}.png")
    run = tmp_path / "run"
    assert train_main(["--net", "sample", "--data", str(data), "--classes", "soil,leaf,stem,flower,pest",
                       "--iters", "1", "--test-every", "1", "--out", str(run), "--no-progress"]) == 0
    page = run / "report" / "index.html"
    text = _self_contained(page)
    assert "validation at iteration 1" in text and "train_iter_1.caffemodel" in text
    assert 'rgb(30,160,60)"></span>leaf' in text and ">background<" not in text
    assert ">soil<" in text and ">pest<" in text                   # the counts table: the user's names
    found = check_in_browser(page)
    assert found["images"] >= 2 + 4 and min(found["widths"]) > 0
    # and evaluate on the run directory: its recorded data, classes and colours
    assert ev.main(["--net", str(run), "--report", str(tmp_path / "again"), "--no-progress", "--workers", "0"]) == 0
    again = _self_contained(tmp_path / "again" / "index.html")
    assert 'rgb(30,160,60)"></span>leaf' in again and ">background<" not in again and str(data) in again
