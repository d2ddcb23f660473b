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
  a tqdm progress bar with loss and images/s.

``--feed BLOBS.npz`` replaces the dataset by fixed input blobs (keys
``input/<blob>``, as in the Caffe fixtures' ``train.npz``) to replay a Caffe
run step for step: ``--solver S --weights W --feed F --iters N --save OUT``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from fcn_repro import cli, registry
from fcn_repro.caffe.fillers import bilinear_weight, fill_params
from fcn_repro.caffe.prototxt import Message, parse_prototxt
from fcn_repro.solver import (
    CaffeSGD, SmoothedLoss, SolverParameter, param_groups, read_solver, sync_gradients,
)
from fcn_repro.data.layers import DataLayer, find_data_layer
from fcn_repro.evaluation import Validator
from fcn_repro.utils import atomic_write

__all__ = [
    "surgery", "interp_layers", "apply_interp", "loss_weights", "objective", "FeedSource",
    "DatasetSource", "draw_order", "sample_arrays", "Trainer", "Validator", "draw_curve", "main", "RECIPES",
    "TrainError", "default_solver",
]


class TrainError(ValueError):
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
    from fcn_repro.caffe.net import transplant
    netparam = netparam if netparam is not None else net.netparam
    filled = fill_params(net.params, netparam, rng=seed) if fill else []
    report = transplant(net, init) if init is not None else None
    layers = interp_layers(net, netparam) if interp is None else list(interp)
    apply_interp(net, layers)
    return {"filled": filled, "transplant": report, "interp": layers}


# ---------------------------------------------------------------- objective

def loss_weights(net: Any, netparam: Message) -> dict[str, float]:
    """Top blob -> Caffe loss weight, for the layers of ``net`` (its phase).

    Caffe's rule: ``loss_weight`` per top when given; otherwise a layer whose
    type ends in "Loss" weighs its first top by 1 (LossLayer::LayerSetUp);
    every other top weighs 0.
    """
    names = set(getattr(net, "layer_names", None) or _layer_msgs(netparam))
    out: dict[str, float] = {}
    for layer in netparam.getall("layer"):
        name = str(layer.get("name", ""))
        if name not in names:
            continue
        tops = [str(t) for t in layer.getall("top")]
        lw = [float(x) for x in layer.getall("loss_weight")]
        if not lw and str(layer.get("type", "")).endswith("Loss"):
            lw = [1.0]
        for top, w in zip(tops, lw):
            if w != 0:
                out[top] = out.get(top, 0.0) + w
    return out


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


# --------------------------------------------------------------- data sources

class FeedSource:
    """Fixed input blobs from an ``.npz`` (keys ``input/<blob>``), the same every pass.

    ``blobs`` are the net's input blob names; each must be in the file.
    """

    def __init__(self, path: str | os.PathLike, blobs: Sequence[str], device: Any = "cpu"):
        self.path = os.fspath(path)
        with np.load(self.path, allow_pickle=False) as z:
            have = {k[len("input/"):]: z[k] for k in z.files if k.startswith("input/")}
        missing = [b for b in blobs if b not in have]
        if missing:
            raise TrainError(f"{self.path}: no 'input/<blob>' array for the net input(s) {missing}; "
                             f"the file has inputs {sorted(have)}")
        self.inputs = {b: torch.from_numpy(np.ascontiguousarray(have[b], dtype=np.float32)).to(device)
                       for b in blobs}
        self.images_per_pass = int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 1
        self.position = 0

    def next(self) -> dict[str, torch.Tensor]:
        self.position += 1
        return self.inputs

    def seek(self, position: int) -> None:
        self.position = position


def draw_order(n: int, seed: int = 1337, order: str = "random") -> Iterator[int]:
    """The endless sequence of dataset indices the training data layer reads.

    ``random``: FCN's Python data layers seeded Python's ``random`` with 1337
    and drew ``randint(0, n - 1)`` before each image (uniform, with
    replacement); this is that sequence. ``sequential``: 0, 1, ..., n-1, 0, ...
    """
    if n <= 0:
        raise TrainError("the training set is empty")
    if order == "sequential":
        i = 0
        while True:
            yield i % n
            i += 1
    elif order == "random":
        rng = random.Random(seed)
        while True:
            yield rng.randint(0, n - 1)
    else:
        raise TrainError(f"unknown data order {order!r} (expected random or sequential)")


def sample_arrays(sample: Any, input_map: dict[str, Sequence[str]], where: str = "dataset"
                  ) -> dict[str, np.ndarray]:
    """Net input blobs (1, C, H, W) float32 from a ``fcn_repro.data`` Sample.

    ``input_map``: net input blob -> sample key(s); a key is looked up in
    ``sample.inputs`` then ``sample.labels``; several keys are concatenated
    along channels (early fusion). Labels become float (1, 1, H, W) blobs, as
    Caffe's label blobs are.
    """
    out = {}
    for blob, keys in input_map.items():
        parts = []
        for k in keys:
            if k in sample.inputs:
                a = np.asarray(sample.inputs[k], np.float32)
            elif k in sample.labels:
                a = np.asarray(sample.labels[k]).astype(np.float32)
            else:
                raise TrainError(f"{where} item {sample.id!r} has no input or label {k!r} for net input "
                                 f"blob {blob!r} (it has inputs {sorted(sample.inputs)}, labels "
                                 f"{sorted(sample.labels)})")
            parts.append(a.reshape((-1,) + a.shape[-2:]))
        out[blob] = np.ascontiguousarray(np.concatenate(parts, 0)[None])
    return out


class DatasetSource:
    """Training inputs from a ``fcn_repro.data`` reader, one image per pass.

    The global draw sequence (:func:`draw_order`) is shared by all processes:
    pass ``k`` of process ``rank`` (of ``world``) reads draw ``k * world + rank``,
    so at iteration t with iter_size s the N processes together read draws
    ``t*s*N ... (t+1)*s*N - 1``, exactly the draws one process with
    iter_size s*N reads. ``position`` counts this process's passes (saved in
    the solver state, so a resumed run continues the same order). The next
    image is decoded in a background thread while the net runs.
    ``input_map``: see :func:`sample_arrays`.
    """

    def __init__(self, dataset: Any, input_map: dict[str, Sequence[str]], *, seed: int = 1337,
                 order: str = "random", rank: int = 0, world: int = 1, device: Any = "cpu",
                 prefetch: bool = True):
        self.dataset = dataset
        self.input_map = {k: tuple(v) for k, v in input_map.items()}
        self.seed, self.order, self.rank, self.world = seed, order, rank, world
        self.device = device
        self.images_per_pass = 1
        self.last_id = None
        self._pool = None
        if prefetch:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fcn-train-data")
        self._pending: Any = None
        self.seek(0)

    def _next_index(self) -> int:
        # This process's draw; the other processes' draws are skipped.
        idx = -1
        for r in range(self.world):
            d = next(self._draws)
            if r == self.rank:
                idx = d
        return idx

    def seek(self, position: int) -> None:
        """Continue as if ``position`` passes had been read (replays the draw sequence)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._draws = draw_order(len(self.dataset), self.seed, self.order)
        for _ in range(position):
            self._next_index()
        self.position = position

    def _load(self, idx: int) -> tuple[str, dict[str, np.ndarray]]:
        s = self.dataset.load(idx)
        return s.id, sample_arrays(s, self.input_map, type(self.dataset).__name__)

    def next(self) -> dict[str, torch.Tensor]:
        if self._pending is not None:
            sid, arrays = self._pending.result()
        else:
            sid, arrays = self._load(self._next_index())
        self.position += 1
        self._pending = self._pool.submit(self._load, self._next_index()) if self._pool else None
        self.last_id = sid
        return {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------- the curve

def draw_curve(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """A learning-curve PNG (PIL only): smoothed training loss and test mean IU vs iteration."""
    from PIL import Image, ImageDraw

    train = [(r["iter"], r.get("smoothed_loss", r.get("loss"))) for r in records
             if r.get("type") == "train" and r.get("loss") is not None]
    tests = [(r["iter"], v["mean_iu"]) for r in records if r.get("type") == "test"
             for v in list(r.get("scores", {}).values())[:1] if v.get("mean_iu") is not None]
    W, H, M = 900, 620, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((M, 12), title or "learning curve", fill="black")
    panels = [("smoothed training loss", train, (31, 119, 180)), ("test mean IU", tests, (214, 39, 40))]
    ph = (H - 2 * M) // 2
    for k, (label, pts, color) in enumerate(panels):
        top = M // 2 + 20 + k * (ph + M // 2 + 10)
        box = (M, top, W - 30, top + ph)
        d.rectangle(box, outline="black")
        d.text((M, top - 14), label, fill=color)
        pts = [(float(x), float(y)) for x, y in pts if y is not None and math.isfinite(float(y))]
        if not pts:
            d.text((M + 10, top + ph // 2), "(no data yet)", fill="gray")
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)

        def px(x: float, y: float) -> tuple[float, float]:
            return (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
                    box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))
        for j in range(5):  # ticks
            yv = y0 + (y1 - y0) * j / 4
            _, yy = px(x0, yv)
            d.line((box[0] - 4, yy, box[0], yy), fill="black")
            d.text((4, yy - 6), f"{yv:.4g}", fill="black")
            xv = x0 + (x1 - x0) * j / 4
            xx, _ = px(xv, y0)
            d.line((xx, box[3], xx, box[3] + 4), fill="black")
            d.text((xx - 12, box[3] + 6), f"{xv:.0f}", fill="black")
        if len(pts) > 2000:  # thin very long curves: every pixel column needs one point at most
            step = len(pts) / 2000.0
            pts = [pts[int(i * step)] for i in range(2000)] + [pts[-1]]
        line = [px(x, y) for x, y in pts]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for xx, yy in (line if len(line) <= 50 else line[-1:]):
            d.ellipse((xx - 3, yy - 3, xx + 3, yy + 3), fill=color)
    d.text((W // 2 - 20, H - 18), "iteration", fill="black")
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG")


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
        self.loss_weights = loss_weights(net, netparam)
        self.smoothed = SmoothedLoss(solver.average_loss)
        self.records: list[dict] = []
        self.where = os.path.basename(str(getattr(net, "filename", "") or solver.train_net_path or "net"))
        prefix = os.path.basename(solver.snapshot_prefix) if solver.snapshot_prefix else self.name
        self.prefix = prefix
        self.last_snapshot_iter = -1
        self.t_start = time.time()
        #: where the display lines go when there is no progress bar (None: nowhere)
        self.log_file = sys.stdout if rank == 0 else None
        #: progress bar only on a terminal; a log gets Caffe's display lines instead
        self.interactive = sys.stdout.isatty() and sys.stderr.isatty()

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
        rec = cli.jsonable(rec)
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
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(r.get("iter", 0)) <= upto_iter:
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
            import torch.distributed as dist
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
        return rec

    def test(self) -> Optional[dict]:
        if self.validator is None:
            return None
        t0 = time.time()
        res = self.validator.run(self.net, progress=self.progress)
        rec = {"type": "test", "iter": self.iter, "scores": res, "seconds": time.time() - t0}
        self._log(rec)
        if self.progress:
            msg = ", ".join(f"{b} mean IU {100 * v['mean_iu']:.2f}" for b, v in res.items())
            _print(f"iter {self.iter}: test {msg}")
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
            from tqdm import tqdm
            bar = tqdm(total=iters, desc=self.name, unit="it", dynamic_ncols=True)
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
                if sp.snapshot and self.iter % sp.snapshot == 0:
                    self.snapshot()
                if not math.isfinite(rec["loss"]):
                    raise TrainError(f"{self.where}: loss is {rec['loss']} at iteration {rec['iter']}: "
                                     "training diverged (lower base_lr?)")
        finally:
            if bar is not None:
                bar.close()

    def solve(self, iters: Optional[int] = None) -> None:
        """Caffe's Solver::Solve: step to max_iter (or ``iters`` more), final snapshot and test."""
        n = (self.solver.max_iter - self.iter) if iters is None else iters
        self.step(max(0, n))
        sp = self.solver
        if sp.snapshot_after_train and self.last_snapshot_iter != self.iter:
            self.snapshot()
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test()
        self.draw()

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
        from fcn_repro.caffe import save_weights
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
        self.draw()
        return paths

    def restore(self, state_path: str | os.PathLike) -> None:
        """Caffe's Solver::Restore: history, iter, lr step; weights from the state's learned_net."""
        from fcn_repro.caffe import load_weights
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
        with torch.no_grad():
            for name, blobs in self.net.params.items():
                if name not in weights:
                    raise TrainError(f"{wpath}: no weights for layer {name!r} of the training net")
                for i, p in enumerate(blobs):
                    a = weights[name][i]
                    if a.size != p.numel():
                        raise TrainError(f"{wpath}: layer {name!r} blob {i} has shape {a.shape}, "
                                         f"the net expects {tuple(p.shape)}")
                    p.copy_(torch.from_numpy(np.ascontiguousarray(a).reshape(p.shape)).to(p))
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
            with atomic_write(self.log_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def draw(self) -> None:
        if self.writer:
            draw_curve(self.records, self.out_dir / "curve.png", title=f"{self.name}: {self.where}")


def _print(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)


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
    from fcn_repro import zoo
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
    from fcn_repro.data import make_dataset
    if kind is None:
        p = Path(root)
        kind = "sbd" if (p / "img").is_dir() and (p / "cls").is_dir() else "voc"
    return make_dataset(kind, root, split)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.train",
        description="Train an FCN with Caffe's solver semantics (see the module docstring). "
                    "Run under torchrun for data-parallel training.")
    cli.add_common(ap, None)
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
    from fcn_repro.caffe.net import Net
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
            _print(f"surgery from {args.init}: copied {len(t.copied)} layers, coerced "
                   f"{[c[0] for c in t.coerced]}, left to fillers {t.missing}, bilinear {rep['interp']}")
    elif args.weights:
        net.load_weights(args.weights, strict=False)
    elif show and not args.resume:
        _print("no --init/--weights/--resume: every layer starts from its prototxt filler")
    net.to(device)
    if world > 1:
        import torch.distributed as dist
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
            _print(f"training data: {type(ds).__name__} {split!r} ({len(ds)} images), "
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
            _print("no --val-data: periodic validation is off")
        sp = replace(sp, test_interval=0)

    formats = {"both": (".caffemodel", ".caffemodel.h5"), "caffemodel": (".caffemodel",),
               "h5": (".caffemodel.h5",)}[args.snapshot_format]
    trainer = Trainer(net, netparam, sp, source, out_dir=out_dir, validator=validator, rank=rank,
                      world=world, progress=not args.no_progress, name=name, seed=seed, formats=formats)
    if out_dir is not None and rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        if not args.resume and trainer.log_path.exists():
            trainer.log_path.unlink()  # a fresh run starts a fresh log
    if args.resume:
        trainer.restore(args.resume)
    try:
        trainer.solve(args.iters)
        if args.save and rank == 0:
            from fcn_repro.caffe import save_weights
            save_weights(args.save, trainer.weights())
    finally:
        if hasattr(source, "close"):
            source.close()
        if world > 1:
            import torch.distributed as dist
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
