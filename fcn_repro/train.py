"""Train an FCN as Caffe trained it: surgery, bilinear init, Caffe's SGD, snapshots.

``python -m fcn_repro.train --net fcn32s --init VGG_ILSVRC_16_layers.caffemodel --data SBD_DIR``
reproduces the original recipe (FCN-32s from VGG-16 by net surgery; FCN-16s
from FCN-32s weights; FCN-8s from FCN-16s; FCN-8s at-once from VGG-16
directly; FCN-AlexNet with ``iter_size`` accumulation and a normalized loss),
step for step: FCN's net surgery and bilinear init, Caffe's SGD
(:class:`fcn_repro.solver.CaffeSGD`) and ``Solver::Step`` order, snapshots in
Caffe's formats (``<prefix>_iter_<N>.caffemodel``, ``.caffemodel.h5``,
``.solverstate.h5``; ``--resume STATE`` continues exactly), images drawn as
FCN's Python data layer drew them, data-parallel under ``torchrun`` (N
processes with ``iter_size`` k equal one with N*k). Outputs (rank 0, atomic):
snapshots, ``log.jsonl``, a progress bar on a terminal, else Caffe's
``Iteration N, loss = X`` lines; with the ``report`` extra ``curve.png``
(matplotlib), TensorBoard event files under ``tensorboard/`` and, at the end,
``report/index.html`` for the last validation (:mod:`fcn_repro.report.training`).

``--feed BLOBS.npz`` replaces the dataset by fixed input blobs (keys
``input/<blob>``, as in the Caffe fixtures' ``train.npz``) to replay a Caffe
run step for step: ``--solver S --weights W --feed F --iters N --save OUT``.

Smoke test on the bundled sample (a reduced FCN-8s, its Caffe-trained weights,
24 images; seconds on a CPU): ``python -m fcn_repro.train --net sample --iters 4 --out out/smoke``.

The library (each step above in detail): :mod:`fcn_repro.trainer` (surgery,
the solver loop, snapshots, setting up the net and solver),
:mod:`fcn_repro.sources` (data feeding, validation set-up),
:class:`fcn_repro.evaluation.Validator` (the evaluation loop). This module is
the command line (conventions: :mod:`fcn_repro.cli`).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch.distributed as dist

from fcn_repro import cli, limits, owntrain, registry, runs
from fcn_repro.caffe import save_weights
from fcn_repro.labels import for_net
from fcn_repro.outputs import output_file
from fcn_repro.evaluation import Validator  # noqa: F401 (the API)
from fcn_repro.solver import check_base_lr
from fcn_repro.resolve import resolve
from fcn_repro.sources import (DatasetSource, FeedSource, default_val_net, draw_order,  # noqa: F401 (the API)
                               sample_arrays, training_source, validator_for)
from fcn_repro.trainer import (RECIPES, Trainer, TrainError, apply_interp,  # noqa: F401
                               draw_curve, interp_layers, loss_weights, objective, solver_with, status, summary,
                               surgery, training_net)

__all__ = [
    "surgery", "interp_layers", "apply_interp", "loss_weights", "objective", "FeedSource",
    "DatasetSource", "draw_order", "sample_arrays", "Trainer", "Validator", "draw_curve", "main", "RECIPES",
    "TrainError",
]


# ------------------------------------------------------------------- the CLI

def _net_defaults(args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.train",
        description="Train an FCN with Caffe's solver semantics (see the module docstring). "
                    "Run under torchrun for data-parallel training.")
    cli.add_common(ap, "at the end, write a summary as JSON to FILE ('-': stdout): the last iteration's "
                   "loss, the last validation scores, the snapshots (log.jsonl has every record)", examples=[
                   'python -m fcn_repro.train --net sample --iters 4 --out out/smoke   # the bundled model, '
                   'a smoke run',
                   'python -m fcn_repro.train --net fcn32s --init VGG_ILSVRC_16_layers.caffemodel --data SBD_DIR '
                   '--out out/fcn32s',
                   'python -m fcn_repro.train --net sample --data shapes --classes bg,disc,square --iters 40 '
                   '--out runs/shapes   # your own data',
                   'torchrun --nproc_per_node 2 -m fcn_repro.train --net sample --iters 4 --out out/ddp'])
    g = ap.add_argument_group("net and solver")
    g.add_argument("--net", help="a registry net: its solver and nets from prototxt/<net>/ or generated from "
                   "the net definitions; 'sample' = the bundled reduced FCN-8s, its weights and images (a smoke "
                   "test): "
                   + "; ".join(f"{k} from {v}" for k, v in RECIPES.items()))
    g.add_argument("--solver", help="solver prototxt (default: the --net's solver.prototxt)")
    g.add_argument("--train-net", help="training net prototxt (default: the solver's train_net/net)")
    g.add_argument("--val-net", help="TEST-phase net for validation (default: deploy.prototxt beside "
                   "the training net, else the solver's test_net)")
    g.add_argument("--init", help="weights to start from by FCN surgery (copy by name, fc->conv, "
                   "bilinear upsampling, zero score layers; other class counts: the class-dependent layers "
                   "re-initialised): a weights file, a run directory, or a net name (sample, fcn8s, ...) "
                   "whose weights are on disk")
    g.add_argument("--staged", action="store_true",
                   help="the paper's schedule in one command: for --net fcn16s, FCN-32s from --init, then "
                        "FCN-16s from it; for fcn8s, then FCN-8s from that (stages in OUT/stage-<net>, the last "
                        "in OUT; --iters per stage)")
    g.add_argument("--weights", help="weights to copy by layer name, no surgery (Caffe's --weights)")
    g.add_argument("--resume", help="a solver state to continue from (Caffe's --snapshot): ours "
                   "(.solverstate.h5) or Caffe's (.solverstate binary, or .solverstate.h5), or a run "
                   "directory (its newest state); give the run's other arguments again")
    g = ap.add_argument_group("data")
    g.add_argument("--data", help="training data directory: your own (images/ + labels/, or a VOC layout with "
                   "--classes / classes.txt; see fcn_repro.data.folder), SBD dataset/ or a VOC year directory")
    g.add_argument("--classes", help="your class names, comma-separated, in label-value order (default: "
                   "DATA/classes.txt): trains a net with that many score outputs")
    g.add_argument("--no-check", dest="check", action="store_false",
                   help="own data: skip reading every file with the checker before training "
                        "(python -m fcn_repro.data check DIR)")
    g.add_argument("--dataset", choices=list(registry.DATASETS),
                   help="reader for --data (default: sbd if DIR has img/ and cls/, else voc)")
    g.add_argument("--split", help="training split (default: the train net's data layer's, else train)")
    g.add_argument("--val-data", help="validation data directory (default: no validation)")
    g.add_argument("--val-dataset", choices=list(registry.DATASETS),
                   help="reader for --val-data (default: from the directory's layout, as for --dataset)")
    g.add_argument("--val-split", help="validation split (default: val.prototxt's data layer's, "
                   "else seg11valid)")
    g.add_argument("--order", choices=["random", "sequential"], default="random",
                   help="training image order: random = FCN's data layer (uniform draws with "
                        "replacement, seeded), sequential = in list order")
    g.add_argument("--seed", type=int, help="data order and filler seed (default: the data layer's "
                   "seed, 1337 in FCN's layers)")
    g.add_argument("--feed", help="train on fixed input blobs from this .npz (keys input/<blob>)")
    g = ap.add_argument_group("schedule (overrides of the solver file)")
    g.add_argument("--iters", type=int, help="iterations to run now (default: up to max_iter)")
    g.add_argument("--max-iter", type=int, help="the solver's max_iter: where the run ends and its final "
                   "snapshot is taken")
    g.add_argument("--base-lr", type=float, help="the solver's base_lr (a finite number > 0)")
    g.add_argument("--iter-size", type=int, help="the solver's iter_size: batches whose gradients are "
                   "accumulated per update (FCN-AlexNet: 20)")
    g.add_argument("--snapshot-every", type=int, help="snapshot every K iterations (0: never)")
    g.add_argument("--test-every", type=int, help="validate every K iterations (0: never)")
    g.add_argument("--test-iters", type=int, help="images per validation (default: solver test_iter, "
                   "else the whole split)")
    g.add_argument("--test-initialization", action=argparse.BooleanOptionalAction, default=None,
                   help="validate before the first iteration (default: the solver's test_initialization)")
    g.add_argument("--display", type=int, help="print Caffe's 'Iteration N, loss = X' lines every N "
                   "iterations when not on a terminal (default: the solver's display; 0: never)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", help="output directory, the run directory (default out/<net or solver name>; with "
                   "--feed: none; with --resume: the state's directory). One live run per directory (a lock); "
                   "a directory holding an earlier run is left alone: the next free OUT-2, OUT-3, ... is used")
    g.add_argument("--keep-snapshots", type=int, default=runs.DEFAULT_KEEP, metavar="K",
                   help=f"keep the newest K snapshots of this run, delete older ones (default {runs.DEFAULT_KEEP}; "
                        "0 keeps all)")
    g.add_argument("--save", help="write the final weights here (.caffemodel or .h5)")
    g.add_argument("--snapshot-format", choices=["both", "caffemodel", "h5"], default="both",
                   help="weights format of snapshots (default both: .caffemodel and .caffemodel.h5); "
                        "the solver state is always .solverstate.h5")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    cli.add_progress(g, help="no progress bar and no status lines (there are some only on a terminal; "
                     "off a terminal Caffe's 'Iteration N, loss = X' lines are written instead)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    if not args.solver and not args.net:
        raise TrainError("give --solver or --net")
    if args.keep_snapshots < 0:
        raise cli.UsageError(f"--keep-snapshots {args.keep_snapshots}: must be >= 0")
    if args.staged:
        return _staged(args)
    own = args.feed is None and owntrain.is_own_data(args.data, args.classes)
    if own and (args.solver or args.train_net):
        raise TrainError("own classes: the nets and solver are generated from --net (drop --solver/--train-net)")
    if args.net and not own:
        _net_defaults(args)
    for opt in ("iters", "max_iter", "iter_size", "test_iters"):
        v = getattr(args, opt)
        if v is not None and v < (0 if opt == "iters" else 1):
            raise cli.UsageError(f"--{opt.replace('_', '-')} {v}: must be >= {0 if opt == 'iters' else 1}")
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
    cli.check_writable(args.save, "--save")
    cli.check_writable(args.json, "--json")
    if args.out is not None:
        cli.check_writable(args.out, "--out", directory=True)

    rank, world, device = cli.dist_setup(args.device)
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


def _train(args: argparse.Namespace, own: bool, name: str, out_dir: Optional[str], rank: int, world: int,
           device: str, say) -> int:
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
        if args.json and rank == 0:
            cli.write_json(args.json, summary(trainer, out_dir, args.save))
    finally:
        if hasattr(source, "close"):
            source.close()
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    if trainer.stop_signal is not None:
        if rank == 0:
            state = trainer.snapshot_paths()["state"] if out_dir is not None else None
            status(f"stopped at iteration {trainer.iter} ({trainer.stop_signal})"
                   + (f"; continue with the same command plus --resume {state}" if state else ""))
        return 143 if trainer.stop_signal == "SIGTERM" else 130
    return 0


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


def _paper_setup(args: argparse.Namespace, name: str, rank: int, world: int, device: str, say):
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


def _paper_record(args: argparse.Namespace, sp, out_dir: str):
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


def _staged(args: argparse.Namespace) -> int:
    """--staged: FCN-32s, then FCN-16s from it, then FCN-8s from that (each stage a run of its own)."""
    order = ["fcn32s", "fcn16s", "fcn8s"]
    if args.net not in order[1:]:
        raise cli.UsageError("--staged trains fcn16s (after fcn32s) or fcn8s (after fcn32s and fcn16s): "
                             f"give --net fcn16s or --net fcn8s, not {args.net!r}")
    if args.resume or args.feed or args.solver:
        raise cli.UsageError("--staged runs whole stages: give neither --resume, --feed nor --solver "
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
        rc = _main(a)
        if rc != 0:
            return rc
        init = a.out_used   # the run directory the stage wrote (OUT-2, ... when OUT held an earlier run)
    return 0


def replace_args(args: argparse.Namespace, **kw) -> argparse.Namespace:
    d = dict(vars(args))
    d.update(kw)
    return argparse.Namespace(**d)


if __name__ == "__main__":
    sys.exit(main())
