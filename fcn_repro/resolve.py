"""One resolver: what a net reference means, on this machine.

Every tool and :func:`fcn_repro.load` take the same kinds of reference, and
this module is the one place that says what each means::

    from fcn_repro.resolve import resolve
    m = resolve("fcn8s")                    # a registry net
    m = resolve("sample")                   # the bundled sample (its card's resource: entries)
    m = resolve("runs/shapes")              # a training run directory (fcn_repro.rundir)
    m = resolve("my/deploy.prototxt", weights="my.caffemodel")
    m.deploy, m.weights, m.weights_how      # files, and how the weights are known
    m.heads["score"].names, m.means["data"] # classes per head (LabelSet), means per input blob
    m.net_file("solver")                    # deploy/train/val/solver, generated when not on disk
    m.require_weights()                     # the weights path, or WeightsNotFoundError

``weights_how`` says how the weights are known: ``"pinned"`` (a registry
file with a published size or sha1), ``"recorded"`` (a registry file with
nothing published: its first-seen sha256 is recorded in its weights
directory's manifest), ``"run"`` (the run directory's newest weights),
``"given"`` (a file passed by the caller), ``"resource"`` (shipped inside the
package, the card says ``resource:``). Missing weights do not raise here (a
tool reports every missing piece at once): :attr:`Model.weights_error` says
where they were looked for and how to get them, and
:meth:`Model.require_weights` raises it as a :class:`WeightsNotFoundError`.

Net files of a registry net: the card's ``resource:`` entries, else the
checkout's ``prototxt/<net>/<phase>.prototxt``, else generated from the net
definitions (:mod:`fcn_repro.caffe.fcn_nets`) into
``$FCN_REPRO_HOME/prototxt/<net>/`` (all four files together, so that the
solver's relative net paths hold); nothing is ever written in the working
directory. This module imports no torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from fcn_repro import hub, registry
from fcn_repro.caffe import fcn_nets
from fcn_repro.errors import FcnReproError
from fcn_repro.labels import LabelSet, for_net
from fcn_repro.outputs import output_file
from fcn_repro.rundir import RunInfo, is_run_dir, read_run

__all__ = ["Model", "resolve", "list_names", "listing", "MissingError", "WeightsNotFoundError", "PHASES"]

#: the net files a net has: the three nets and the solver
PHASES = ("deploy", "train", "val", "solver")


class MissingError(FcnReproError, FileNotFoundError):
    """A net, its files, its weights or its data are not here (a project error and a FileNotFoundError)."""


class WeightsNotFoundError(MissingError):
    """A net's weights are not on this machine; the message says where they were looked for and how to get them."""


@dataclass(frozen=True)
class Model:
    """What a net reference resolved to (see the module docstring)."""

    ref: str
    kind: str                                  # 'net' (registry), 'prototxt' or 'run'
    card: Optional[registry.NetCard]
    deploy: Path
    weights: Optional[Path]
    weights_how: Optional[str]                 # pinned | recorded | run | given | resource (None: missing)
    heads: Dict[str, LabelSet]
    means: Dict[str, np.ndarray]
    run: Optional[RunInfo] = None
    weights_error: Optional[str] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """A short name: the card's, the run directory's or the prototxt file's."""
        if self.card is not None:
            return self.card.name
        return Path(self.ref).name or self.ref

    @property
    def verify(self) -> bool:
        """Whether the weights are checked against the published facts / their manifest record."""
        return self.weights_how in ("pinned", "recorded", "given")

    def require_weights(self) -> Path:
        """The weights path; :class:`WeightsNotFoundError` (where looked, how to get them) when missing."""
        if self.weights is None:
            raise WeightsNotFoundError(self.weights_error or f"{self.ref}: no weights")
        return self.weights

    def net_file(self, phase: str) -> Path:
        """deploy/train/val/solver of this net, from disk or generated from the net definitions."""
        if phase not in PHASES:
            raise MissingError(f"no net file {phase!r}; one of {', '.join(PHASES)}")
        if phase == "deploy":
            return self.deploy
        if self.kind == "run":
            p = self.run.dir / f"{phase}.prototxt"
            if p.is_file():
                return p
            raise MissingError(f"{self.run.dir}: no {p.name} (the run directory holds the nets it was "
                               "trained with, or train --out did not write it)", p)
        if self.card is None:
            raise MissingError(f"{self.ref} is a prototxt path: its {phase} net is not known; pass it explicitly")
        return _card_file(self.card, phase)


def _locators(card: registry.NetCard) -> Dict[str, str]:
    return dict(card.files)


def _card_file(card: registry.NetCard, phase: str) -> Path:
    loc = _locators(card).get(phase)
    if loc is not None:
        return registry.resource_path(loc)
    name = card.definition or card.name
    root = hub.repo_root()
    if root is not None:
        p = root / "prototxt" / name / f"{phase}.prototxt"
        if p.is_file():
            return p
    return _generated(name) / f"{phase}.prototxt"


def _generated(name: str) -> Path:
    """``$FCN_REPRO_HOME/prototxt/<name>/``: the four files of the definition, rewritten when this
    version's text differs from what is there (a cache, never the working directory)."""
    d = hub.home() / "prototxt" / name
    texts = {f"{phase}.prototxt": fcn_nets.net_text(name, phase) for phase in fcn_nets.PHASES}
    texts["solver.prototxt"] = fcn_nets.solver_text(name)
    for fname, text in texts.items():
        p = d / fname
        try:
            same = p.is_file() and p.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            data = text.encode("utf-8")
            with output_file(p, len(data), "wb") as f:
                f.write(data)
    return d


def _card_weights(card: registry.NetCard, download: bool, progress: bool
                  ) -> Tuple[Optional[Path], Optional[str], Optional[str]]:
    """(path, how, error) of a registry net's own weights."""
    w = card.weights
    if w is None:
        return None, None, (f"no original weights were published for {card.name}: train them "
                            f"(python -m fcn_repro.train --net {card.name} ...) and pass the weights file "
                            "(--weights FILE, or weights=FILE)")
    if w.url.startswith(registry.RESOURCE):
        p = registry.resource_path(w.url)
        if not p.is_file():
            return None, None, f"{p}: the package's own copy of {w.file} is missing (a broken install)"
        return p, "resource", None
    how = "pinned" if w.pinned else "recorded"
    p = hub.find_weights(w.file)
    if p is None and download:
        p = hub.download([card.name], progress=progress)[0]
    if p is not None:
        return p, how, None
    looked = ", ".join(str(d / w.file) for d in hub.weights_dirs())
    return None, None, (f"weights for {card.name} not found: looked for {looked}\n"
                        f"  download them (from {w.url} or its mirrors, verified): "
                        f"python -m fcn_repro.zoo download {card.name} "
                        f"(in Python: fcn_repro.load({card.name!r}, download=True))\n"
                        f"  (or pass the file: --weights FILE / weights=FILE; or set FCN_REPRO_WEIGHTS_DIR "
                        f"to the directory holding {w.file})")


def _given(weights: os.PathLike) -> Path:
    p = Path(weights)
    if not p.is_file():
        raise WeightsNotFoundError("weights file not found", os.fspath(p))
    return p


def _is_path(ref: str) -> bool:
    return ref.endswith(".prototxt") or os.sep in ref or (os.altsep is not None and os.altsep in ref) \
        or os.path.exists(ref)


def resolve(net: str | os.PathLike, weights: Optional[str | os.PathLike] = None, *, download: bool = False,
            progress: bool = True) -> Model:
    """A registry net name, a deploy prototxt path or a run directory (+ optional weights) -> :class:`Model`.

    ``download``: fetch a registry net's original weights when they are not
    here (:func:`fcn_repro.hub.download`). A given ``weights`` file must
    exist (:class:`WeightsNotFoundError`); an unknown name or a missing
    prototxt is a :class:`MissingError`; a bad run directory a
    :class:`fcn_repro.rundir.RunDirError`.
    """
    ref = os.fspath(net)
    if _is_path(ref) and not os.path.exists(ref):
        raise MissingError(f"deploy prototxt not found (nor a run directory)\n  a net is a known name "
                           f"({', '.join(list_names())}), a deploy prototxt or a run directory", ref)
    given = _given(weights) if weights is not None else None
    if is_run_dir(ref) or (os.path.isdir(ref) and not ref.endswith(".prototxt")):
        run = read_run(ref)   # a directory without run.json: RunDirError says it is not a run directory
        err = None if run.weights is not None or given is not None else (
            f"{run.dir}: the run has no weights yet (training writes them at its first snapshot and at the "
            "end); pass a weights file")
        return Model(ref, "run", None, run.deploy, given or run.weights,
                     "given" if given is not None else ("run" if run.weights is not None else None),
                     dict(run.heads), dict(run.mean), run, err)
    if _is_path(ref):
        p = Path(ref)
        err = None if given is not None else (
            f"{ref} is a prototxt path: pass its weights (--weights FILE / weights=FILE: .caffemodel, "
            ".caffemodel.h5 or .h5)")
        return Model(ref, "prototxt", None, p, given, "given" if given is not None else None, {}, {},
                     weights_error=err)
    try:
        card = registry.net(ref)
    except registry.UnknownNameError as e:
        raise MissingError(f"{e}; or a deploy prototxt path, or a training run directory") from None
    if given is not None:
        path, how, err = given, "given", None
    else:
        path, how, err = _card_weights(card, download, progress)
    heads = {h.blob: for_net(card, h.blob) for h in card.heads}
    means = {i.blob: card.mean(i.blob) for i in card.inputs}
    return Model(ref, "net", card, _card_file(card, "deploy"), path, how, heads, means, weights_error=err)


def list_names() -> list:
    """Every net name :func:`resolve` knows (the registry's nets and the bundled sample)."""
    return registry.names() + [registry.SAMPLE.name]


def listing(directory: Optional[os.PathLike] = None) -> dict:
    """Every net :func:`resolve` knows, with its weights where :func:`resolve` finds them (or in
    ``directory`` when given), its references and sources; the published results of nets the
    project does not have; the initialisation weights. What ``python -m fcn_repro.zoo`` prints."""
    def one(card: registry.NetCard) -> dict:
        w = card.weights
        weights = None
        if w is not None:
            if directory is not None and not w.url.startswith(registry.RESOURCE):
                path, how = Path(directory) / w.file, ("pinned" if w.pinned else "recorded")
                path = path if path.is_file() else None
            else:
                path, how, _ = _card_weights(card, download=False, progress=False)
            where = path or (Path(directory) if directory is not None else hub.download_dir()) / w.file
            weights = {"file": w.file, "sources": [u for u in w.urls if not u.startswith(registry.RESOURCE)],
                       "bundled": w.url.startswith(registry.RESOURCE), "bytes": w.bytes, "sha1": w.sha1,
                       "path": str(where), "present": path is not None, "how": how if path else None}
        return {
            "net": card.name, "title": card.title, "dataset": card.dataset, "split": card.split, "weights": weights,
            "references": [{"source": r.source, "split": r.split, "head": r.head, "asserted": r.asserted,
                            "decimals": r.decimals, "scores": r.scores(), "extra": dict(r.extra),
                            "text": r.text()} for r in card.references],
        }
    context = [{"dataset": d.key, "net": title, "split": r.split, "source": r.source, "scores": r.scores(),
                "text": r.text()} for d in registry.DATASETS.values() for title, r in d.context]
    dirs = [Path(directory)] if directory is not None else hub.weights_dirs()
    return {"weights_dirs": [str(d) for d in dirs], "nets": [one(registry.net(n)) for n in list_names()],
            "other_published": context,
            "init_weights": {k: {"file": w.file, "sources": list(w.urls), "bytes": w.bytes}
                             for k, w in registry.INIT_WEIGHTS.items()}}
