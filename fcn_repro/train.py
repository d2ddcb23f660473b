"""Train an FCN as Caffe trained it: surgery, bilinear init, Caffe's SGD, snapshots.

``python -m fcn_repro.train --net fcn32s --init VGG_ILSVRC_16_layers.caffemodel --data SBD_DIR``
reproduces the original recipe (FCN-32s from VGG-16 by net surgery; FCN-16s
from FCN-32s weights; FCN-8s from FCN-16s; FCN-8s at-once from VGG-16
directly; FCN-AlexNet with ``iter_size`` accumulation and a normalized loss),
step for step:

* **surgery** (:func:`surgery`): every parameter starts from its prototxt
  filler (absent filler = constant 0, so the new score layers start at
  zero, as the originals did); then parameters are copied by layer name from
  the init weights, fully connected layers coerced into convolutions
  (``fcn_repro.caffe.transplant``); then the upsampling Deconvolution layers
  get FCN's bilinear kernel on the class diagonal (:func:`interp_layers`).
* **Caffe's SGD** (:class:`fcn_repro.solver.CaffeSGD`): per-parameter
  lr_mult/decay_mult, L2 decay added to the gradient, momentum history that
  carries the learning rate, ``iter_size`` accumulation divided by
  ``iter_size``, Caffe's lr policies.
* **the solver loop** (:class:`Trainer`): Caffe's ``Solver::Step`` order
  (test at the start of an iteration when ``iter % test_interval == 0``;
  ``iter_size`` forward/backward passes; smoothed loss over
  ``average_loss``; update; snapshot when ``iter % snapshot == 0``) and
  ``Solver::Solve``'s final snapshot and test.
* **snapshots**: ``<prefix>_iter_<N>.caffemodel`` and ``.caffemodel.h5``
  (Caffe's formats, readable by Caffe) and ``.solverstate.h5`` (Caffe's HDF5
  solver-state layout: iter, history per parameter; no pickle).
  ``--resume STATE`` continues exactly where the state was written: same
  weights, history, iteration, learning-rate step, smoothed-loss window and
  position in the data order.
* **data**: SBD/VOC-layout directories through ``fcn_repro.data``; images
  drawn as FCN's Python data layer drew them (uniformly at random with
  replacement, Python's ``random`` seeded with 1337), or in order.
* **distributed**: under ``torchrun`` every process draws its own images;
  gradients are summed with one all-reduce and divided by the number of
  processes, as Caffe's multi-GPU solver did, so N processes with
  ``iter_size`` k equal one process with ``iter_size`` N*k (gloo on CPU,
  NCCL on GPU).
* **outputs** (rank 0, all atomic): snapshots, ``log.jsonl`` (one JSON
  record per iteration, test and snapshot), ``curve.png`` (learning curve),
  a progress bar on a terminal, else Caffe's ``Iteration N, loss = X`` lines
  every ``display`` iterations.

``--feed BLOBS.npz`` replaces the dataset by fixed input blobs (keys
``input/<blob>``, as in the Caffe fixtures' ``train.npz``) to replay a Caffe
run step for step: ``--solver S --weights W --feed F --iters N --save OUT``.

Smoke test on the bundled sample (a reduced FCN-8s, its Caffe-trained weights,
24 images; seconds on a CPU): ``python -m fcn_repro.train --net sample --iters 4 --out out/smoke``.

Modules: :mod:`fcn_repro.trainer` (surgery, the solver loop, snapshots),
:mod:`fcn_repro.sources` (data feeding), :class:`fcn_repro.evaluation.Validator`
(validation: the evaluation loop); this module is the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from fcn_repro import cli, registry, zoo
from fcn_repro.caffe import save_weights
from fcn_repro.caffe.net import Net
from fcn_repro.data import make_dataset
from fcn_repro.caffe.prototxt import parse_prototxt
from fcn_repro.data.layers import DataLayer, find_data_layer
from fcn_repro.evaluation import Validator
from fcn_repro.solver import SolverParameter, param_groups, read_solver
from fcn_repro.sources import DatasetSource, FeedSource, draw_order, sample_arrays  # noqa: F401 (the API)
from fcn_repro.trainer import (RECIPES, Trainer, TrainError, apply_interp, draw_curve, interp_layers,  # noqa: F401
                               loss_weights, objective, status, surgery)

__all__ = [
    "surgery", "interp_layers", "apply_interp", "loss_weights", "objective", "FeedSource",
    "DatasetSource", "draw_order", "sample_arrays", "Trainer", "Validator", "draw_curve", "main", "RECIPES",
    "TrainError", "default_solver",
]


# ------------------------------------------------------------------- the CLI

def _sample_defaults(args: argparse.Namespace) -> None:
    """``--net sample``: the bundled reduced FCN-8s, its Caffe-trained weights and its
    24 images, with the FCN-8s solver (the smoke test of the whole training path)."""
    args.solver = args.solver or str(default_solver("fcn8s"))
    args.train_net = args.train_net or str(registry.resource_path("sample", "fcn8s-shapes.train.prototxt"))
    args.val_net = args.val_net or str(registry.resource_path("sample", "fcn8s-shapes.prototxt"))
    if args.init is None and args.weights is None and args.resume is None and args.feed is None:
        args.weights = str(registry.resource_path("sample", registry.SAMPLE.weights.file))
    if args.feed is None:
        args.data = args.data or str(registry.resource_path("sample", "sample"))
    args.dataset = args.dataset or "sample"
    args.split = args.split or registry.dataset("sample").split
    if args.display is None:
        args.display = 1


def default_solver(net: str) -> Path:
    """prototxt/<net>/solver.prototxt of the checkout (or the netspec cache)."""
    root = zoo.repo_root()
    cands = []
    if root is not None:
        cands.append(root / "prototxt" / net / "solver.prototxt")
    cands.append(Path.cwd() / "prototxt" / net / "solver.prototxt")
    for c in cands:
        if c.is_file():
            return c
    raise TrainError(f"no solver for net {net!r}: looked for " + ", ".join(str(c) for c in cands)
                     + " (generate the nets with `python -m fcn_repro.netspec`, or pass --solver)")


def _dataset(kind: Optional[str], root: str, split: str) -> Any:
    if kind is None:
        p = Path(root)
        kind = "sbd" if (p / "img").is_dir() and (p / "cls").is_dir() else "voc"
    return make_dataset(kind, root, split)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.train",
        description="Train an FCN with Caffe's solver semantics (see the module docstring). "
                    "Run under torchrun for data-parallel training.")
    cli.add_common(ap, "at the end, write a summary as JSON to FILE ('-': stdout): the last iteration's "
                   "loss, the last validation scores, the snapshots (log.jsonl has every record)")
    g = ap.add_argument_group("net and solver")
    g.add_argument("--net", help="generated net name (prototxt/<net>/solver.prototxt), or 'sample' (the "
                   "bundled reduced FCN-8s, its weights and images: a smoke test): "
                   + "; ".join(f"{k} from {v}" for k, v in RECIPES.items()))
    g.add_argument("--solver", help="solver prototxt (default prototxt/<net>/solver.prototxt)")
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
    g.add_argument("--base-lr", type=float)
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
    if args.net == "sample":
        _sample_defaults(args)
    solver_path = Path(args.solver) if args.solver else default_solver(args.net)
    sp = read_solver(solver_path)
    over: dict[str, Any] = {}
    for arg, field in (("max_iter", "max_iter"), ("base_lr", "base_lr"), ("iter_size", "iter_size"),
                       ("snapshot_every", "snapshot"), ("test_every", "test_interval"),
                       ("test_initialization", "test_initialization"), ("display", "display")):
        if getattr(args, arg) is not None:
            over[field] = getattr(args, arg)
    if args.train_net:
        over.update(train_net=os.path.abspath(args.train_net), net="")
    sp = replace(sp, **over)
    if sp.iter_size < 1:
        raise TrainError(f"iter_size must be >= 1, got {sp.iter_size}")
    train_path = sp.train_net_path
    if not train_path or not os.path.isfile(train_path):
        raise TrainError(f"{solver_path}: training net {train_path!r} not found")
    if args.feed is None and args.data is None:
        raise TrainError("give --data DIR (a training set) or --feed BLOBS.npz")
    if args.init is not None and args.weights is not None:
        raise TrainError("give at most one of --init and --weights")
    for opt in ("iters", "max_iter", "iter_size", "test_iters"):
        v = getattr(args, opt)
        if v is not None and v < (0 if opt == "iters" else 1):
            raise cli.UsageError(f"--{opt.replace('_', '-')} {v}: must be >= {0 if opt == 'iters' else 1}")
    for opt in ("init", "weights", "resume", "feed", "data", "val_data"):
        v = getattr(args, opt)
        if v is not None and not os.path.exists(v):
            raise FileNotFoundError(f"--{opt.replace('_', '-')} {v}: no such file or directory")
    cli.check_writable(args.save, "--save")
    cli.check_writable(args.json, "--json")
    if args.out is not None:
        cli.check_writable(args.out, "--out", directory=True)

    rank, world, device = cli.dist_setup(args.device)
    name = args.net or Path(solver_path).parent.name or "train"
    out_dir = args.out if args.out is not None else (None if args.feed else os.path.join("out", name))
    show = rank == 0 and not args.no_progress

    # Caffe seeds its fillers with random_seed when the solver sets one.
    seed = sp.random_seed if sp.random_seed >= 0 else (args.seed if args.seed is not None else 1337)
    torch.manual_seed(seed)
    net = Net(train_path, phase="TRAIN", seed=seed)
    netparam = net.netparam
    if args.init:
        rep = surgery(net, netparam, args.init, fill=False)
        if show:
            t = rep["transplant"]
            status(f"surgery from {args.init}: copied {len(t.copied)} layers, coerced "
                   f"{[c[0] for c in t.coerced]}, left to fillers {t.missing}, bilinear {rep['interp']}")
    elif args.weights:
        net.load_weights(args.weights, strict=False)
    elif show and not args.resume:
        status("no --init/--weights/--resume: every layer starts from its prototxt filler")
    net.to(device)
    if world > 1:
        with torch.no_grad():  # every process starts from rank 0's parameters
            for g in param_groups(net):
                dist.broadcast(g["params"][0].data, 0)

    card = registry.net(args.net) if args.net in registry.NETS or args.net == "sample" else None
    data_layer = find_data_layer(netparam, net.inputs, train_path)
    if args.feed:
        source: Any = FeedSource(args.feed, list(net.inputs), device)
    else:
        kind = args.dataset or (data_layer.dataset if data_layer else None)
        split = args.split or (data_layer.split if data_layer else None) or "train"
        ds = _dataset(kind, args.data, split)
        data_seed = args.seed if args.seed is not None else (
            data_layer.seed if data_layer and data_layer.seed is not None else 1337)
        source = DatasetSource(ds, _input_map(net.inputs, card, data_layer), seed=data_seed,
                               order=args.order, rank=rank, world=world, device=device)
        if show:
            status(f"training data: {type(ds).__name__} {split!r} ({len(ds)} images), "
                   f"{args.order} order, seed {data_seed}")

    validator = None
    if args.val_data and not args.feed:
        val_path = args.val_net or _default_val_net(train_path, sp)
        val_layer = None
        vp = Path(train_path).parent / "val.prototxt"
        if vp.is_file():
            val_layer = find_data_layer(parse_prototxt(vp), net.inputs, str(vp))
        kind = args.val_dataset or (val_layer.dataset if val_layer else None)
        vds = _dataset(kind, args.val_data, args.val_split or (val_layer.split if val_layer else None)
                       or "seg11valid")
        heads = card.pairing if card else None
        if heads is None:
            # FCN's naming: the label blob 'label' is scored by 'score'; SIFT
            # Flow's 'sem' / 'geo' by 'score_sem' / 'score_geo'.
            heads = {("score" if lab == "label" else f"score_{lab}"): lab
                     for lab in net.inputs if lab in ("label", "sem", "geo")} or {"score": "label"}
        limit = args.test_iters if args.test_iters is not None else (sp.test_iter[0] if sp.test_iter else None)
        validator = Validator(val_path, vds, _input_map(net.inputs, card, data_layer), heads,
                              limit=limit, device=device, rank=rank, world=world)
        if args.test_every is None and (not sp.test_interval or sp.test_interval > sp.max_iter):
            # FCN's solve.py scored the val set every 4000 iterations (its
            # snapshot interval) from Python, with the solver's own test off.
            sp = replace(sp, test_interval=sp.snapshot)
    else:
        if sp.test_interval and sp.test_interval <= sp.max_iter and show and not args.feed:
            status("no --val-data: periodic validation is off")
        sp = replace(sp, test_interval=0)

    formats = {"both": (".caffemodel", ".caffemodel.h5"), "caffemodel": (".caffemodel",),
               "h5": (".caffemodel.h5",)}[args.snapshot_format]
    trainer = Trainer(net, netparam, sp, source, out_dir=out_dir, validator=validator, rank=rank,
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
            last = {t: next((r for r in reversed(trainer.records) if r.get("type") == t), None)
                    for t in ("train", "test")}
            cli.write_json(args.json, {"iter": trainer.iter, "out": out_dir, "save": args.save, **last,
                                       "snapshots": [r["files"] for r in trainer.records
                                                     if r.get("type") == "snapshot"]})
    finally:
        if hasattr(source, "close"):
            source.close()
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
    return 0


def _input_map(inputs: Sequence[str], card: Any, data_layer: Optional[DataLayer] = None
               ) -> dict[str, tuple[str, ...]]:
    """Net input blob -> sample keys.

    The registry card's mapping for its nets (NYUDv2: 'data' <- 'color');
    else a Python data layer's ``tops`` parameter, by position (its i-th top
    blob reads the reader's i-th top); else the blob's own name ('data', 'label').
    """
    m: dict[str, tuple[str, ...]] = {}
    pos = data_layer.top_map() if data_layer is not None and "tops" in data_layer.params else {}
    for b in inputs:
        if card is not None and b in card.input_map:
            m[b] = tuple(card.input_map[b])
        elif b in pos:
            m[b] = (str(pos[b]),)
        else:
            m[b] = (b,)
    return m


def _default_val_net(train_path: str, sp: SolverParameter) -> str:
    d = Path(train_path).parent
    for c in (d / "deploy.prototxt", d / "val.prototxt"):
        if c.is_file():
            return str(c)
    if sp.test_net:
        return sp.test_net[0]
    raise TrainError(f"no validation net: no deploy.prototxt or val.prototxt beside {train_path}, "
                     "no test_net in the solver; pass --val-net")


if __name__ == "__main__":
    sys.exit(main())
