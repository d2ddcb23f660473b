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

This module is the command line (conventions: :mod:`fcn_repro.cli`): it sets
up the device (and the process group under torchrun) and calls the library's
:func:`fcn_repro.training.train` (``fcn_repro.train(...)``) with its options.
Each step in detail: :mod:`fcn_repro.trainer` (surgery, the solver loop,
snapshots, setting up the net and solver), :mod:`fcn_repro.sources` (data
feeding, validation set-up), :class:`fcn_repro.evaluation.Validator` (the
evaluation loop).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from fcn_repro import cli, registry, runs
from fcn_repro.trainer import RECIPES
from fcn_repro.training import OPTIONS, train

__all__ = ["build_parser", "main"]


# ------------------------------------------------------------------- the CLI

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
    ap.set_defaults(**OPTIONS)   # the library's defaults, one place
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    # the entry point sets up the device and, under torchrun, the process group; the library reads them
    _, _, args.device = cli.dist_setup(args.device)
    result = train(**{k: v for k, v in vars(args).items() if k in OPTIONS})
    stopped = result["stopped"]
    return 0 if stopped is None else (143 if stopped == "SIGTERM" else cli.EXIT_INTERRUPTED)


cli.front_door(__name__, "train")   # fcn_repro.train(...) stays the library call

if __name__ == "__main__":
    sys.exit(main())
