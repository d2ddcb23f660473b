"""fcn_repro.runs: one live run per directory (the lock, the next free name), snapshots pruned,
SIGINT / SIGTERM turned into "stop after this iteration and snapshot". Units here; the whole
command (a real signal to a training process, resume bit-exact) in tests/test_own_data.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock

from fcn_repro import rundir, runs
from fcn_repro.train import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _finished_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "log.jsonl").write_text('{"type": "train", "iter": 0}\n')
    return path


# ------------------------------------------------------------------ claim_out

def test_a_fresh_directory_is_claimed_and_a_refused_start_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    got, lock = runs.claim_out(out)
    assert got == out and lock.is_locked and (out / runs.LOCK_FILE).exists()
    runs.release(got, lock)
    assert not out.exists()               # made by the claim, got nothing: removed
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    got, lock = runs.claim_out(out)       # a directory of other files (not a run) is used as it is
    assert got == out
    runs.release(got, lock)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_live_runs_directory_is_refused_naming_its_lock(tmp_path):
    out = tmp_path / "run"
    got, lock = runs.claim_out(out)
    try:
        with pytest.raises(runs.RunBusyError, match="live training run") as e:
            runs.claim_out(out)
        assert str(out / runs.LOCK_FILE) in str(e.value)
        with pytest.raises(runs.RunBusyError):
            runs.claim_out(out, resume=True)      # resuming into a live run's directory is refused too
    finally:
        runs.release(got, lock)
    got, lock = runs.claim_out(out)               # released: free again
    runs.release(got, lock)


def test_an_earlier_run_is_kept_and_the_next_free_name_taken(tmp_path):
    said = []
    base = _finished_run(tmp_path / "run")
    _finished_run(tmp_path / "run-2")
    live = tmp_path / "run-3"
    with FileLock(str(_finished_run(live) / runs.LOCK_FILE)):   # a live run holds run-3
        got, lock = runs.claim_out(base, say=said.append)
    assert got == tmp_path / "run-4" and said == [f"--out {base} holds an earlier run: writing this one to {got}"]
    runs.release(got, lock)
    got, lock = runs.claim_out(base, resume=True)                 # --resume continues in the run itself
    assert got == base
    runs.release(got, lock)
    assert (base / "log.jsonl").exists()


@pytest.mark.parametrize("leftover", ["run.json", "log.jsonl", "train_iter_4.caffemodel",
                                      "x_iter_8.solverstate.h5", "a.caffemodel.h5"])
def test_what_counts_as_an_earlier_run(tmp_path, leftover):
    d = tmp_path / "d"
    d.mkdir()
    assert not runs.holds_run(d) and not runs.holds_run(tmp_path / "absent")
    (d / leftover).write_bytes(b"")
    assert runs.holds_run(d)


# ------------------------------------------------------------------ snapshots

def test_latest_state_is_by_iteration_number(tmp_path):
    for it in (8, 100, 99):
        (tmp_path / f"train_iter_{it}.solverstate.h5").write_bytes(b"")
    (tmp_path / "train_iter_500.caffemodel").write_bytes(b"")
    assert runs.latest_state(tmp_path).name == "train_iter_100.solverstate.h5"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs.latest_state(empty) is None


def _snapshots(run: Path, iters):
    records = []
    for it in iters:
        files = [f"train_iter_{it}{s}" for s in (".caffemodel", ".caffemodel.h5", ".solverstate.h5")]
        for f in files:
            (run / f).write_bytes(b"w")
        records.append({"type": "snapshot", "iter": it, "files": files})
        records.append({"type": "train", "iter": it})
    return records


def test_prune_keeps_the_newest_k_and_touches_nothing_else(tmp_path):
    records = _snapshots(tmp_path, [4, 8, 12, 16])
    (tmp_path / "train_iter_2.caffemodel").write_bytes(b"not this run's")     # not in the log: kept
    (tmp_path / "deploy.prototxt").write_text("")
    gone = runs.prune_snapshots(tmp_path, records, keep=2)
    assert sorted(gone) == sorted(f"train_iter_{i}{s}" for i in (4, 8)
                                  for s in (".caffemodel", ".caffemodel.h5", ".solverstate.h5"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["deploy.prototxt", "train_iter_2.caffemodel"]
                          + [f"train_iter_{i}{s}" for i in (12, 16)
                             for s in (".caffemodel", ".caffemodel.h5", ".solverstate.h5")])
    assert runs.prune_snapshots(tmp_path, records, keep=2) == []              # files already gone: skipped


def test_prune_zero_keeps_all_and_protect_spares_the_models_weights(tmp_path):
    records = _snapshots(tmp_path, [1, 2, 3])
    assert runs.prune_snapshots(tmp_path, records, keep=0) == []
    assert len(list(tmp_path.iterdir())) == 9
    gone = runs.prune_snapshots(tmp_path, records, keep=1, protect=["train_iter_1.caffemodel"])
    assert "train_iter_1.caffemodel" not in gone and (tmp_path / "train_iter_1.caffemodel").exists()
    assert not (tmp_path / "train_iter_2.caffemodel").exists() and (tmp_path / "train_iter_3.caffemodel").exists()
    # a record naming a path outside the run deletes only the same name inside it
    outside = tmp_path.parent / "elsewhere.caffemodel"
    outside.write_bytes(b"x")
    runs.prune_snapshots(tmp_path, [{"type": "snapshot", "iter": 0, "files": [str(outside)]}] + records, keep=1)
    assert outside.exists()


def test_keep_snapshots_default_is_stated_in_help():
    ap = build_parser()
    assert ap.parse_args([]).keep_snapshots == runs.DEFAULT_KEEP >= 1
    text = " ".join(ap.format_help().split())
    assert f"--keep-snapshots K keep the newest K snapshots of this run, delete older ones " \
           f"(default {runs.DEFAULT_KEEP}; 0 keeps all)" in text


# ------------------------------------------------------------------ signals

def test_sigint_and_sigterm_ask_for_a_stop_and_a_second_sigint_stops_now():
    trainer = SimpleNamespace(stop_signal=None, iter=7)
    said = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with runs.StopOnSignals(trainer, say=said.append):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert trainer.stop_signal == "SIGTERM"
        assert said == ["SIGTERM: stopping at the end of iteration 7 and writing a snapshot "
                        "(Ctrl-C again: stop now without one)"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    trainer = SimpleNamespace(stop_signal=None, iter=0)
    with runs.StopOnSignals(trainer, say=said.append):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert trainer.stop_signal == "SIGINT"


def test_sigterm_to_a_training_process_snapshots_and_exits_143(tmp_path):
    """A real `python -m fcn_repro.train` on own data, SIGTERM after its first iteration: the snapshot of
    the iteration reached, run.json names it (not complete), exit status 143, no traceback."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_own_data import CLASSES, act_when_trained, make_shapes

    data = make_shapes(tmp_path / "data", n=6, size=(48, 40), val=2)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fcn_repro.train", "--net", "sample", "--data", str(data),
                             "--classes", CLASSES, "--iters", "100000", "--test-every", "0", "--no-progress",
                             "--out", str(run)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = act_when_trained(proc, run, 1, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM: stopping at the end of iteration" in err
    state = runs.latest_state(run)
    assert state is not None and f"--resume {state}" in err
    info = rundir.read_run(run)
    it = int(state.name.split("_iter_")[1].split(".")[0])
    assert 1 <= it < 100000 and info.iteration == it and not info.complete
    assert info.weights == run / f"train_iter_{it}.caffemodel" and info.weights.is_file()
    snaps = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in snaps if r["type"] == "snapshot"] == [it]
    got, lock = runs.claim_out(run, resume=True)          # the stopped run released its lock
    runs.release(got, lock)


def test_a_keyboard_interrupt_nothing_catches_is_one_line_and_130(capsys):
    import argparse

    from fcn_repro import cli

    def interrupted(args):
        raise KeyboardInterrupt

    assert cli.run(interrupted, argparse.ArgumentParser(), []) == cli.EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err == "interrupted (Ctrl-C): stopped at once; nothing half-written is left\n"


def test_a_second_sigint_stops_training_at_once_without_a_snapshot(tmp_path):
    """Two Ctrl-C inside one (long) iteration: the first asks for a stop and a snapshot, the second stops
    at once: exit 130, one line, no traceback, no snapshot, the lock released."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_own_data import CLASSES, act_when_trained, make_shapes

    data = make_shapes(tmp_path / "data", n=2, size=(800, 600), val=0)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fcn_repro.train", "--net", "sample", "--data", str(data),
                             "--classes", CLASSES, "--iters", "1000", "--test-every", "0", "--snapshot-every",
                             "0", "--no-progress", "--out", str(run)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = []

    def two_sigints():
        proc.send_signal(signal.SIGINT)      # an iteration has just begun: a long one at this size
        # the second once the first was handled (two signals before Python looks are one)
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("SIGINT: stopping"):
                proc.send_signal(signal.SIGINT)
                break
    out, err = act_when_trained(proc, run, 1, two_sigints)
    err = "".join(seen) + err
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: stopping at the end of iteration" in err
    assert "interrupted (Ctrl-C): stopped at once" in err and "Traceback" not in err
    assert runs.latest_state(run) is None and not list(run.glob("*.caffemodel*"))
    got, lock = runs.claim_out(run, resume=True)
    runs.release(got, lock)
