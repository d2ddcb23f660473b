"""A training run's directory while it trains: one live run per directory, run.json kept current,
old snapshots pruned, Ctrl-C turned into "stop after this iteration and snapshot".

* :func:`claim_out` takes ``--out`` for this run: a lock (``RUN/.lock``, the
  ``filelock`` package) held until the run ends. A directory a live run
  holds is refused (:class:`RunBusyError`); one holding an earlier, finished
  run (its run.json, log or snapshots) is left alone and the next free name
  ``RUN-2``, ``RUN-3``, ... is taken instead (said so). ``--resume`` continues
  in the directory of the state it resumes.
* :class:`RunRecord` rewrites ``RUN/run.json`` (:mod:`fcn_repro.rundir`,
  atomically) whenever new weights are complete: each snapshot, then at the
  end with ``complete: true``.
* :func:`prune_snapshots` keeps the newest K snapshots of this run (files
  named by its log's snapshot records; nothing else is touched).
* :class:`StopOnSignals`: SIGINT and SIGTERM ask the trainer to stop at the
  end of the current iteration (it then snapshots); a second SIGINT aborts.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from filelock import FileLock, Timeout

from fcn_repro.errors import FcnReproError
from fcn_repro.labels import LabelSet
from fcn_repro.rundir import RUN_FILE, RunInfo, write_run

__all__ = ["RunBusyError", "LOCK_FILE", "DEFAULT_KEEP", "claim_out", "release", "holds_run", "latest_state", "RunRecord",
           "prune_snapshots", "StopOnSignals"]

LOCK_FILE = ".lock"
#: snapshots kept by default (--keep-snapshots): the newest two (the last, and one before it)
DEFAULT_KEEP = 2
_STATE = re.compile(r"^(?P<prefix>.+)_iter_(?P<iter>\d+)\.solverstate\.h5$")


class RunBusyError(FcnReproError):
    """The output directory belongs to a training run that is still running."""


def holds_run(path: Path) -> bool:
    """True when ``path`` holds an earlier run's files: run.json, log.jsonl or snapshots."""
    if not path.is_dir():
        return False
    if (path / RUN_FILE).exists() or (path / "log.jsonl").exists():
        return True
    return any(_STATE.match(p.name) or p.name.endswith((".caffemodel", ".caffemodel.h5")) for p in path.iterdir())


def _lock(path: Path) -> FileLock:
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except BaseException:
        if created:
            _remove_if_bare(path)
        raise
    lock.created_dir = created      # type: ignore[attr-defined]  # read by release()
    return lock


def _remove_if_bare(path: Path) -> None:
    """Remove ``path`` (a directory this run made) when it holds nothing but its lock file."""
    try:
        if {p.name for p in path.iterdir()} <= {LOCK_FILE}:
            (path / LOCK_FILE).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass


def release(path: str | os.PathLike, lock: FileLock) -> None:
    """Release a run's lock; a directory :func:`claim_out` created that got nothing (a run refused
    before its first output) is removed, so a failed start leaves nothing behind."""
    lock.release()
    if getattr(lock, "created_dir", False):
        _remove_if_bare(Path(path))


def claim_out(out: str | os.PathLike, resume: bool = False, say: Optional[Callable[[str], None]] = None
              ) -> tuple[Path, FileLock]:
    """Lock ``out`` for this run (see the module docstring); returns (the directory used, its lock).

    ``resume``: continue in ``out`` itself (its earlier files are this run's).
    """
    base = Path(out)
    cand, k = base, 1
    while True:
        earlier = holds_run(cand)
        try:
            lock = _lock(cand)
        except Timeout:
            if resume or cand == base:
                raise RunBusyError(f"a live training run holds this directory (its lock {cand / LOCK_FILE} is "
                                   "taken): wait for it, stop it (Ctrl-C snapshots it), or give another --out",
                                   os.fspath(cand)) from None
            earlier = True
        else:
            if resume or not earlier:
                if cand != base and say:
                    say(f"--out {base} holds an earlier run: writing this one to {cand}")
                return cand, lock
            lock.release()
        k += 1
        cand = base.with_name(f"{base.name}-{k}")


def latest_state(run: str | os.PathLike) -> Optional[Path]:
    """The newest ``<prefix>_iter_<N>.solverstate.h5`` in a run directory (None: there is none)."""
    best, best_it = None, -1
    for p in Path(run).iterdir():
        m = _STATE.match(p.name)
        if m and int(m.group("iter")) > best_it:
            best, best_it = p, int(m.group("iter"))
    return best


class RunRecord:
    """``RUN/run.json`` of a run in progress: call :meth:`update` whenever new weights are complete."""

    def __init__(self, run: str | os.PathLike, deploy: str | os.PathLike, heads: Dict[str, LabelSet],
                 mean: Dict[str, Any], net: Optional[str] = None, extra: Optional[Dict[str, Any]] = None):
        self.info = RunInfo(Path(run), Path(deploy), None, dict(heads),
                            {b: np.asarray(m, np.float64) for b, m in mean.items()}, net, None, False,
                            dict(extra or {}))

    def update(self, weights: str | os.PathLike, iteration: int, complete: bool = False) -> Path:
        self.info.weights, self.info.iteration, self.info.complete = Path(weights), int(iteration), bool(complete)
        return write_run(self.info)


def prune_snapshots(run: Path, records: Sequence[dict], keep: int, protect: Sequence[str] = ()) -> List[str]:
    """Delete the files of this run's snapshots older than the newest ``keep`` (0: keep all).

    Only files named by ``records`` (the log's ``snapshot`` records) are
    deleted, never ``protect`` (the weights run.json names). Returns the names deleted.
    """
    if keep <= 0:
        return []
    snaps: Dict[int, List[str]] = {}
    for r in records:
        if r.get("type") == "snapshot":
            snaps.setdefault(int(r["iter"]), []).extend(r.get("files", []))
    gone = []
    for it in sorted(snaps)[:-keep]:
        for name in snaps[it]:
            p = run / os.path.basename(name)
            if p.name in protect or not p.is_file():
                continue
            p.unlink()
            gone.append(p.name)
    return gone


class StopOnSignals:
    """``with StopOnSignals(trainer):`` SIGINT / SIGTERM set ``trainer.stop_signal`` (the trainer stops at the
    end of the iteration and snapshots); a second SIGINT raises KeyboardInterrupt (stop now, no snapshot)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Any, say: Optional[Callable[[str], None]] = None):
        self.trainer, self.say = trainer, say
        self.old: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_signal = signal.Signals(signum).name
        msg = (f"{self.trainer.stop_signal}: stopping at the end of iteration {self.trainer.iter} and writing "
               "a snapshot (Ctrl-C again: stop now without one)")
        if self.say:
            self.say(msg)
        else:
            print(msg, file=sys.stderr)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
