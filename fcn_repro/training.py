"""Training as a library call: :func:`train` is what ``python -m fcn_repro.train`` runs.

    import fcn_repro
    result = fcn_repro.train("sample", iters=4, out="out/smoke")   # the bundled sample, seconds on a CPU
    result = fcn_repro.train("fcn32s", init="VGG_ILSVRC_16_layers.caffemodel", data="SBD/dataset")
    result["train"]["loss"], result["snapshots"], result["out"]

The options are the command line's (:data:`OPTIONS`: each ``--option`` of
``python -m fcn_repro.train --help`` as a keyword, ``-`` as ``_``, with the
same defaults). What each step does in detail: :mod:`fcn_repro.trainer`
(surgery, the solver loop, snapshots), :mod:`fcn_repro.sources` (data
feeding, validation set-up), :mod:`fcn_repro.owntrain` (own classes),
:mod:`fcn_repro.runs` (the run directory). A net name, its solver and nets
are resolved by :func:`fcn_repro.resolve.resolve` (generated from the net
definitions when not on disk, so a regular install trains as a checkout
does).

The device is checked, not set up: under ``torchrun`` the entry point starts
the process group (:func:`fcn_repro.cli.dist_setup`) and this module reads it
(:func:`fcn_repro.devices.process_group`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch.distributed as dist

from fcn_repro import limits, owntrain, registry, runs
from fcn_repro.caffe import save_weights
from fcn_repro.devices import check_device, process_group
from fcn_repro.labels import for_net
from fcn_repro.outputs import check_writable, output_file, write_json
from fcn_repro.resolve import resolve
from fcn_repro.solver import check_base_lr
from fcn_repro.sources import default_val_net, training_source, validator_for
from fcn_repro.trainer import Trainer, TrainError, solver_with, status, summary, training_net

__all__ = ["train", "OPTIONS"]

#: every option of :func:`train` (and of ``python -m fcn_repro.train``, whose parser takes these defaults)
OPTIONS: dict = {
    # net and solver
    "net": None, "solver": None, "train_net": None, "val_net": None, "init": None, "staged": False,
    "weights": None, "resume": None,
    # data
    "data": None, "classes": None, "check": True, "dataset": None, "split": None, "val_data": None,
    "val_dataset": None, "val_split": None, "order": "random", "seed": None, "feed": None,
    # schedule (overrides of the solver file)
    "iters": None, "max_iter": None, "base_lr": None, "iter_size": None, "snapshot_every": None,
    "test_every": None, "test_iters": None, "test_initialization": None, "display": None,
    # output
    "out": None, "keep_snapshots": runs.DEFAULT_KEEP, "save": None, "snapshot_format": "both",
    "device": "cpu", "no_progress": False, "json": None,
}


def train(net: Optional[str] = None, **options: Any) -> dict:
    """Train ``net`` (a registry net name such as ``"sample"`` or ``"fcn8s"``; or give ``solver=``) with
    the command line's options (:data:`OPTIONS`), as ``python -m fcn_repro.train`` does.

    Returns the end-of-run summary: ``iter``, ``out`` (the run directory used), ``save``, the last
    ``train`` and ``test`` records, ``snapshots``, and ``stopped`` (the signal that stopped the run
    early, else None). Errors are :class:`fcn_repro.trainer.TrainError` and the project's others.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TrainError(f"train(): unknown option(s) {unknown}; the options are {', '.join(OPTIONS)}")
    return _run(SimpleNamespace(**{**OPTIONS, **options, "net": net if net is not None else options.get("net")}))


def _net_defaults(args: Any) -> None:
    """``--net NAME``: the net's files and data as :func:`fcn_repro.resolve.resolve` finds them.

    The solver and training net: on disk or generated from the net
    definitions (a regular install has no prototxt/); the validation net:
    the deploy net. A net whose weights ship with the package (the bundled
    sample) starts from them when no --init/--weights/--resume/--feed is
    given; a dataset that ships with the package (the sample's 24 images)
    is the default data, with its split, and Caffe's display line every
    iteration (a smoke test).
    """
    model = resolve(args.net)
    card = model.card
    if args.solver is None:   # a --solver given names its own training net
        args.solver = str(model.net_file("solver"))
        args.train_net = args.train_net or str(model.net_file("train"))
    args.val_net = args.val_net or str(model.deploy)
    if (model.weights_how == "resource" and args.init is None and args.weights is None and args.resume is None
            and args.feed is None):
        args.weights = str(model.weights)
    bundled = registry.dataset(card.train_dataset).bundled if card is not None else None
    if bundled is not None and args.feed is None and args.data is None:
        args.data = str(registry.resource_path(bundled))
        args.dataset = args.dataset or card.train_dataset
        args.split = args.split or registry.dataset(card.train_dataset).split
        if args.display is None:
            args.display = 1


def _run(args: Any) -> dict:
    if not args.solver and not args.net:
        raise TrainError("give --solver or --net")
    if args.keep_snapshots < 0:
        raise TrainError(f"--keep-snapshots {args.keep_snapshots}: must be >= 0")
    if args.staged:
        return _staged(args)
    own = args.feed is None and owntrain.is_own_data(args.data, args.classes,
                                                     args.net if args.dataset is None else None)
    if own and (args.solver or args.train_net):
        raise TrainError("own classes: the nets and solver are generated from --net (drop --solver/--train-net)")
    if args.net and not own:
        _net_defaults(args)
    for opt in ("iters", "max_iter", "iter_size", "test_iters"):
        v = getattr(args, opt)
        if v is not None and v < (0 if opt == "iters" else 1):
            raise TrainError(f"--{opt.replace('_', '-')} {v}: must be >= {0 if opt == 'iters' else 1}")
    if args.base_lr is not None:
        check_base_lr(args.base_lr, "--base-lr")
    if args.feed is None and args.data is None:
        raise TrainError("give --data DIR (a training set) or --feed BLOBS.npz")
    if args.init is not None and args.weights is not None:
        raise TrainError("give at most one of --init and --weights")
    for opt in ("weights", "resume", "feed", "data", "val_data"):
        v = getattr(args, opt)
        if v is not None and not os.path.exists(v):
            raise FileNotFoundError(f"--{opt.replace('_', '-')} {v}: no such file or directory")
    if args.resume and os.path.isdir(args.resume):
        state = runs.latest_state(args.resume)
        if state is None:
            raise TrainError(f"--resume {args.resume}: the directory holds no solver state (*.solverstate.h5)")
        args.resume = os.fspath(state)
    # Outputs are checked before the work.
    check_writable(args.save, "--save")
    check_writable(args.json, "--json")
    if args.out is not None:
        check_writable(args.out, "--out", directory=True)

    device = check_device(args.device, "--device")   # the entry point chose it (and started any process group)
    rank, world = process_group()
    say = status if rank == 0 and not args.no_progress else None
    name = args.net or (Path(args.solver).parent.name if args.solver else "") or "train"
    out_dir = args.out if args.out is not None else (
        os.path.dirname(os.path.abspath(args.resume)) if args.resume else (None if args.feed else os.path.join("out", name)))
    lock = None
    if out_dir is not None:
        if rank == 0:
            claimed, lock = runs.claim_out(out_dir, resume=bool(args.resume), say=status)
            out_dir = os.fspath(claimed)
        if world > 1:
            box = [out_dir]
            dist.broadcast_object_list(box, 0)
            out_dir = box[0]
    args.out_used = out_dir
    try:
        return _train(args, own, name, out_dir, rank, world, device, say)
    finally:
        if lock is not None:
            runs.release(out_dir, lock)


def _train(args: Any, own: bool, name: str, out_dir: Optional[str], rank: int, world: int,
           device: str, say) -> dict:
    notes: list = []
    record = None
    if own:
        assert out_dir is not None
        o = owntrain.prepare(args, Path(out_dir), rank=rank, world=world, device=device, say=say)
        sp, net, source, validator, notes = o.sp, o.net, o.source, o.validator, o.notes
        if rank == 0:
            record = runs.RunRecord(out_dir, o.deploy, {"score": o.labels}, {"data": registry.MEAN_VOC},
                                    net=args.net, extra={**o.facts, "surgery": o.surgery})
    else:
        sp, net, source, validator = _paper_setup(args, name, rank, world, device, say)
        if rank == 0 and out_dir is not None:
            record = _paper_record(args, sp, out_dir)
    formats = {"both": (".caffemodel", ".caffemodel.h5"), "caffemodel": (".caffemodel",),
               "h5": (".caffemodel.h5",)}[args.snapshot_format]
    seed = sp.random_seed if sp.random_seed >= 0 else (args.seed if args.seed is not None else 1337)
    trainer = Trainer(net, net.netparam, sp, source, out_dir=out_dir, validator=validator, rank=rank,
                      world=world, progress=not args.no_progress, name=name, seed=seed, formats=formats)
    trainer.final_test = validator is not None
    if args.json == "-" and trainer.log_file is not None:
        trainer.log_file = sys.stderr  # stdout carries the JSON
    if out_dir is not None and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        trainer.on_snapshot.append(_snapshot_hook(record, args.keep_snapshots, say))
    if args.resume:
        trainer.restore(args.resume)
    if notes:
        trainer._log({"type": "setup", "iter": trainer.iter, "notes": notes})
    try:
        with runs.StopOnSignals(trainer, say=status if rank == 0 else (lambda m: None)):
            trainer.solve(args.iters)
        if args.save and rank == 0:
            save_weights(args.save, trainer.weights())
        if record is not None and trainer.stop_signal is None and record.info.weights is not None:
            record.update(record.info.weights, trainer.iter, complete=True)
        result = {**summary(trainer, out_dir, args.save), "stopped": trainer.stop_signal}
        if args.json and rank == 0:
            write_json(args.json, result)
    finally:
        if hasattr(source, "close"):
            source.close()
        if world > 1:
            dist.barrier()   # the entry point that started the process group ends it
    if trainer.stop_signal is not None and rank == 0:
        state = trainer.snapshot_paths()["state"] if out_dir is not None else None
        status(f"stopped at iteration {trainer.iter} ({trainer.stop_signal})"
               + (f"; continue with the same command plus --resume {state}" if state else ""))
    return result


def _snapshot_hook(record, keep: int, say):
    """After each snapshot: run.json names the new weights, older snapshots beyond ``keep`` go."""
    def hook(trainer: Trainer, paths: dict) -> None:
        weights = paths[trainer.formats[0]]
        if record is not None:
            record.update(weights, trainer.iter, complete=False)
        gone = runs.prune_snapshots(trainer.out_dir, trainer.records, keep, protect=[weights.name])
        if gone and say:
            say(f"--keep-snapshots {keep}: deleted {', '.join(gone)}")
    return hook


def _paper_setup(args: Any, name: str, rank: int, world: int, device: str, say):
    """The paper's nets (prototxt/, a --solver, the sample): solver, net, data, validation."""
    solver_path = Path(args.solver)
    sp = solver_with(solver_path, {"max_iter": args.max_iter, "base_lr": args.base_lr, "iter_size": args.iter_size,
                                   "snapshot": args.snapshot_every, "test_interval": args.test_every,
                                   "test_initialization": args.test_initialization, "display": args.display},
                     args.train_net)
    # Caffe seeds its fillers with random_seed when the solver sets one.
    seed = sp.random_seed if sp.random_seed >= 0 else (args.seed if args.seed is not None else 1337)
    init = owntrain.init_weights(args.init) if args.init is not None else None
    net = training_net(sp.train_net_path, seed, init=init, weights=args.weights, device=device, world=world,
                       say=say)
    if say and not (args.init or args.weights or args.resume):
        say("no --init/--weights/--resume: every layer starts from its prototxt filler")
    card = resolve(args.net).card if args.net else None
    source = training_source(net, sp.train_net_path, card, feed=args.feed, data=args.data, dataset=args.dataset,
                             split=args.split, seed=args.seed, order=args.order, rank=rank, world=world,
                             device=device, say=say)
    validator = None
    if args.val_data and not args.feed:
        validator = validator_for(net, sp.train_net_path, sp, card, args.val_data, val_net=args.val_net,
                                  dataset=args.val_dataset, split=args.val_split, limit=args.test_iters,
                                  device=device, rank=rank, world=world)
        if args.test_every is None and (not sp.test_interval or sp.test_interval > sp.max_iter):
            # FCN's solve.py scored the val set every 4000 iterations (its snapshot
            # interval) from Python, with the solver's own test off.
            sp = replace(sp, test_interval=sp.snapshot)
    else:
        if say and sp.test_interval and sp.test_interval <= sp.max_iter and not args.feed:
            say("no --val-data: periodic validation is off")
        sp = replace(sp, test_interval=0)
    return sp, net, source, validator


def _paper_record(args: Any, sp, out_dir: str):
    """run.json of a registry net's run (its classes, mean, deploy net copied into the run); None otherwise."""
    card = resolve(args.net).card if args.net else None
    if card is None or args.feed:
        return None
    try:
        src = Path(args.val_net) if args.val_net else Path(default_val_net(sp.train_net_path, sp))
    except TrainError:
        return None
    deploy = Path(out_dir) / "deploy.prototxt"
    raw = limits.read_capped(src, "prototxt", error=TrainError)   # bounded, as its parse was (a FIFO, /dev/zero)
    text = raw.decode("utf-8", errors="replace")
    with output_file(deploy, len(text.encode()), "w") as f:
        f.write(text)
    heads = {h.blob: for_net(card, h.blob) for h in card.heads}
    return runs.RunRecord(out_dir, deploy, heads, {i.blob: card.mean(i.blob) for i in card.inputs}, net=args.net,
                          extra={"data": os.path.abspath(args.data) if args.data else None})


def _staged(args: Any) -> dict:
    """--staged: FCN-32s, then FCN-16s from it, then FCN-8s from that (each stage a run of its own)."""
    order = ["fcn32s", "fcn16s", "fcn8s"]
    if args.net not in order[1:]:
        raise TrainError("--staged trains fcn16s (after fcn32s) or fcn8s (after fcn32s and fcn16s): "
                             f"give --net fcn16s or --net fcn8s, not {args.net!r}")
    if args.resume or args.feed or args.solver:
        raise TrainError("--staged runs whole stages: give neither --resume, --feed nor --solver "
                             "(resume one stage with its own command)")
    out = args.out or os.path.join("out", args.net)
    stages = order[: order.index(args.net) + 1]
    init = args.init
    for k, stage in enumerate(stages):
        last = k == len(stages) - 1
        stage_out = out if last else os.path.join(out, f"stage-{stage}")
        a = replace_args(args, net=stage, init=init, staged=False, out=stage_out, save=args.save if last else None,
                         json=args.json if last else None)
        status(f"stage {k + 1}/{len(stages)}: {stage}" + (f" from {init}" if init else "") + f" -> {stage_out}")
        result = _run(a)
        if result["stopped"] is not None:
            return result
        init = a.out_used   # the run directory the stage wrote (OUT-2, ... when OUT held an earlier run)
    return result


def replace_args(args: Any, **kw) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(args), **kw})
