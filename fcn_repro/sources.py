"""What a training net is fed: fixed blobs (replaying a Caffe run) or a dataset drawn as FCN drew it;
and what its validation reads.

* :class:`FeedSource`: fixed input blobs from an ``.npz`` (keys ``input/<blob>``).
* :class:`DatasetSource`: images of a ``fcn_repro.data`` reader drawn as FCN's
  Python data layer drew them (:func:`draw_order`: uniformly with
  replacement, Python's ``random`` seeded with 1337, or in order), shared by
  the processes of a distributed run, decoded ahead in a thread.
* :func:`training_source` / :func:`validator_for`: choose them for a run
  (reader, split, seed from the training net's data layer, the card's input
  mapping).
"""
from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from fcn_repro.caffe.prototxt import parse_prototxt
from fcn_repro.data import make_dataset
from fcn_repro.data.layers import DataLayer, find_data_layer
from fcn_repro.evaluation import Validator
from fcn_repro.npz import npz_members, read_npz
from fcn_repro.solver import SolverParameter
from fcn_repro.trainer import TrainError

__all__ = ["FeedSource", "DatasetSource", "draw_order", "sample_arrays", "open_training_set", "input_map",
           "training_source", "default_val_net", "validator_for"]


class FeedSource:
    """Fixed input blobs from an ``.npz`` (keys ``input/<blob>``), the same every pass.

    ``blobs`` are the net's input blob names; each must be in the file.
    """

    def __init__(self, path: str | os.PathLike, blobs: Sequence[str], device: Any = "cpu"):
        self.path = os.fspath(path)
        # headers checked before anything is read (fcn_repro.npz): a hostile file is refused, naming it
        keys = [k for k in npz_members(self.path) if k.startswith("input/")]
        have = {k[len("input/"):]: a for k, a in read_npz(self.path, keys).items()}
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


# ------------------------------------------------------------------ choosing what a run is fed

def open_training_set(kind: Optional[str], root: str, split: str) -> Any:
    """A ``fcn_repro.data`` reader; ``kind`` None: sbd when ``root`` has img/ and cls/, else voc."""
    if kind is None:
        p = Path(root)
        kind = "sbd" if (p / "img").is_dir() and (p / "cls").is_dir() else "voc"
    return make_dataset(kind, root, split)


def input_map(inputs: Sequence[str], card: Any, data_layer: Optional[DataLayer] = None
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


def training_source(net: Any, train_path: str, card: Any = None, *, feed: Optional[str] = None,
                    data: Optional[str] = None, dataset: Optional[str] = None, split: Optional[str] = None,
                    seed: Optional[int] = None, order: str = "random", rank: int = 0, world: int = 1,
                    device: Any = "cpu", say: Optional[Callable[[str], None]] = None) -> Any:
    """What the training net is fed: ``feed`` (fixed blobs, :class:`FeedSource`) or the
    training set ``data`` (:class:`DatasetSource`); reader, split and seed default to the
    training net's Python data layer's (else sbd/voc by layout, 'train', 1337)."""
    if feed:
        return FeedSource(feed, list(net.inputs), device)
    if data is None:
        raise TrainError("give --data DIR (a training set) or --feed BLOBS.npz")
    layer = find_data_layer(net.netparam, net.inputs, train_path)
    kind = dataset or (layer.dataset if layer else None)
    split = split or (layer.split if layer else None) or "train"
    ds = open_training_set(kind, data, split)
    data_seed = seed if seed is not None else (layer.seed if layer and layer.seed is not None else 1337)
    source = DatasetSource(ds, input_map(net.inputs, card, layer), seed=data_seed, order=order, rank=rank,
                           world=world, device=device)
    if say:
        say(f"training data: {type(ds).__name__} {split!r} ({len(ds)} images), {order} order, seed {data_seed}")
    return source


def default_val_net(train_path: str, sp: SolverParameter) -> str:
    """deploy.prototxt or val.prototxt beside the training net, else the solver's test_net."""
    d = Path(train_path).parent
    for c in (d / "deploy.prototxt", d / "val.prototxt"):
        if c.is_file():
            return str(c)
    if sp.test_net:
        return sp.test_net[0]
    raise TrainError(f"no validation net: no deploy.prototxt or val.prototxt beside {train_path}, "
                     "no test_net in the solver; pass --val-net")


def validator_for(net: Any, train_path: str, sp: SolverParameter, card: Any, val_data: str, *,
                  val_net: Optional[str] = None, dataset: Optional[str] = None, split: Optional[str] = None,
                  limit: Optional[int] = None, device: Any = "cpu", rank: int = 0, world: int = 1) -> Validator:
    """The validation of a training run on ``val_data``: the TEST net (``val_net`` or
    :func:`default_val_net`), reader and split from val.prototxt's data layer where there is
    one (else sbd/voc by layout, seg11valid), score/label pairs from the card (else FCN's
    naming), ``limit`` images (default: the solver's test_iter, else all)."""
    val_path = val_net or default_val_net(train_path, sp)
    val_layer = None
    vp = Path(train_path).parent / "val.prototxt"
    if vp.is_file():
        val_layer = find_data_layer(parse_prototxt(vp), net.inputs, str(vp))
    vds = open_training_set(dataset or (val_layer.dataset if val_layer else None), val_data,
                            split or (val_layer.split if val_layer else None) or "seg11valid")
    heads = card.pairing if card else None
    if heads is None:
        # FCN's naming: the label blob 'label' is scored by 'score'; SIFT Flow's 'sem' / 'geo'
        # by 'score_sem' / 'score_geo'.
        heads = {("score" if lab == "label" else f"score_{lab}"): lab
                 for lab in net.inputs if lab in ("label", "sem", "geo")} or {"score": "label"}
    if limit is None and sp.test_iter:
        limit = sp.test_iter[0]
    train_layer = find_data_layer(net.netparam, net.inputs, train_path)
    return Validator(val_path, vds, input_map(net.inputs, card, train_layer), heads, limit=limit, device=device,
                     rank=rank, world=world)
