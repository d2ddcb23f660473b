"""Training's pictures: curve.png drawn by matplotlib, TensorBoard event files (loss, lr, validation
scores, per-class IU, validation images) and the report page of the last validation."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from fcn_repro.registry import resource_path
from fcn_repro.report.training import TrainingPictures
from fcn_repro.train import main

pytest.importorskip("matplotlib", reason="training's pictures need matplotlib: pip install 'fcn_repro[report]'")

SAMPLE = resource_path("sample", "sample")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))


def test_sample_run_writes_curve_tensorboard_and_report(tmp_path):
    pytest.importorskip("tensorboard", reason="the event files need tensorboard: pip install 'fcn_repro[report]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["--net", "sample", "--iters", "2", "--test-every", "2", "--test-iters", "3",
                 "--val-data", str(SAMPLE), "--val-dataset", "sample", "--val-split", "val",
                 "--out", str(out), "--no-progress"]) == 0
    with Image.open(out / "curve.png") as im:
        assert im.format == "PNG" and im.size == (900, 640)        # matplotlib's 9 x 6.4 in at 100 dpi
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "train/smoothed_loss", "train/lr", "val/score/mean_iu", "val/score/overall_acc",
            "val_iu/score/background", "val_iu/score/ring"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [0, 1]
    assert ea.Scalars("train/lr")[0].value == pytest.approx(1e-10)
    # the scores logged are the validation's own (log.jsonl), per class too
    import json

    test = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if '"test"' in ln][-1]
    assert ea.Scalars("val/score/mean_iu")[-1].value == pytest.approx(test["scores"]["score"]["mean_iu"])
    assert ea.Scalars("val_iu/score/ring")[-1].value == pytest.approx(test["scores"]["score"]["iu"][4])
    assert sorted(tags["images"]) == ["val_images/score/s0000", "val_images/score/s0001", "val_images/score/s0002"]
    img = ea.Images("val_images/score/s0000")[-1]
    assert img.width > 0 and img.height > 0
    page = (out / "report" / "index.html").read_text()
    assert "validation at iteration 2" in page and "train_iter_2.caffemodel" in page
    assert "Worst" in page and ">ring<" in page


def test_missing_extras_are_said_once_and_training_goes_on(tmp_path, monkeypatch):
    for mod in ("matplotlib", "tensorboard"):
        for name in [m for m in sys.modules if m == mod or m.startswith(mod + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, mod, None)
    said = []
    pics = TrainingPictures(tmp_path, say=said.append)
    pics.train({"iter": 0, "loss": 1.0, "smoothed_loss": 1.0, "lr": 0.1})
    pics.curve([{"type": "train", "iter": 0, "loss": 1.0}], "t")
    assert pics.observer() is None and pics.finish(None) is None
    assert len(said) == 2 and all("fcn_repro[report]" in s for s in said)
    assert not (tmp_path / "curve.png").exists() and not (tmp_path / "tensorboard").exists()


def test_curve_has_both_panels_even_before_validation(tmp_path):
    pics = TrainingPictures(tmp_path, tensorboard=False)
    recs = [{"type": "train", "iter": i, "loss": 100.0 + i, "smoothed_loss": 100.0 + i / 2} for i in range(50)]
    pics.curve(recs, "no validation yet")
    a = np.asarray(Image.open(tmp_path / "curve.png").convert("RGB"))
    top, bottom = a[: a.shape[0] // 2], a[a.shape[0] // 2:]
    blue = np.array([31, 119, 180])
    assert (np.abs(top.astype(int) - blue).sum(-1) < 30).sum() > 100          # the loss line, top panel
    assert (np.abs(bottom.astype(int) - blue).sum(-1) < 30).sum() == 0        # none below: no validation
