"""The front door: fcn_repro.list_nets / load / evaluate / optimize / train, and how failures are told.

Also: the package installed outside a checkout (the built package tree copied
where no setup.py is beside it, as a wheel installs it) trains, evaluates and
loads from an unrelated working directory and writes nothing there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fcn_repro
from fcn_repro import cli
from fcn_repro.caffe import Net
from fcn_repro.errors import FcnReproError, context_of
from fcn_repro.resolve import WeightsNotFoundError
from fcn_repro.trainer import TrainError

ROOT = Path(__file__).resolve().parents[1]


def test_list_nets_names_the_registry_and_the_sample():
    names = fcn_repro.list_nets()
    assert {"fcn8s", "fcn32s", "sample"} <= set(names) and len(names) == len(set(names))


def test_load_takes_a_name_a_prototxt_or_a_run(tmp_path):
    m = fcn_repro.load("sample")
    assert isinstance(m.net, Net) and m.meta["weights_how"] == "resource"
    pred = m.predict(torch.zeros(3, 40, 40, dtype=torch.uint8).permute(1, 2, 0).numpy())
    assert pred.label.shape == (40, 40)
    # the same net as a deploy prototxt + weights file
    p = fcn_repro.load(m.net.filename, weights=m.meta["weights"])
    assert p.meta["weights_how"] == "given"
    with pytest.raises(WeightsNotFoundError, match="pass its weights"):
        fcn_repro.load(m.net.filename)


def test_evaluate_returns_the_report():
    report = fcn_repro.evaluate("sample", limit=2, progress=False)
    head = report["heads"]["score"]
    assert report["images"] == 2 and 0.0 <= head["mean_iu"] <= 1.0 and len(head["classes"]) == 5


def test_optimize_gives_the_same_scores():
    m = fcn_repro.load("sample")
    fast = fcn_repro.optimize(m.net)
    x = torch.rand(1, 3, 37, 45) * 255
    with torch.no_grad():
        assert torch.allclose(fast(data=x)["score"], m.net(data=x)["score"], rtol=1e-5, atol=1e-4)


def test_train_is_the_library_call_the_cli_makes(tmp_path):
    out = tmp_path / "run"
    result = fcn_repro.train("sample", iters=2, out=str(out), no_progress=True, display=0)
    assert result["iter"] == 2 and result["out"] == str(out) and result["stopped"] is None
    assert (out / "run.json").is_file() and result["snapshots"]
    assert fcn_repro.load(str(out)).meta["weights_how"] == "run"     # a run directory is a net
    with pytest.raises(TrainError, match="unknown option"):
        fcn_repro.train("sample", iterations=2)


def test_the_calls_survive_importing_the_tool_modules():
    import fcn_repro.evaluate  # noqa: F401 - binds the module to fcn_repro.evaluate
    import fcn_repro.train     # noqa: F401

    assert callable(fcn_repro.evaluate) and callable(fcn_repro.train)
    assert fcn_repro.evaluate("sample", limit=1, progress=False)["images"] == 1
    with pytest.raises(TrainError, match="unknown option"):
        fcn_repro.train("sample", bogus=1)


def test_import_fcn_repro_stays_free_of_torch():
    code = "import sys, fcn_repro; fcn_repro.list_nets(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ failures

def _tool(fn):
    ap = cli.add_common(__import__("argparse").ArgumentParser(prog="t"))
    return lambda argv=(): cli.run(lambda args: fn(), ap, list(argv))


def test_our_errors_and_os_errors_are_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    for exc in (FcnReproError("bad input", "f.prototxt"), FileNotFoundError(2, "No such file", "w.caffemodel")):
        def boom(e=exc):
            raise e
        assert _tool(boom)() == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_anything_else_is_a_bug_with_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def boom():
        raise ValueError("an unexpected value")   # a bare ValueError is not a refusal of ours
    assert _tool(boom)() == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "in boom" in err and "this is a bug" in err and "ValueError" in err


@pytest.mark.parametrize("how", ["env", "flag"])
def test_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch, how):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    argv = ()
    if how == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    else:
        argv = ("--traceback",)

    def boom():
        raise FcnReproError("bad input")
    assert _tool(boom)(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and "in boom" in err and err.rstrip().endswith("error: bad input")


def test_a_layer_failure_keeps_its_type_and_gains_the_layer(monkeypatch):
    net = Net('input: "data" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
              'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    relu = net._by_name["r"]

    class Odd(Exception):
        pass

    def broken(*a, **k):
        raise Odd("inside the computation")
    monkeypatch.setattr(relu, "forward", broken)
    with pytest.raises(Odd) as ei:
        net(data=torch.zeros(1, 1, 4, 4))
    assert type(ei.value) is Odd
    assert any("'r'" in n and "(ReLU)" in n and "(1, 1, 4, 4)" in n for n in context_of(ei.value))


def test_a_wrong_input_is_the_layers_error_not_a_bug():
    from fcn_repro.caffe import LayerError

    m = fcn_repro.load("sample")
    with pytest.raises(LayerError, match=r"'data' \(1, 5, 8, 8\): expected \(N, 3, H, W\)"):
        m.net(data=torch.zeros(1, 5, 8, 8))


def test_a_library_refusal_reaching_a_tool_is_a_user_error(tmp_path, capsys):
    from fcn_repro.evaluate import main

    assert main(["--net", str(tmp_path / "no.prototxt")]) == cli.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------ installed outside a checkout

def _installed_tree(dest: Path) -> Path:
    """The package as a wheel installs it: fcn_repro/ (code, resources, the built extension) in a
    site directory with no setup.py, prototxt/ or weights/ beside it (not a checkout)."""
    site = dest / "site"
    shutil.copytree(ROOT / "fcn_repro", site / "fcn_repro", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return site


def test_installed_outside_a_checkout_trains_evaluates_and_loads_writing_nothing_in_the_cwd(tmp_path):
    """What a wheel install does (checked by hand with ``pip wheel`` + a fresh venv, see the module
    docstring; the wheel's build compiles the extension, minutes, so the test copies the built tree)."""
    site = _installed_tree(tmp_path)
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_REPRO_")}
    env.update(PYTHONPATH=str(site), HOME=str(home), FCN_REPRO_HOME=str(home / "fcn_repro"),
               MPLCONFIGDIR=str(home / "mpl"))
    where = subprocess.run([sys.executable, "-c", "import fcn_repro, fcn_repro.hub as h; "
                            "print(fcn_repro.__file__); print(h.repo_root())"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert where[0].startswith(str(site)) and where[1] == "None"   # the copy runs, and it is no checkout

    def run(*args):
        r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    run("-m", "fcn_repro.train", "--net", "sample", "--iters", "2", "--out", "X", "--no-progress")
    run("-m", "fcn_repro.evaluate", "--net", "fcn8s", "--limit", "2", "--no-progress")
    run("-c", "import fcn_repro; fcn_repro.load('sample')")
    assert sorted(p.name for p in cwd.iterdir()) == ["X"]                 # only the asked-for output
    assert (cwd / "X" / "run.json").is_file()
    assert not (site / "fcn_repro" / "prototxt").exists()                 # nothing written into the package
    assert (home / "fcn_repro" / "prototxt" / "fcn8s" / "solver.prototxt").is_file()   # generated, cached


# ------------------------------------------------------------------ the call path

def _reentries(call, stop_code) -> tuple[dict, list]:
    """Run ``call`` under a profiler until ``stop_code`` is called; return the distinct re-entries
    ((module, caller, callee) -> the stack of our modules there) and the stack where it stopped.

    A re-entry: a call into one of our modules that is already on the stack below another module of
    ours (the path went back into a module it had left)."""
    def ours(frame):
        n = frame.f_globals.get("__name__", "")
        return n if n.startswith("fcn_repro") else None

    found: dict = {}
    stop: list = []

    def prof(frame, event, arg):
        if stop or event != "call":
            return
        if frame.f_code is stop_code:
            f = frame
            while f is not None:
                if ours(f):
                    stop.append(f"{ours(f)}.{f.f_code.co_name}")
                f = f.f_back
            return
        m = ours(frame)
        if m is None:
            return
        mods, f = [], frame.f_back
        while f is not None:
            o = ours(f)
            if o is not None and (not mods or mods[-1] != o):
                mods.append(o)
            f = f.f_back
        if mods and mods[0] != m and m in mods[1:]:
            caller = frame.f_back
            while ours(caller) is None:
                caller = caller.f_back
            found.setdefault((m, f"{ours(caller)}.{caller.f_code.co_name}", frame.f_code.co_name),
                             " > ".join(reversed(mods)))

    sys.setprofile(prof)
    try:
        call()
    finally:
        sys.setprofile(None)
    return found, stop


@pytest.mark.parametrize("net", ["sample", "fcn8s"])
def test_a_net_name_goes_from_evaluates_arguments_to_the_built_net_re_entering_at_most_3_times(net, capsys):
    import fcn_repro.evaluate as ev
    from fcn_repro.caffe.net import Net as NetClass

    found, stop = _reentries(lambda: ev.main(["--net", net, "--limit", "1", "--no-progress"]),
                             NetClass.__init__.__code__)
    capsys.readouterr()
    assert stop and stop[0] == "fcn_repro.caffe.net.__init__" and stop[-1] == "fcn_repro.evaluate.main", stop
    assert len(found) <= 3, "re-entries on the way from the net name to the net:\n" + "\n".join(
        f"  {k}: {v}" for k, v in found.items())


def test_the_re_entry_counter_counts():
    """A path that goes back into a module it left is counted once per call site, a path through
    one module or out and on is not (so the test above can fail)."""
    def module(name, src):
        g = {"__name__": name}
        exec(src, g)
        return g
    a = module("fcn_repro._path_a", "def start():\n    return mid() + mid()\ndef back():\n    return on()\n")
    b = module("fcn_repro._path_b", "def mid():\n    return back()\n")
    c = module("fcn_repro._path_c", "def on():\n    return 1\n")
    a.update(mid=b["mid"], on=c["on"])
    b["back"] = a["back"]
    found, stop = _reentries(a["start"], None)
    assert found == {("fcn_repro._path_a", "fcn_repro._path_b.mid", "back"):
                     "fcn_repro._path_a > fcn_repro._path_b"} and stop == []
    found, stop = _reentries(a["start"], c["on"].__code__)   # stops where the net would be built
    assert stop == ["fcn_repro._path_c.on", "fcn_repro._path_a.back", "fcn_repro._path_b.mid",
                    "fcn_repro._path_a.start"]
