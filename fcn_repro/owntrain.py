"""Training on a user's own classes: N-class nets, class surgery, the learning rate, the data.

``python -m fcn_repro.train --net NET --data DIR --classes a,b,c --out RUN``
(DIR: :mod:`fcn_repro.data.folder`) comes here when the data are the user's
(``--classes`` given, or DIR is an ``images/`` + ``labels/`` folder or has a
``classes.txt``). What it sets up, all inside RUN:

* the nets, from the same definitions as prototxt/
  (:func:`fcn_repro.caffe.fcn_nets.build_net` with ``num_classes=N``):
  ``train.prototxt`` (Input layers for data and label), ``deploy.prototxt``
  and ``solver.prototxt``. NET: a single-head net of prototxt/ (fcn32s,
  fcn16s, fcn8s, fcn8s-atonce, fcn-alexnet, pascalcontext-fcn*) or
  ``sample`` (the bundled reduced FCN-8s, :data:`SAMPLE_WIDTHS`).
* class surgery (:func:`class_surgery`): from ``--init`` (a weights file, a
  run directory, or a net name whose weights are on disk: ``sample``,
  ``fcn8s``, ...) every layer whose shape fits is copied; the layers that
  depend on the class count start as the original train nets start them
  (score layers zero, upsampling bilinear and frozen); the report names both.
* the learning rate (:func:`own_rate`): the paper's VGG nets sum the loss
  over pixels (unnormalised) with base_lr 1e-10 chosen for about 500x500
  images; for other images the rate is scaled by 500*500 / (mean training
  image area), so a pixel's gradient weighs as much as in the paper.
  Normalised-loss nets (FCN-AlexNet; the sample, trained so) keep their rate.
  The log says which rule gave the rate.
* the data: the checker (:func:`fcn_repro.data.check.check_dataset`) before
  any iteration, the training split (``train.txt`` or the stated
  deterministic split) and the validation split (``val.txt`` ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from fcn_repro import registry
from fcn_repro.caffe import fcn_nets
from fcn_repro.caffe.fcn_nets import SAMPLE_WIDTHS
from fcn_repro.caffe.net import Net
from fcn_repro.caffe.prototxt import format_text
from fcn_repro.data.check import check_dataset
from fcn_repro.data.transforms import open_checked
from fcn_repro.data.folder import is_folder, open_own, own_labels, parse_classes
from fcn_repro.labels import LabelSet
from fcn_repro.outputs import output_file
from fcn_repro.resolve import MissingError, resolve
from fcn_repro.solver import SolverParameter, read_solver
from fcn_repro.evaluation import Validator
from fcn_repro.sources import DatasetSource
from fcn_repro.trainer import TrainError, place_net, surgery

__all__ = ["OwnNet", "own_net", "is_own_data", "own_rate", "write_nets", "class_surgery", "init_weights",
           "OwnData", "open_data", "PAPER_AREA", "SAMPLE_RECIPE", "own_bases", "OwnRun", "prepare"]

#: the image area (pixels) the paper's unnormalised-loss rates were chosen for: PASCAL's ~500x500
PAPER_AREA = 500 * 500
#: the sample's solver for fine-tuning (our choice: it was trained from scratch with a normalised loss)
SAMPLE_RECIPE = dict(base_lr=1e-2, momentum=0.9, weight_decay=0.0005, lr_policy="fixed", iter_size=1)
#: images whose size the mean area is taken from (headers only)
AREA_SAMPLE = 200


@dataclass(frozen=True)
class OwnNet:
    """A net definition for own classes: ``definition`` in fcn_nets, its widths and loss normalization."""

    name: str
    definition: str
    widths: Optional[tuple] = None
    normalize: Optional[bool] = None
    solver: Dict[str, Any] = field(default_factory=dict)


def own_bases() -> List[str]:
    """The nets that train on own classes: the single-head, colour-input nets of prototxt/, and 'sample'."""
    out = []
    for name, d in fcn_nets.NETS.items():
        card = d.card
        if len(card.heads) == 1 and [i.blob for i in card.inputs] == ["data"] and d.dataset.inputs == ("data",):
            out.append(name)
    return out + ["sample"]


def own_net(name: str) -> OwnNet:
    """The definition ``--net name`` builds for own classes."""
    if name == "sample":
        return OwnNet("sample", "fcn8s", SAMPLE_WIDTHS, True, dict(SAMPLE_RECIPE))
    if name not in own_bases():
        raise TrainError(f"--net {name}: own classes train one of {', '.join(own_bases())} (single score head, "
                         "colour input)")
    return OwnNet(name, name, None, None, dict(fcn_nets.NETS[name].solver))


def is_own_data(data: Optional[str], classes: Optional[str], net: Optional[str] = None) -> bool:
    """Whether ``--data`` (with ``--classes``) is a user's own data rather than a paper dataset.

    ``net``: a net that trains on images bundled with the package (the sample): any other directory
    given to it is the user's (so its classes are asked for, and its train split read, not the bundled
    images' split). The train CLI passes it only without ``--dataset``."""
    if data is None:
        return False
    if classes is not None or is_folder(data) or (Path(data) / "classes.txt").is_file():
        return True
    if net is None:
        return False
    try:
        bundled = registry.dataset(registry.net(net).train_dataset).bundled
    except registry.UnknownNameError:
        return False           # not a registry name (the resolver says so later)
    return bundled is not None and Path(data).resolve() != registry.resource_path(bundled).resolve()


def mean_area(dataset: Any, limit: int = AREA_SAMPLE) -> float:
    """The mean image area (pixels) of up to ``limit`` images of ``dataset``, from their headers."""
    n = len(dataset)
    if n == 0:
        raise TrainError("the training split is empty")
    idx = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    areas = []
    for i in idx:
        with open_checked(dataset.image_path(int(i)), "image") as im:
            areas.append(im.size[0] * im.size[1])
    return float(np.mean(areas))


def own_rate(net: OwnNet, normalize: bool, base_lr: float, area: float) -> tuple[float, str]:
    """(base_lr, the rule in words) for training ``net`` on images of mean ``area`` pixels."""
    if normalize:
        who = "the sample's fine-tuning rate (our choice)" if net.name == "sample" else f"{net.name}'s rate"
        return base_lr, (f"base_lr {base_lr:g}: {who}, unchanged: the loss is normalised (averaged over "
                         "pixels), so the rate does not depend on the image size")
    lr = base_lr * PAPER_AREA / area
    side = int(round(area ** 0.5))
    return lr, (f"base_lr {lr:.4g} = {base_lr:g} (the paper's, for ~500x500 images) x 500*500 / {area:.0f} "
                f"(the mean training image area, ~{side}x{side}): the loss sums over pixels (unnormalised, "
                "as the paper's), so the rate is scaled by the image area")


def write_nets(run: Path, net: OwnNet, classes: int) -> Dict[str, Path]:
    """RUN/train.prototxt, deploy.prototxt and val.prototxt (= deploy) for ``classes`` outputs."""
    out = {}
    header = (f"# {net.name} for {classes} classes (own data), generated by fcn_repro.train from the "
              f"{net.definition} definition (fcn_repro/caffe/fcn_nets.py)\n")
    for phase in ("train", "deploy"):
        msg = fcn_nets.build_net(net.definition, phase, widths=net.widths, data_layer=False,
                                 num_classes=classes, normalize=net.normalize)
        text = header + format_text(msg)
        p = run / f"{phase}.prototxt"
        with output_file(p, len(text.encode()), "w") as f:
            f.write(text)
        out[phase] = p
    return out


def write_solver(run: Path, net: OwnNet, overrides: Dict[str, Any]) -> SolverParameter:
    """RUN/solver.prototxt: the net's solver (fcn_nets) with ``overrides``; returns it read back."""
    fields = dict(net.solver)
    fields.update(overrides)
    fields.update(train_net="train.prototxt", test_net="deploy.prototxt", snapshot_prefix="train")
    text = (f"# solver of {net.name} on own data, written by fcn_repro.train; net paths are relative to this "
            "file\n" + format_text(fcn_nets.solver_message(net.definition, fields)))
    p = run / "solver.prototxt"
    with output_file(p, len(text.encode()), "w") as f:
        f.write(text)
    return read_solver(p)


def init_weights(init: str) -> str:
    """``--init``: a weights file, or what :func:`fcn_repro.resolve.resolve` makes of it (a run
    directory's newest weights, a registry net's weights where they are on disk)."""
    if os.path.isfile(init):
        return init
    try:
        return os.fspath(resolve(init).require_weights())
    except MissingError as e:
        raise TrainError(f"--init {init}: {e}") from None


def class_surgery(net: Any, init: str, say: Optional[Callable[[str], None]] = None) -> dict:
    """FCN surgery from ``init`` to a net with other class counts; returns what was copied and re-initialised.

    :func:`fcn_repro.trainer.surgery` copies every blob whose shape fits
    (fully connected -> convolution where counts agree); blobs that do not fit
    are those of the class-dependent layers: they keep the train net's
    initialisation (score layers: constant 0, the original train nets'), and
    the upsampling layers are bilinear and frozen.
    """
    rep = surgery(net, net.netparam, init, fill=False)
    t = rep["transplant"]
    reinit = sorted({s[0] for s in t.skipped} | {m[0] for m in t.mismatched})
    copied = [name for name in t.matched if name not in reinit]
    out = {"copied": copied, "coerced": sorted({c[0] for c in t.coerced}), "reinitialised": reinit,
           "bilinear": list(rep["interp"]), "left_to_fillers": list(t.missing), "from": init}
    if say:
        say(f"surgery from {init}: copied {len(copied)} layers ({', '.join(copied)}); re-initialised for the "
            f"new classes: {', '.join(reinit) or 'none'} (score layers zero, as the original train nets); "
            f"bilinear, frozen: {', '.join(out['bilinear']) or 'none'}"
            + (f"; coerced fc->conv: {', '.join(out['coerced'])}" if out["coerced"] else "")
            + (f"; not in the weights (fillers): {', '.join(out['left_to_fillers'])}" if out["left_to_fillers"]
               else ""))
    return out


@dataclass
class OwnData:
    """What an own-data run reads: the classes, the training and validation readers."""

    labels: LabelSet
    train: Any
    val: Optional[Any]


def _note(ds: Any) -> str:
    return getattr(ds, "split_note", None) or f"{getattr(ds, 'split_file', ds.split)} ({len(ds)} images)"


def open_data(data: str, classes: Optional[str], split: Optional[str], val_data: Optional[str],
              val_split: Optional[str], check: bool = True, say: Optional[Callable[[str], None]] = None) -> OwnData:
    """The classes (``--classes`` or classes.txt), the dataset checked, the training and validation splits."""
    labels = own_labels(data, parse_classes(classes))
    if check:
        for root in dict.fromkeys([data] + ([val_data] if val_data else [])):
            rep = check_dataset(root, labels.names)
            if say:
                for line in rep.lines()[len(rep.problems):]:
                    say(line)
            rep.raise_if_problems()
    train = open_own(data, split or "train", labels.names)
    try:
        val = open_own(val_data or data, val_split or "val", labels.names)
    except FileNotFoundError:
        if val_data or val_split:
            raise
        val = None
    if val is not None and len(val) == 0:
        val = None
    if say:
        say(f"classes ({len(labels)}): {', '.join(labels.names)}")
        say(f"training split: {_note(train)}")
        say(f"validation split: {_note(val)}" if val is not None else "no validation split: validation is off")
    return OwnData(labels, train, val)


@dataclass
class OwnRun:
    """Everything an own-data run trains with (built by :func:`prepare`)."""

    sp: SolverParameter
    net: Any
    source: Any
    validator: Optional[Any]
    labels: LabelSet
    deploy: Path
    notes: List[str]
    surgery: Optional[dict]
    #: run.json's facts about the data: dataset (its registry reader: folder or voc), data, split, val_split
    facts: Dict[str, Any] = field(default_factory=dict)


def prepare(args: Any, run: Path, *, rank: int = 0, world: int = 1, device: Any = "cpu",
            say: Optional[Callable[[str], None]] = None) -> OwnRun:
    """Set up ``train --net NET --data DIR --classes ...`` in ``run`` (see the module docstring).

    ``args``: the train CLI's namespace (net, data, classes, split, val_data,
    val_split, init, weights, seed, order, test_iters, check and the solver
    overrides). Rank 0 writes the nets; every process reads them.
    """
    notes: List[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if say:
            say(msg)

    net_def = own_net(args.net or "sample")
    init = args.init if args.init is not None else ("sample" if net_def.name == "sample" and not args.weights
                                                    else None)
    # the weights to start from are found before anything is read or written (a refused start leaves nothing)
    init_path = init_weights(init) if init is not None and not args.resume else None
    data = open_data(args.data, args.classes, args.split, args.val_data, args.val_split,
                     check=args.check and rank == 0, say=note)
    n = len(data.labels)
    if rank == 0:
        write_nets(run, net_def, n)
    if world > 1:
        dist.barrier()
    paths = {ph: run / f"{ph}.prototxt" for ph in ("train", "deploy")}
    normalize = net_def.normalize if net_def.normalize is not None else fcn_nets.NETS[net_def.definition].normalize
    base_lr = args.base_lr if args.base_lr is not None else float(net_def.solver.get("base_lr", 1e-10))
    if args.base_lr is not None:
        lr, rule = base_lr, f"base_lr {base_lr:g} (--base-lr)"
    else:
        lr, rule = own_rate(net_def, normalize, base_lr, mean_area(data.train))
    note(rule)
    over = {"base_lr": lr, "test_iter": max(1, len(data.val)) if data.val is not None else 1}
    for key, opt in (("max_iter", "max_iter"), ("iter_size", "iter_size"), ("snapshot", "snapshot_every"),
                     ("display", "display")):
        v = getattr(args, opt, None)
        if v is not None:
            over[key] = v
    if rank == 0:
        write_solver(run, net_def, over)
    if world > 1:
        dist.barrier()
    sp = replace(read_solver(run / "solver.prototxt"), test_interval=0)
    if data.val is not None:
        # validate at the snapshots (FCN's solve.py scored at its snapshot interval) and at the end
        every = args.test_every if args.test_every is not None else sp.snapshot
        sp = replace(sp, test_interval=every)
        if args.test_initialization is not None:
            sp = replace(sp, test_initialization=args.test_initialization,
                         test_interval=sp.test_interval or sp.max_iter + 1)
    seed = sp.random_seed if sp.random_seed >= 0 else (args.seed if args.seed is not None else 1337)
    torch.manual_seed(seed)
    net = Net(os.fspath(paths["train"]), phase="TRAIN", seed=seed)
    report = None
    if init_path is not None:
        report = class_surgery(net, init_path, say=note)
    elif args.weights:
        net.load_weights(args.weights, strict=False)
    elif not args.resume:
        note(f"no --init: every layer of {net_def.name} starts from its filler (give --init to fine-tune)")
    place_net(net, device, world)
    imap = {"data": ("data",), "label": ("label",)}
    source = DatasetSource(data.train, imap, seed=args.seed if args.seed is not None else 1337, order=args.order,
                           rank=rank, world=world, device=device)
    validator = None
    if data.val is not None:
        validator = Validator(paths["deploy"], data.val, imap, {"score": "label"}, limit=args.test_iters,
                              device=device, rank=rank, world=world, labelsets={"score": data.labels})
    facts = {"dataset": "folder" if is_folder(args.data) else "voc", "data": os.path.abspath(args.data),
             "split": data.train.split, "val_split": data.val.split if data.val is not None else None}
    return OwnRun(sp, net, source, validator, data.labels, paths["deploy"], notes, report, facts)
