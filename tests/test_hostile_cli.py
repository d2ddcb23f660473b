"""Every CLI, given bad input, exits 2 with ONE ``error:`` line naming the file, and
leaves no half-written output (fcn_repro/cli.py's conventions).

Run as real subprocesses: what a user sees, tracebacks included if any escaped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "fcn_repro" / "resources" / "sample"


def _run(*args, cwd=None, input=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, input=input)


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def junk(tmp_path):
    """A text file posing as weights, a file where a directory is needed, and the listing before."""
    w = tmp_path / "garbage.caffemodel"
    w.write_text("this is not a caffemodel\n")
    f = tmp_path / "afile"
    f.write_text("x")
    return {"dir": tmp_path, "weights": w, "file": f}


def _assert_user_error(r, *names):
    err = r.stderr
    assert r.returncode == 2, (r.returncode, r.stdout, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in names:
        assert str(n) in err, (n, err)


CASES = {
    # name: (argv builder, names the error must mention)
    "evaluate-bad-weights": (lambda j: ("fcn_repro.evaluate", "--net", "sample", "--weights", j["weights"],
                                        "--data", SAMPLE / "sample", "--no-progress",
                                        "--json", j["dir"] / "out" / "r.json",
                                        "--save-predictions", j["dir"] / "pred"), ("garbage.caffemodel",)),
    "evaluate-limit-0": (lambda j: ("fcn_repro.evaluate", "--net", "sample", "--limit", "0",
                                    "--json", j["dir"] / "r.json"), ("--limit 0",)),
    "evaluate-missing-data": (lambda j: ("fcn_repro.evaluate", "--net", "sample", "--data", j["dir"] / "nodata",
                                         "--no-progress"), ("nodata",)),
    "evaluate-json-unwritable": (lambda j: ("fcn_repro.evaluate", "--net", "sample", "--no-progress",
                                            "--json", j["file"] / "r.json"), ("afile",)),
    "evaluate-predictions-not-a-dir": (lambda j: ("fcn_repro.evaluate", "--net", "sample", "--no-progress",
                                                  "--save-predictions", j["file"]), ("afile",)),
    "convert-bad-input": (lambda j: ("fcn_repro.convert", j["weights"], "-o", j["dir"] / "o.h5"),
                          ("garbage.caffemodel",)),
    "convert-output-unwritable": (lambda j: ("fcn_repro.convert", SAMPLE / "fcn8s-shapes.caffemodel", "-o",
                                             j["file"] / "o.h5"), ("afile",)),
    "convert-missing-prototxt": (lambda j: ("fcn_repro.convert", SAMPLE / "fcn8s-shapes.caffemodel",
                                            "--prototxt", j["dir"] / "none.prototxt", "--json",
                                            j["dir"] / "r.json"), ("none.prototxt",)),
    "compare-missing-reference": (lambda j: ("fcn_repro.compare", SAMPLE / "fcn8s-shapes.prototxt",
                                             SAMPLE / "fcn8s-shapes.caffemodel", j["dir"] / "ref.npz",
                                             "--json", j["dir"] / "r.json"), ("ref.npz",)),
    "compare-bad-weights": (lambda j: ("fcn_repro.compare", SAMPLE / "fcn8s-shapes.prototxt", j["weights"],
                                       SAMPLE / "sample.caffe.npz"), ("garbage.caffemodel",)),
    "netspec-out-unwritable": (lambda j: ("fcn_repro.netspec", "--out", j["file"] / "p", "fcn8s"), ("afile",)),
    "train-bad-weights": (lambda j: ("fcn_repro.train", "--net", "sample", "--weights", j["weights"], "--iters", "1",
                                     "--out", j["dir"] / "run"), ("garbage.caffemodel",)),
    "train-missing-solver": (lambda j: ("fcn_repro.train", "--solver", j["dir"] / "solver.prototxt", "--feed",
                                        j["weights"]), ("solver.prototxt",)),
    "train-save-unwritable": (lambda j: ("fcn_repro.train", "--net", "sample", "--iters", "1", "--save",
                                         j["file"] / "w.caffemodel", "--out", j["dir"] / "run"), ("afile",)),
    "zoo-json-unwritable": (lambda j: ("fcn_repro.zoo", "--json", j["file"] / "z.json"), ("afile",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_user_errors_are_one_line_and_write_nothing(case, junk):
    argv, names = CASES[case]
    before = _listing(junk["dir"])
    r = _run(*argv(junk))
    _assert_user_error(r, *names)
    assert _listing(junk["dir"]) == before  # no output, no temp file, no directory left behind


def test_version_everywhere():
    for tool in ("evaluate", "convert", "compare", "netspec", "train", "zoo"):
        r = _run(f"fcn_repro.{tool}", "--version")
        assert r.returncode == 0 and "fcn_repro" in r.stdout, (tool, r.stderr)


def test_json_to_stdout_is_valid_json_without_nan(tmp_path):
    import json

    r = _run("fcn_repro.zoo", "--json", "-")
    assert r.returncode == 0
    json.loads(r.stdout)
    r = _run("fcn_repro.evaluate", "--net", "sample", "--limit", "2", "--no-progress", "--json", "-")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rep["images"] == 2


def test_broken_pipe_is_quiet():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(f"{sys.executable} -m fcn_repro.zoo | head -1", shell=True, capture_output=True,
                       text=True, env=env, timeout=120)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
