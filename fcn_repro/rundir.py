"""A training run directory is a model: the one format of ``RUN/run.json``.

``python -m fcn_repro.train ... --out RUN`` leaves a directory that every tool
takes in place of a net name (``fcn_repro.load(RUN)``, ``evaluate --net RUN``,
``infer --net RUN``, ``export RUN``)::

    RUN/run.json          this module's record (below)
    RUN/deploy.prototxt   the net to run (N score outputs for the user's N classes)
    RUN/<weights>         the newest complete weights (final, else the last snapshot)
    RUN/...               solver, train/val prototxts, snapshots, log, curves (the trainer's)

``run.json``::

    {"format": "fcn_repro.run", "version": 1,
     "net": "fcn8s",                       # the net definition it was generated from (or null)
     "deploy": "deploy.prototxt",          # file names inside RUN, never paths outside it
     "weights": "final.caffemodel",        # null until the first weights are written
     "heads": {"score": {"names": [...], "palette": [[r, g, b], ...]}},
     "mean": {"data": [b, g, r]},          # per input blob, as the net's data layer subtracts
     "iteration": 1000, "complete": true,  # the weights' iteration; false while training or if stopped
     "data": "/path/to/DIR"}               # optional facts: the training data, split, dataset kind

Readers never trust a name in the record to stay inside RUN: ``deploy`` and
``weights`` must be plain file names of RUN's own files. Every refusal is a
:class:`RunDirError` naming ``RUN/run.json``.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from fcn_repro.errors import FcnReproError
from fcn_repro.labels import LabelSet, LabelsError
from fcn_repro.outputs import output_file

__all__ = ["RunInfo", "RunDirError", "RUN_FILE", "FORMAT", "VERSION", "is_run_dir", "read_run", "write_run"]

RUN_FILE = "run.json"
FORMAT = "fcn_repro.run"
VERSION = 1
#: a run.json is a few kilobytes; anything far larger is not ours
_MAX_BYTES = 4 << 20


class RunDirError(FcnReproError):
    """A run directory whose run.json is missing, malformed or points outside the directory."""


@dataclass
class RunInfo:
    """What a run directory holds (see the module docstring for the file)."""

    dir: Path
    deploy: Path
    weights: Optional[Path]
    heads: Dict[str, LabelSet]
    mean: Dict[str, np.ndarray]
    net: Optional[str] = None
    iteration: Optional[int] = None
    complete: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        rec: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "net": self.net,
                               "deploy": self.deploy.name,
                               "weights": None if self.weights is None else self.weights.name,
                               "heads": {h: ls.to_json() for h, ls in self.heads.items()},
                               "mean": {b: [float(v) for v in np.asarray(m).reshape(-1)] for b, m in self.mean.items()},
                               "iteration": self.iteration, "complete": bool(self.complete)}
        for k, v in self.extra.items():
            rec.setdefault(k, v)
        return rec


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a run.json (whether or not it is valid)."""
    p = Path(path)
    return p.is_dir() and (p / RUN_FILE).is_file()


def _own_file(run: Path, name: Any, key: str, where: str, required: bool) -> Optional[Path]:
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise RunDirError(f"{key!r} must be a file name inside the run directory, got {name!r}", where)
    p = run / name
    if not p.is_file():
        raise RunDirError(f"{key!r}: {name} is not in {run}", where)
    return p


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read ``path/run.json``; every problem is a :class:`RunDirError` naming it."""
    run = Path(path)
    where = os.fspath(run / RUN_FILE)
    try:
        if not stat.S_ISREG(os.stat(where).st_mode):   # a FIFO or device would block or never end
            raise RunDirError("not a regular file", where)
        with open(where, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise RunDirError(f"not a run directory: no {RUN_FILE} (train --out writes one)", where) from None
    except OSError as e:
        raise RunDirError(f"can not read: {e.strerror or e}", where) from None
    if len(raw) > _MAX_BYTES:
        raise RunDirError(f"larger than {_MAX_BYTES} bytes: not a run record", where)
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"not valid JSON ({e})", where) from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise RunDirError(f"not a run record (format must be {FORMAT!r})", where)
    if rec.get("version") != VERSION:
        raise RunDirError(f"run record version {rec.get('version')!r}: this fcn_repro reads version {VERSION}", where)
    deploy = _own_file(run, rec.get("deploy"), "deploy", where, True)
    weights = _own_file(run, rec.get("weights"), "weights", where, False)
    heads_rec = rec.get("heads")
    if not isinstance(heads_rec, dict) or not heads_rec:
        raise RunDirError("'heads' must map each score blob to its classes", where)
    heads = {}
    for h, obj in heads_rec.items():
        try:
            heads[str(h)] = LabelSet.from_json(obj, where)
        except LabelsError as e:
            raise RunDirError(f"head {h!r}: {e.reason}", where) from None
    mean_rec = rec.get("mean", {})
    if not isinstance(mean_rec, dict):
        raise RunDirError("'mean' must map input blobs to lists of numbers", where)
    mean = {}
    for b, m in mean_rec.items():
        if (not isinstance(m, list) or not 0 < len(m) <= 16
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in m)):
            raise RunDirError(f"mean of {b!r} must be a list of 1..16 finite numbers", where)
        mean[str(b)] = np.asarray(m, dtype=np.float64)
    it = rec.get("iteration")
    if it is not None and (type(it) is not int or it < 0):
        raise RunDirError(f"'iteration' must be a non-negative integer, got {it!r}", where)
    net = rec.get("net")
    if net is not None and not isinstance(net, str):
        raise RunDirError(f"'net' must be a name or null, got {net!r}", where)
    known = {"format", "version", "net", "deploy", "weights", "heads", "mean", "iteration", "complete"}
    return RunInfo(run, deploy, weights, heads, mean, net, it, bool(rec.get("complete", False)),
                   {k: v for k, v in rec.items() if k not in known})


def write_run(info: RunInfo) -> Path:
    """Write ``info.dir/run.json`` atomically (the files it names must already be in the directory)."""
    for key, p in (("deploy", info.deploy), ("weights", info.weights)):
        if p is not None and Path(p).resolve().parent != Path(info.dir).resolve():
            raise RunDirError(f"{key} {p} is not inside the run directory", os.fspath(Path(info.dir) / RUN_FILE))
    target = Path(info.dir) / RUN_FILE
    data = (json.dumps(info.to_json(), indent=2) + "\n").encode("utf-8")
    with output_file(target, len(data), "wb") as f:
        f.write(data)
    return target
