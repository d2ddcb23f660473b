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
snapshots, ``log.jsonl``, ``curve.png``, a progress bar on a terminal, else
Caffe's ``Iteration N, loss = X`` lines.

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

from fcn_repro import cli, registry
from fcn_repro.caffe import save_weights
from fcn_repro.evaluation import Validator  # noqa: F401 (the API)
from fcn_repro.solver import check_base_lr
from fcn_repro.sources import (DatasetSource, FeedSource, draw_order, sample_arrays,  # noqa: F401 (the API)
                               training_source, validator_for)
from fcn_repro.resolve import resolve
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
                   "loss, the last validation scores, the snapshots (log.jsonl has every record)")
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
                   "bilinear upsampling, zero score layers)")
    g.add_argument("--weights", help="weights to copy by layer name, no surgery (Caffe's --weights)")
    g.add_argument("--resume", help="a solver state to continue from (Caffe's --snapshot): ours "
                   "(.solverstate.h5) or Caffe's (.solverstate binary, or .solverstate.h5)")
    g = ap.add_argument_group("data")
    g.add_argument("--data", help="training data directory (SBD dataset/ or a VOC year directory)")
    g.add_argument("--dataset", choices=list(registry.DATASETS),
                   help="reader for --data (default: sbd if DIR has img/ and cls/, else voc)")
    g.add_argument("--split", help="training split (default: the train net's data layer's, else train)")
    g.add_argument("--val-data", help="validation data directory (default: no validation)")
    g.add_argument("--val-dataset", choices=list(registry.DATASETS))
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
    g.add_argument("--max-iter", type=int)
    g.add_argument("--base-lr", type=float, help="the solver's base_lr (a finite number > 0)")
    g.add_argument("--iter-size", type=int)
    g.add_argument("--snapshot-every", type=int, help="snapshot every K iterations (0: never)")
    g.add_argument("--test-every", type=int, help="validate every K iterations (0: never)")
    g.add_argument("--test-iters", type=int, help="images per validation (default: solver test_iter, "
                   "else the whole split)")
    g.add_argument("--test-initialization", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--display", type=int, help="print Caffe's 'Iteration N, loss = X' lines every N "
                   "iterations when not on a terminal (default: the solver's display; 0: never)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", help="output directory (default out/<net or solver name>; with --feed: none)")
    g.add_argument("--save", help="write the final weights here (.caffemodel or .h5)")
    g.add_argument("--snapshot-format", choices=["both", "caffemodel", "h5"], default="both",
                   help="weights format of snapshots (default both: .caffemodel and .caffemodel.h5); "
                        "the solver state is always .solverstate.h5")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    g.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    if not args.solver and not args.net:
        raise TrainError("give --solver or --net")
    if args.net:
        _net_defaults(args)
    for opt in ("iters", "max_iter", "iter_size", "test_iters"):
        v = getattr(args, opt)
        if v is not None and v < (0 if opt == "iters" else 1):
            raise cli.UsageError(f"--{opt.replace('_', '-')} {v}: must be >= {0 if opt == 'iters' else 1}")
    if args.base_lr is not None:
        check_base_lr(args.base_lr, "--base-lr")
    solver_path = Path(args.solver)
    sp = solver_with(solver_path, {"max_iter": args.max_iter, "base_lr": args.base_lr, "iter_size": args.iter_size,
                                   "snapshot": args.snapshot_every, "test_interval": args.test_every,
                                   "test_initialization": args.test_initialization, "display": args.display},
                     args.train_net)
    if args.feed is None and args.data is None:
        raise TrainError("give --data DIR (a training set) or --feed BLOBS.npz")
    if args.init is not None and args.weights is not None:
        raise TrainError("give at most one of --init and --weights")
    for opt in ("init", "weights", "resume", "feed", "data", "val_data"):
        v = getattr(args, opt)
        if v is not None and not os.path.exists(v):
            raise FileNotFoundError(f"--{opt.replace('_', '-')} {v}: no such file or directory")
    # Outputs are checked before the work.
    cli.check_writable(args.save, "--save")
    cli.check_writable(args.json, "--json")
    if args.out is not None:
        cli.check_writable(args.out, "--out", directory=True)

    rank, world, device = cli.dist_setup(args.device)
    name = args.net or Path(solver_path).parent.name or "train"
    out_dir = args.out if args.out is not None else (None if args.feed else os.path.join("out", name))
    say = status if rank == 0 and not args.no_progress else None
    # Caffe seeds its fillers with random_seed when the solver sets one.
    seed = sp.random_seed if sp.random_seed >= 0 else (args.seed if args.seed is not None else 1337)
    net = training_net(sp.train_net_path, seed, init=args.init, weights=args.weights, device=device, world=world,
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

    formats = {"both": (".caffemodel", ".caffemodel.h5"), "caffemodel": (".caffemodel",),
               "h5": (".caffemodel.h5",)}[args.snapshot_format]
    trainer = Trainer(net, net.netparam, sp, source, out_dir=out_dir, validator=validator, rank=rank,
                      world=world, progress=not args.no_progress, name=name, seed=seed, formats=formats)
    if args.json == "-" and trainer.log_file is not None:
        trainer.log_file = sys.stderr  # stdout carries the JSON
    if out_dir is not None and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        if not args.resume and trainer.log_path.exists():
            trainer.log_path.unlink()  # a fresh run starts a fresh log
    if args.resume:
        trainer.restore(args.resume)
    try:
        trainer.solve(args.iters)
        if args.save and rank == 0:
            save_weights(args.save, trainer.weights())
        if args.json and rank == 0:
            cli.write_json(args.json, summary(trainer, out_dir, args.save))
    finally:
        if hasattr(source, "close"):
            source.close()
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
