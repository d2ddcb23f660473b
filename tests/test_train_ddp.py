"""Data-parallel training: 2 processes (torchrun, gloo on CPU) == 1 process with iter_size 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fcn_repro.caffe import load_weights
from fcn_repro.train import main
from test_train import make_tiny_voc, tiny_nets, fake_vgg  # noqa: F401  (shared helpers)


def _rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def test_two_processes_equal_iter_size_two(tmp_path):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from fcn_repro.caffe import save_weights
    from fcn_repro.caffe.net import Net
    from fcn_repro.trainer import surgery

    voc = make_tiny_voc(tmp_path / "VOC", n_train=5, n_val=3)
    # Dropout stays on (ratio 0.5): its masks are seeded by the global pass
    # index, so process r's pass equals pass r of the single process.
    solver = tiny_nets(tmp_path / "nets", base_lr=1e-5)
    net = Net(tmp_path / "nets" / "train.prototxt", phase="TRAIN", seed=0)
    surgery(net, init=fake_vgg(net), fill=False)
    w0 = tmp_path / "w0.caffemodel"
    save_weights(w0, {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()})

    common = ["--solver", str(solver), "--data", str(voc), "--dataset", "voc", "--weights", str(w0),
              "--iters", "2", "--val-data", str(voc), "--val-dataset", "voc", "--val-split", "val",
              "--test-every", "2", "--snapshot-every", "0", "--device", "cpu", "--no-progress"]
    assert main(common + ["--iter-size", "2", "--save", str(tmp_path / "one.h5"),
                          "--out", str(tmp_path / "one")]) == 0

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", "2", "-m", "fcn_repro.train"] + common + [
        "--iter-size", "1", "--save", str(tmp_path / "two.h5"), "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    one, two = load_weights(tmp_path / "one.h5"), load_weights(tmp_path / "two.h5")
    start = load_weights(w0)
    worst = 0.0
    moved = 0
    for name in one:
        for a, b, s in zip(one[name], two[name], start[name]):
            worst = max(worst, _rel(b, a))
            moved += int(not np.array_equal(a, s))
    assert moved > 10  # the run did train
    print(f"\n2 processes vs iter_size 2: parameters after 2 iterations, worst rel diff {worst:.2e}")
    assert worst < 1e-6

    def records(d):
        return [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
    r1, r2 = records("one"), records("two")
    l1 = [r["loss"] for r in r1 if r["type"] == "train"]
    l2 = [r["loss"] for r in r2 if r["type"] == "train"]
    np.testing.assert_allclose(l2, l1, rtol=1e-6)  # the mean loss over the 2 images
    t1 = [r["scores"] for r in r1 if r["type"] == "test"]
    t2 = [r["scores"] for r in r2 if r["type"] == "test"]
    assert len(t1) == len(t2) == 1
    # validation split over 2 processes, confusion matrices summed: the same scores
    for k in ("mean_iu", "overall_acc", "fwavacc"):
        assert t2[0]["score"][k] == pytest.approx(t1[0]["score"][k], rel=1e-6, abs=1e-9)
    assert t2[0]["score"]["images"] == 3
    # the end-of-run report's gallery: every process's share gathered (3 images ranked, not rank 0's 2)
    if (tmp_path / "one" / "report" / "index.html").is_file():
        import re

        ids = [re.findall(r'<div class="rowhead">([^<]*)<b>', (tmp_path / d / "report" / "index.html").read_text())
               for d in ("one", "two")]
        assert "(3 images ranked)" in (tmp_path / "two" / "report" / "index.html").read_text()
        assert sorted(ids[1]) == sorted(ids[0]) and len(ids[0]) == 3
