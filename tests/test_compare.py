"""The per-blob comparison tool, ``python -m fcn_repro.compare``."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import caffe_fixture
from fcn_repro.compare import compare, main, pick_prefix


@pytest.fixture(scope="module")
def fcn8s():
    return (str(caffe_fixture("fcn8s.prototxt")), str(caffe_fixture("fcn8s.caffemodel")),
            str(caffe_fixture("fcn8s.io.npz")))


def test_table_every_blob_in_net_order(fcn8s, capsys):
    rc = main(list(fcn8s))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "prefix 's0/'" in out and ": OK" in out
    rows = [line.split()[0] for line in out.splitlines()[3:] if line and not line.startswith(("skipped", "net blobs"))][:-1]
    io = np.load(fcn8s[2])
    assert sorted(rows) == sorted(k[3:] for k in io.files if k.startswith("s0/"))
    # net order: inputs first, the split copies right after their source, the output last
    assert rows[0] == "data" and rows[1:3] == ["data_data_0_split_0", "data_data_0_split_1"]
    assert rows.index("pool4") < rows.index("pool4_pool4_0_split_0") < rows.index("conv5_1")
    assert rows[-1] == "score"
    score_line = [line for line in out.splitlines() if line.startswith("score ")][0]
    assert "100.000%" in score_line and "output (fusion on)" in score_line
    assert "split of pool3:0" in out


def test_json_s1_and_library_result(fcn8s, capsys):
    assert main([*fcn8s, "--prefix", "s1", "--json", "-"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] and d["prefix"] == "s1/" and [b["name"] for b in d["blobs"]] == ["data", "score"]
    score = d["blobs"][1]
    assert score["shape"] == [1, 21, 120, 100] and score["argmax_agree"] == 1.0 and score["fused"]
    assert score["max_rel"] < 1e-5 and d["worst_rel"] == max(b["max_rel"] for b in d["blobs"])
    assert "fc7" in d["not_in_reference"]
    res = compare(*fcn8s, prefix="s1/", fuse=False)
    assert res.ok and not res.blobs[-1].fused


def test_failures_exit_1_and_name_the_blob(fcn8s, tmp_path, capsys):
    io = np.load(fcn8s[2])
    ref = {k: io[k] for k in io.files if k.startswith("s0/")}
    ref["s0/fc7"] = ref["s0/fc7"] * 1.001          # a wrong intermediate blob
    ref["s0/caffe_only_blob"] = np.zeros(3, np.float32)  # a blob this net does not have
    p = tmp_path / "ref.npz"
    np.savez(p, **ref)
    assert main([fcn8s[0], fcn8s[1], str(p)]) == 1
    out = capsys.readouterr().out
    fc7 = [line for line in out.splitlines() if line.startswith("fc7 ")][0]
    assert "FAIL" in fc7
    assert "skipped caffe_only_blob: not a blob of this net" in out
    assert ": FAIL" in out.splitlines()[-1]
    # an output whose argmax disagrees somewhere fails even within a loose tolerance
    ref = {k: io[k] for k in io.files if k.startswith("s0/")}
    score = ref["s0/score"].copy()
    am = score.argmax(1)[0, 0, 0]
    score[0, :, 0, 0] = score[0, am, 0, 0] - 1.0
    score[0, (am + 1) % 21, 0, 0] += 2.0
    ref["s0/score"] = score
    np.savez(p, **ref)
    res = compare(fcn8s[0], fcn8s[1], str(p), tol=1.0)
    bad = [b for b in res.blobs if not b.ok]
    assert [b.name for b in bad] == ["score"] and bad[0].argmax_agree < 1.0
    # tolerance below float32 agreement
    assert main([*fcn8s, "--tol", "1e-9"]) == 1


def test_usage_errors_exit_2(fcn8s, capsys):
    assert main([*fcn8s, "--prefix", "s7/"]) == 2
    assert "prefixes present: ['s0/', 's1/']" in capsys.readouterr().err


def test_reference_read_through_npz_checks(fcn8s, tmp_path, capsys):
    io = np.load(fcn8s[2])
    ref = {k: io[k] for k in io.files if k.startswith("s0/")}
    ref["s0/fc7"] = np.array([object()], dtype=object)   # a pickle in the reference: refused, not loaded
    p = tmp_path / "evil.npz"
    np.savez(p, **ref)
    assert main([fcn8s[0], fcn8s[1], str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "'s0/fc7.npy'" in err[0] and "pickles are never loaded" in err[0]
    assert main([fcn8s[0], str(caffe_fixture("vgg-v1.caffemodel")), fcn8s[2]]) == 2
    err = capsys.readouterr().err
    assert "vgg-v1.caffemodel" in err and "conv1_1" in err and "shape mismatch" in err


def test_pick_prefix():
    keys = ["s0/data", "s0/a", "s0/b", "s1/data", "s1/score"]
    assert pick_prefix(keys, ["data"], None) == "s0/"
    assert pick_prefix(keys, ["data"], "s1") == "s1/"
    assert pick_prefix(["input/data", "fwd/data", "fwd/x", "fwd/y"], ["data"], None) == "fwd/"
    assert pick_prefix(["data", "score"], ["data"], None) == ""
    with pytest.raises(ValueError, match="every net input"):
        pick_prefix(keys, ["color"], None)


def test_module_entry_point(fcn8s):
    p = subprocess.run([sys.executable, "-m", "fcn_repro.compare", *fcn8s, "--prefix", "s1/"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "2 blobs compared, 0 over tolerance" in p.stdout
