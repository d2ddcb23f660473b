"""Caffe's solver for FCN training: surgery, bilinear init, Caffe's SGD loop, snapshots.

The library side of ``python -m fcn_repro.train`` (see :mod:`fcn_repro.train`
for the recipe and the CLI; :mod:`fcn_repro.sources` for the data feeding;
validation is :class:`fcn_repro.evaluation.Validator`, the evaluation loop):

* **surgery** (:func:`surgery`): every parameter starts from its prototxt
  filler (absent filler = constant 0, so the new score layers start at
  zero, as the originals did); then parameters are copied by layer name from
  the init weights, fully connected layers coerced into convolutions
  (``fcn_repro.caffe.transplant``); then the upsampling Deconvolution layers
  get FCN's bilinear kernel on the class diagonal (:func:`interp_layers`).
* **the solver loop** (:class:`Trainer`): Caffe's ``Solver::Step`` order
  (test at the start of an iteration when ``iter % test_interval == 0``;
  ``iter_size`` forward/backward passes; smoothed loss over
  ``average_loss``; update with :class:`fcn_repro.solver.CaffeSGD`; snapshot
  when ``iter % snapshot == 0``) and ``Solver::Solve``'s final snapshot and
  test; Caffe's display lines off a terminal.
* **snapshots**: ``<prefix>_iter_<N>.caffemodel`` and ``.caffemodel.h5``
  and ``.solverstate.h5`` (Caffe's HDF5 solver-state layout; no pickle);
  :meth:`Trainer.restore` continues exactly where a state was written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fcn_repro import limits, registry
from fcn_repro.caffe import load_weights, save_weights
from fcn_repro.caffe.fillers import bilinear_weight, fill_params
from fcn_repro.caffe.net import Net, copy_matched, transplant
from fcn_repro.caffe.match import match_weights
from fcn_repro.caffe.prototxt import Message
from fcn_repro.errors import FcnReproError
from fcn_repro.evaluation import Validator
from fcn_repro.outputs import jsonable, output_file
from fcn_repro.report.training import TrainingPictures, draw_curve, validation_gallery
from fcn_repro.solver import CaffeSGD, SmoothedLoss, SolverParameter, param_groups, read_solver, sync_gradients
from fcn_repro.progress import bar as progress_bar

__all__ = ["TrainError", "RECIPES", "surgery", "interp_layers", "apply_interp", "objective",
           "draw_curve", "Trainer", "status", "solver_with", "training_net", "place_net", "summary"]


class TrainError(FcnReproError):
    """A training setup that cannot run; the message names the file and blob."""


#: The original schedule: which weights each net's training started from (the registry's cards).
RECIPES = {name: card.trained_from for name, card in registry.NETS.items() if card.dataset == "voc"}


# ------------------------------------------------------------------ surgery

def _layer_msgs(netparam: Message) -> dict[str, Message]:
    return {str(layer.get("name", "")): layer for layer in netparam.getall("layer")}


def interp_layers(net: Any, netparam: Message) -> list[str]:
    """The upsampling layers FCN's recipe initialises with bilinear kernels.

    Deconvolution layers of ``net`` whose ``weight_filler`` is ``bilinear`` or
    whose name starts with ``upscore`` (FCN's naming: upscore, upscore2,
    upscore_pool4, upscore8, upscore16).
    """
    out = []
    msgs = _layer_msgs(netparam)
    for name in net.params:
        m = msgs.get(name)
        if m is None or str(m.get("type", "")) != "Deconvolution":
            continue
        filler = str(m.sub("convolution_param").sub("weight_filler").get("type", "constant")).lower()
        if filler == "bilinear" or name.startswith("upscore"):
            out.append(name)
    return out


@torch.no_grad()
def apply_interp(net: Any, layers: Sequence[str]) -> None:
    """Set each layer's weight to FCN's bilinear upsampling kernel (diagonal).

    Weight (C, C, k, k): the kernel on the channel diagonal, zero elsewhere
    (FCN's ``surgery.interp``); (C, 1, k, k) depthwise: the kernel in every
    channel. Biases, if any, are left as they are.
    """
    for name in layers:
        p = net.params[name][0]
        w = bilinear_weight(tuple(p.shape), np.float64, where=f"layer {name!r}")
        p.copy_(torch.from_numpy(w).to(dtype=p.dtype, device=p.device))


def surgery(net: Any, netparam: Optional[Message] = None, init: Any = None, *, seed: Optional[int] = 0,
            fill: bool = True, interp: Optional[Sequence[str]] = None) -> dict:
    """Initialise a training net the way FCN's solve.py did.

    1. (``fill``) every parameter from its prototxt filler (Caffe's Net
       init; an absent filler is constant 0, which is how the score layers
       start at zero). A ``Net`` built without weights has done this already.
    2. ``init`` (a weights path or dict layer -> arrays): copied by layer name
       with fully connected -> convolution coercion
       (``fcn_repro.caffe.transplant``);
    3. the upsampling layers (:func:`interp_layers`, or ``interp``) set to
       bilinear kernels, overriding whatever step 1 or 2 put there.

    ``netparam`` defaults to ``net.netparam``. Returns ``{"filled": [...],
    "transplant": <the builder's WeightsReport or None>, "interp": [...]}``.
    """
    netparam = netparam if netparam is not None else net.netparam
    filled = fill_params(net.params, netparam, rng=seed) if fill else []
    report = transplant(net, init) if init is not None else None
    layers = interp_layers(net, netparam) if interp is None else list(interp)
    apply_interp(net, layers)
    return {"filled": filled, "transplant": report, "interp": layers}


# ---------------------------------------------------------------- objective

def objective(outputs: dict[str, torch.Tensor], weights: dict[str, float], where: str = "net"
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Caffe's total loss: sum over loss tops of loss_weight * sum(top).

    Returns (the scalar to backpropagate, {top: value} for logging).
    """
    if not weights:
        raise TrainError(f"{where}: the net has no loss (no *Loss layer and no loss_weight): nothing to train")
    total: Optional[torch.Tensor] = None
    parts: dict[str, float] = {}
    for top, w in weights.items():
        if top not in outputs:
            raise TrainError(f"{where}: loss top {top!r} is not among the net's outputs "
                             f"{sorted(outputs)}")
        v = outputs[top].sum()
        parts[top] = float(v.detach())
        term = v * w if w != 1.0 else v
        total = term if total is None else total + term
    assert total is not None
    return total, parts


# ------------------------------------------------------------------ the loop

class Trainer:
    """Caffe's Solver for one training net.

    ``net``: a built ``fcn_repro.caffe.Net`` (TRAIN phase) on its device;
    ``netparam``: its parameter message; ``solver``: a SolverParameter;
    ``source``: a FeedSource / DatasetSource; ``out_dir``: where snapshots,
    ``log.jsonl`` and ``curve.png`` go (None: write nothing); ``validator``:
    optional :class:`Validator`. ``rank``/``world``: torch.distributed
    process index and count (rank 0 writes). ``formats``: weights formats of
    snapshots. ``seed``: with the global pass index, seeds each pass's random
    layers (Dropout), so a resumed or distributed run draws the same masks.
    """

    def __init__(self, net: Any, netparam: Message, solver: SolverParameter, source: Any, *,
                 out_dir: Optional[str | os.PathLike] = None, validator: Optional[Validator] = None,
                 rank: int = 0, world: int = 1, progress: bool = True, name: str = "train",
                 formats: Sequence[str] = (".caffemodel", ".caffemodel.h5"), seed: int = 1337):
        self.net, self.netparam, self.solver, self.source = net, netparam, solver, source
        self.validator = validator
        self.rank, self.world = rank, world
        self.seed = int(seed)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and rank == 0
        self.name = name
        self.formats = tuple(formats)
        self.opt = CaffeSGD(param_groups(net), solver)
        self.loss_weights = net.loss_weights   # top -> weight: Caffe's rule, the builder's (Net.loss_weights)
        self.smoothed = SmoothedLoss(solver.average_loss)
        self.records: list[dict] = []
        self.where = os.path.basename(str(getattr(net, "filename", "") or solver.train_net_path or "net"))
        prefix = os.path.basename(solver.snapshot_prefix) if solver.snapshot_prefix else self.name
        self.prefix = prefix
        self.last_snapshot_iter = -1
        self.last_test_iter = -1
        self.t_start = time.time()
        #: where the display lines go when there is no progress bar (None: nowhere)
        self.log_file = sys.stdout if rank == 0 else None
        #: progress bar only on a terminal; a log gets Caffe's display lines instead
        self.interactive = sys.stdout.isatty() and sys.stderr.isatty()
        #: curve.png, TensorBoard events, the final report (fcn_repro.report.training); writer only
        self.pictures = TrainingPictures(self.out_dir) if self.writer else None
        #: set (to the signal's name) to stop at the end of the current iteration, then snapshot
        #: (fcn_repro.runs.StopOnSignals); under several processes all stop at the same iteration
        self.stop_signal: Optional[str] = None
        #: called as hook(trainer, paths) after each snapshot is complete (run.json, pruning)
        self.on_snapshot: list[Callable[["Trainer", dict], None]] = []
        #: validate once more at the end when the last iteration was not a test iteration
        self.final_test = False

    # -- bookkeeping
    @property
    def iter(self) -> int:
        return self.opt.iter

    @property
    def writer(self) -> bool:
        return self.rank == 0 and self.out_dir is not None

    @property
    def log_path(self) -> Optional[Path]:
        return self.out_dir / "log.jsonl" if self.out_dir is not None else None

    def _log(self, rec: dict) -> None:
        rec = jsonable(rec)
        self.records.append(rec)
        if self.writer:
            # One complete line per write, flushed: a crash leaves whole records
            # (a torn last line is dropped by _read_log on resume).
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()

    @staticmethod
    def _read_log(path: Path, upto_iter: int) -> list[dict]:
        out = []
        if not path.is_file():
            return out
        # read to a bound (a log is its run's own, but a planted or runaway one must not fill memory);
        # lines that are not whole records of an iteration (a torn last line, anything else) are dropped
        text = limits.read_capped(path, "training log", cap="read_bytes", error=TrainError)
        for line in text.decode("utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
                it = int(r.get("iter", 0))
            except (ValueError, TypeError, AttributeError, OverflowError):
                continue
            if it <= upto_iter:
                out.append(r)
        return out

    # -- one Caffe iteration
    def step_once(self) -> dict:
        """Clear diffs, iter_size forward/backward passes, sync, update (Caffe's Step body)."""
        t0 = time.time()
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        parts_sum: dict[str, float] = {}
        images = 0
        for k in range(self.solver.iter_size):
            # Random layers (Dropout) draw from a generator seeded by the global
            # pass index, the index of the data draw: a resumed run replays the
            # same masks, and N processes draw what one process with iter_size
            # N*iter_size draws.
            g = (self.opt.iter * self.solver.iter_size + k) * self.world + self.rank
            torch.manual_seed((self.seed * 1000003 + g) % (2 ** 63 - 1))
            inputs = self.source.next()
            out = self.net(**inputs)
            total = getattr(self.net, "loss", None)
            if total is not None:
                # The builder's net.loss: Caffe's loss-weighted sum of the loss tops.
                parts = {t: float(out[t].detach().sum()) for t in self.loss_weights if t in out}
            else:
                total, parts = objective(out, self.loss_weights, self.where)
            total.backward()
            loss_sum += float(total.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            images += getattr(self.source, "images_per_pass", 1)
        loss = loss_sum / self.solver.iter_size  # Caffe: loss /= iter_size
        if self.world > 1:
            sync_gradients(self.opt.params_in_order())
            dev = self.opt.params_in_order()[0].device
            t = torch.tensor([loss, float(images)], dtype=torch.float64, device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            loss, images = float(t[0]) / self.world, int(t[1])
        smoothed = self.smoothed.update(loss)
        it = self.opt.iter
        self.opt.step()
        dt = time.time() - t0
        rec = {"type": "train", "iter": it, "loss": loss, "smoothed_loss": smoothed,
               "lr": self.opt.last_rate, "images_per_s": images / dt if dt > 0 else None,
               "losses": {k: v / self.solver.iter_size for k, v in parts_sum.items()},
               "time": time.time() - self.t_start}
        self._log(rec)
        if self.pictures is not None:
            self.pictures.train(rec)
        return rec

    def test(self) -> Optional[dict]:
        if self.validator is None:
            return None
        t0 = time.time()
        gallery = validation_gallery(self.pictures, self.world)   # collective under torchrun
        res = self.validator.run(self.net, progress=self.progress and self.interactive,
                                 observe=None if gallery is None else gallery.observe)
        if gallery is not None:
            gallery.gathered(self.world)   # the whole set's worst and best, on rank 0
        self.last_test_iter = self.iter
        rec = {"type": "test", "iter": self.iter, "scores": res, "seconds": time.time() - t0}
        self._log(rec)
        if self.pictures is not None:
            self.pictures.test(rec, self.validator)
        if self.progress and self.interactive:
            msg = ", ".join(f"{b} mean IU {100 * v['mean_iu']:.2f}" for b, v in res.items())
            status(f"iter {self.iter}: test {msg}")
        elif self.log_file is not None:
            # Caffe's test lines (Solver::Test), with the evaluation loop's scores
            print(f"Iteration {self.iter}, Testing net (#0)", file=self.log_file)
            k = 0
            for blob, v in res.items():
                for key in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"):
                    print(f"    Test net output #{k}: {blob} {key} = {v[key]:.6g}", file=self.log_file)
                    k += 1
            self.log_file.flush()
        self.draw()
        return rec

    def log_line(self, rec: dict) -> None:
        """Caffe's display lines (Solver::Step), every ``display`` iterations: the smoothed
        loss, each loss top, the learning rate."""
        it = rec["iter"]
        rate = rec["images_per_s"]
        print(f"Iteration {it}" + (f" ({rate:.3g} images/s)" if rate else "") + f", loss = {rec['smoothed_loss']:.6g}",
              file=self.log_file)
        for k, (top, v) in enumerate(rec["losses"].items()):
            w = self.loss_weights.get(top, 1.0)
            print(f"    Train net output #{k}: {top} = {v:.6g}"
                  + ("" if w == 1.0 else f" (* {w:g} = {w * v:.6g} loss)"), file=self.log_file)
        print(f"Iteration {it}, lr = {rec['lr']:.6g}", file=self.log_file)
        self.log_file.flush()

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step(iters).

        On a terminal a progress bar; otherwise (a log file, a pipe) Caffe's
        ``Iteration N, loss = X`` lines every ``display`` iterations.
        """
        sp = self.solver
        bar = None
        if self.progress and self.interactive:
            bar = progress_bar(total=iters, desc=self.name, unit="it", dynamic_ncols=True)
        try:
            for _ in range(iters):
                if (sp.test_interval and self.iter % sp.test_interval == 0
                        and (self.iter > 0 or sp.test_initialization)):
                    self.test()
                rec = self.step_once()
                if bar is None and self.rank == 0 and sp.display and rec["iter"] % sp.display == 0 \
                        and self.log_file is not None:
                    self.log_line(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['smoothed_loss']:.4g}", lr=f"{rec['lr']:.3g}",
                                    img_s=f"{rec['images_per_s'] or 0:.2f}")
                if not math.isfinite(rec["loss"]):   # before a snapshot could keep NaN weights
                    raise TrainError(f"{self.where}: loss is {rec['loss']} at iteration {rec['iter']}: "
                                     "training diverged (lower base_lr?)")
                if sp.snapshot and self.iter % sp.snapshot == 0:
                    self.snapshot()
                if self.stopping():
                    break
        finally:
            if bar is not None:
                bar.close()

    def stopping(self) -> bool:
        """Whether a stop was asked for (a signal) in any process of the run."""
        stop = self.stop_signal is not None
        if self.world > 1:
            dev = self.opt.params_in_order()[0].device
            t = torch.tensor([1.0 if stop else 0.0], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            stop = bool(t.item() > 0)
            if stop and self.stop_signal is None:
                self.stop_signal = "another process's signal"
        return stop

    def solve(self, iters: Optional[int] = None) -> None:
        """Caffe's Solver::Solve: step to max_iter (or ``iters`` more), final snapshot and test.

        Stopped by a signal: the snapshot of the iteration reached (Caffe's
        SIGINT effect, "stop and snapshot"), no final test. ``final_test``:
        validate at the end even off a test iteration.
        """
        n = (self.solver.max_iter - self.iter) if iters is None else iters
        self.step(max(0, n))
        sp = self.solver
        if (sp.snapshot_after_train or self.stop_signal is not None) and self.last_snapshot_iter != self.iter:
            self.snapshot()
        if self.stop_signal is None and self.validator is not None and (
                (sp.test_interval and self.iter % sp.test_interval == 0)
                or (self.final_test and self.last_test_iter != self.iter)):
            self.test()
        self.draw()
        if self.pictures is not None:
            it = self.last_test_iter if self.last_test_iter >= 0 else None
            w = None if it is None else self.snapshot_paths(it)[self.formats[0]]
            self.pictures.finish(self.validator, weights=w if w is not None and w.is_file() else None,
                                 iteration=it, net=self.name)

    # -- snapshots
    def snapshot_paths(self, it: Optional[int] = None) -> dict[str, Path]:
        it = self.iter if it is None else it
        assert self.out_dir is not None
        base = self.out_dir / f"{self.prefix}_iter_{it}"
        out = {fmt: Path(str(base) + fmt) for fmt in self.formats}
        out["state"] = Path(str(base) + ".solverstate.h5")
        return out

    def weights(self) -> dict[str, list[np.ndarray]]:
        return {name: [p.detach().cpu().numpy().astype(np.float32) for p in blobs]
                for name, blobs in self.net.params.items()}

    def snapshot(self) -> Optional[dict]:
        """Write the weights (Caffe formats) and the solver state; returns the paths."""
        self.last_snapshot_iter = self.iter
        if not self.writer:
            return None
        paths = self.snapshot_paths()
        w = self.weights()
        for fmt in self.formats:
            save_weights(paths[fmt], w)
        learned = paths[self.formats[0]].name
        extra = {"smoothed_losses": np.array(self.smoothed.losses, np.float64),
                 "data_position": np.array([getattr(self.source, "position", 0)], np.int64),
                 "world_size": np.array([self.world], np.int64)}
        self.opt.save_state(paths["state"], learned_net=learned, extra=extra)
        self._log({"type": "snapshot", "iter": self.iter, "files": [str(p.name) for p in paths.values()]})
        for hook in self.on_snapshot:
            hook(self, paths)
        self.draw()
        return paths

    def restore(self, state_path: str | os.PathLike) -> None:
        """Caffe's Solver::Restore: history, iter, lr step; weights from the state's learned_net."""
        state_path = Path(state_path)
        info = self.opt.load_state(state_path)
        learned = info["learned_net"]
        candidates = [Path(learned)] if learned and os.path.isabs(learned) else []
        if learned:
            # Caffe stores the weights' path as its snapshot_prefix made it,
            # relative to where Caffe ran: also look beside the state file.
            candidates += [state_path.parent / learned, Path(learned), state_path.parent / Path(learned).name]
        wpath = next((c for c in candidates if c.is_file()), None)
        if wpath is None:
            raise TrainError(f"{state_path}: the weights it names (learned_net {learned!r}) were not "
                             f"found (looked at {[str(c) for c in candidates]})")
        weights = load_weights(wpath)
        # the one matcher (Caffe's rule); a snapshot must hold every layer of the net
        rep = match_weights(weights, self.net.params, source=str(wpath), target=self.where).check()
        if rep.missing:
            raise TrainError(f"{wpath}: no weights for layer(s) {rep.missing} of the training net {self.where}")
        copy_matched(rep, weights, self.net.params)
        extra = info["extra"]
        if "smoothed_losses" in extra:
            self.smoothed = SmoothedLoss(self.solver.average_loss, extra["smoothed_losses"].tolist())
        if "data_position" in extra and hasattr(self.source, "seek"):
            saved_world = int(extra.get("world_size", np.array([self.world]))[0])
            pos = int(extra["data_position"][0]) * saved_world // self.world
            self.source.seek(pos)
        self.last_snapshot_iter = self.iter
        if self.writer and self.log_path is not None:
            self.records = self._read_log(self.log_path, self.iter)
            text = "".join(json.dumps(r) + "\n" for r in self.records)
            with output_file(self.log_path, len(text.encode()), "w") as f:
                f.write(text)

    def draw(self) -> None:
        """Redraw curve.png (matplotlib; without it, nothing: said once)."""
        if self.pictures is not None:
            self.pictures.curve(self.records, title=f"{self.name}: {self.where}")


def status(msg: str) -> None:
    """A status line on stderr that does not break a progress bar."""
    tqdm.write(msg, file=sys.stderr)


# ------------------------------------------------------------------ setting up a run

def solver_with(solver_path: str | os.PathLike, overrides: dict[str, Any], train_net: Optional[str] = None
                ) -> SolverParameter:
    """The solver file's parameters with ``overrides`` (SolverParameter fields) and, where given,
    another training net; checked: iter_size >= 1 and the training net exists."""
    sp = read_solver(solver_path)
    over = {k: v for k, v in overrides.items() if v is not None}
    if train_net:
        over.update(train_net=os.path.abspath(train_net), net="")
    sp = replace(sp, **over)
    if sp.iter_size < 1:
        raise TrainError(f"iter_size must be >= 1, got {sp.iter_size}")
    if not sp.train_net_path or not os.path.isfile(sp.train_net_path):
        raise TrainError(f"{solver_path}: training net {sp.train_net_path!r} not found")
    return sp


def training_net(train_path: str, seed: int, *, init: Optional[str] = None, weights: Optional[str] = None,
                 device: Any = "cpu", world: int = 1, say: Optional[Callable[[str], None]] = None) -> Net:
    """The TRAIN-phase net, its fillers seeded with ``seed``: then FCN surgery from ``init``,
    or ``weights`` copied by layer name (Caffe's --weights), or fillers only; on ``device``;
    under several processes every process starts from rank 0's parameters."""
    if init is not None and weights is not None:
        raise TrainError("give at most one of --init and --weights")
    torch.manual_seed(seed)
    net = Net(train_path, phase="TRAIN", seed=seed)
    if init:
        rep = surgery(net, net.netparam, init, fill=False)
        if say:
            t = rep["transplant"]
            say(f"surgery from {init}: copied {len(t.copied)} layers, coerced {[c[0] for c in t.coerced]}, "
                f"left to fillers {t.missing}, bilinear {rep['interp']}")
    elif weights:
        net.load_weights(weights, strict=False)
    return place_net(net, device, world)


def place_net(net: Net, device: Any = "cpu", world: int = 1) -> Net:
    """``net`` on ``device``; under several processes every process takes rank 0's parameters."""
    net.to(device)
    if world > 1:
        with torch.no_grad():
            for g in param_groups(net):
                dist.broadcast(g["params"][0].data, 0)
    return net


def summary(trainer: "Trainer", out_dir: Optional[str], save: Optional[str]) -> dict:
    """The end-of-run report: iteration, last train and test records, snapshot files."""
    last = {t: next((r for r in reversed(trainer.records) if r.get("type") == t), None) for t in ("train", "test")}
    return {"iter": trainer.iter, "out": out_dir, "save": save, **last,
            "snapshots": [r["files"] for r in trainer.records if r.get("type") == "snapshot"]}
