"""The evaluation loop: one for ``evaluate``, training validation and the benchmarks.

:func:`evaluate_set` is the library form of ``python -m fcn_repro.evaluate``:
a registry net (or a deploy prototxt) and its weights on a dataset, giving
the report the CLI prints (:mod:`fcn_repro.evaluate`).

:func:`run` forwards every image of a dataset (or of this process's shard),
accumulates one confusion matrix per score blob (:mod:`fcn_repro.metrics`),
and :func:`merge` sums them over processes. :func:`head_scores` applies the
dataset's protocol from its registry card: SIFT Flow scores only the classes
present in the evaluated set. Labels outside the classes (other than 255,
the ignore label) are skipped by the metrics, and the loop warns once.

:class:`Validator` is training's periodic validation on the same loop: a
TEST-phase net sharing the training weights, so that the scores it logs are
exactly what ``python -m fcn_repro.evaluate`` prints for those weights.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from fcn_repro import hub, labels, registry
from fcn_repro.caffe import Net
from fcn_repro.caffe.net import copy_matched
from fcn_repro.caffe.match import match_weights
from fcn_repro.caffe.prototxt import parse_prototxt
from fcn_repro.data import READERS, DataMissingError, SampleLoader, SegDataset, make_dataset, shard_indices
from fcn_repro.data.folder import is_folder, is_voc_layout
from fcn_repro.data.transforms import save_label_png
from fcn_repro.errors import FcnReproError
from fcn_repro.fast import optimize
from fcn_repro.labels import LabelSet
from fcn_repro.metrics import ConfusionMatrix, absent_classes, all_reduce_hist, fast_hist, fast_hist_torch, scores
from fcn_repro.npz import read_npz
from fcn_repro.devices import process_group
from fcn_repro.outputs import check_not_input, child, protect_inputs
from fcn_repro.registry import resource_path
from fcn_repro.resolve import MissingError, Model, resolve
from fcn_repro.progress import bar as progress_bar

__all__ = ["net_inputs", "score_heads", "run", "merge", "sum_scalar", "head_scores", "Validator",
           "LabelRangeWarning", "MismatchError", "SCORE_KEYS", "SCORE_LABELS", "reference_comparison", "WeightsIncompleteError",
           "load_net", "load_checked", "build", "open_dataset", "evaluate_set", "head_result"]

SCORE_KEYS = ("overall_acc", "mean_acc", "mean_iu", "fwavacc")


class MismatchError(FcnReproError):
    """A net and its data that do not fit each other (inputs, outputs, labels, sizes, class counts)."""


class LabelRangeWarning(UserWarning):
    """Ground truth holds values outside the net's classes that are not the ignore label."""


# ---------------------------------------------------------------- feeding and pairing

def net_inputs(net_input_names: Sequence[str], sample, card=None,
               input_map: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, np.ndarray]:
    """Map a sample's inputs onto the net's input blobs: blob -> (C, H, W) float32.

    ``input_map`` (blob -> sample inputs concatenated along channels) when
    given; else a blob named like a sample input takes it; else the registry
    card's mapping (NYUDv2 early fusion: 'color' + 'depth' -> 'data'); else a
    net with one input takes the sample's only input.
    """
    out = {}
    rules = dict(input_map) if input_map is not None else (card.input_map if card is not None else {})
    for b in net_input_names:
        keys = rules.get(b)
        if input_map is None and b in sample.inputs:
            out[b] = sample.inputs[b]
        elif keys and all(t in sample.inputs for t in keys):
            parts = [sample.inputs[t] for t in keys]
            out[b] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        elif len(net_input_names) == 1 and len(sample.inputs) == 1:
            out[b] = next(iter(sample.inputs.values()))
        else:
            raise MismatchError(f"net input blob {b!r}: the dataset provides {sorted(sample.inputs)}; "
                             "no rule says which feeds it")
    return out


def score_heads(net_outputs: Sequence[str], label_names: Sequence[str], card=None) -> Dict[str, str]:
    """Pair the net's score blobs with the dataset's label heads: blob -> label.

    A registry card's pairing when given; else one output with one label;
    else FCN's naming (``score_<label>``, ``<label>``, ``score``).
    """
    if card is not None and card.heads:
        missing = [b for b in card.pairing if b not in net_outputs]
        if missing:
            raise MismatchError(f"{card.name}: expected output blob(s) {missing}; the net outputs {list(net_outputs)}")
        return dict(card.pairing)
    outs = list(net_outputs)
    if len(outs) == 1 and len(label_names) == 1:
        return {outs[0]: label_names[0]}
    pairs: Dict[str, str] = {}
    for lab in label_names:
        for cand in (f"score_{lab}", lab, "score"):
            if cand in outs and cand not in pairs:
                pairs[cand] = lab
                break
    if not pairs:
        raise MismatchError(f"cannot pair the net's outputs {outs} with the dataset's labels {list(label_names)} "
                         "(name a score blob score_<label>)")
    return pairs


# ---------------------------------------------------------------- the loop

def run(net, dataset: SegDataset, heads: Dict[str, str], *, card=None, device: str = "cpu",
        indices: Optional[Sequence[int]] = None, workers: int = 2, save_predictions: Optional[str] = None,
        keep_predictions: bool = False, progress: bool = True, desc: str = "evaluate",
        input_map: Optional[Dict[str, Sequence[str]]] = None,
        on_image: Optional[Callable[[], None]] = None,
        observe: Optional[Callable[..., None]] = None, labelsets: Optional[Dict[str, LabelSet]] = None) -> dict:
    """Forward every image, accumulate a confusion matrix per score blob.

    net: a built net (``forward(**inputs) -> {blob: (1, C, H, W)}``).
    heads: score blob -> label head of the dataset's samples.
    Returns {'hists': {blob: (C, C) int64 ndarray}, 'images': int,
    'seconds': float, 'ids': [...], 'predictions': {id: {blob: (H, W) uint8}}
    (when keep_predictions)}. Predictions are the argmax over channels (the
    first maximum wins, as numpy's argmax in FCN's score.py).
    observe: called per image and head as ``observe(sample_id, blob, image, label, pred, hist)``
    (``image`` the reader's RGB or None, ``hist`` that image's (C, C) matrix; e.g.
    :meth:`fcn_repro.report.Gallery.observe`). labelsets: blob -> the colours of its saved
    prediction PNGs (default: the VOC map).
    """
    dev = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    hists: Dict[str, Any] = {}
    preds_kept: Dict[str, Dict[str, np.ndarray]] = {}
    ids: List[str] = []
    input_names = list(net.inputs)
    writer = ThreadPoolExecutor(1, thread_name_prefix="fcn-save") if save_predictions else None
    pending = []
    warned = False
    bar = None
    if progress:
        bar = progress_bar(total=len(indices), desc=desc, unit="img", dynamic_ncols=True)
    t0 = time.perf_counter()
    # the dataset's own files (images, ground truth) are never replaced by a prediction
    guard = protect_inputs(p for i in indices for p in dataset.files(i)) if writer is not None else nullcontext()
    with ExitStack() as stack:   # left in reverse order: the guard last
        # the guard holds until every queued write has run: each one is checked against the inputs
        stack.enter_context(guard)
        if writer is not None:   # after an error the queued writes are dropped
            stack.callback(writer.shutdown, wait=True, cancel_futures=True)
        if bar is not None:
            stack.callback(bar.close)
        stack.enter_context(torch.inference_mode())
        for sample in SampleLoader(dataset, indices, workers=workers):
            feed = {b: torch.from_numpy(a).unsqueeze(0).to(dev, non_blocking=True)
                    for b, a in net_inputs(input_names, sample, card, input_map).items()}
            out = net.forward(**feed)
            ids.append(sample.id)
            for blob, lab_name in heads.items():
                if blob not in out:
                    raise MismatchError(f"the net produced no blob {blob!r} (outputs: {sorted(out)})")
                if lab_name not in sample.labels:
                    raise MismatchError(f"{sample.id}: no label {lab_name!r} for score blob {blob!r} "
                                     f"(labels: {sorted(sample.labels)})")
                score = out[blob]
                label = sample.labels[lab_name]
                if tuple(score.shape[2:]) != label.shape:
                    raise MismatchError(f"{sample.id}: score blob {blob!r} is {tuple(score.shape[2:])}, "
                                     f"label {lab_name!r} is {label.shape}")
                n = int(score.shape[1])
                pred = score[0].argmax(0)
                lab_t = torch.from_numpy(label).to(dev, non_blocking=True)
                if not warned:
                    warned = _warn_out_of_range(label, n, sample.id, lab_name, dataset)
                h = fast_hist_torch(lab_t, pred, n, check=False)
                if observe is not None:
                    observe(sample.id, blob, sample.image, label, pred.to(torch.uint8).cpu().numpy(),
                            h.cpu().numpy().copy())
                if blob in hists:
                    if hists[blob].shape[0] != n:
                        raise MismatchError(f"score blob {blob!r} changed from {hists[blob].shape[0]} "
                                            f"to {n} channels")
                    hists[blob] += h
                else:
                    hists[blob] = h
                if keep_predictions or writer is not None:
                    p8 = pred.to(torch.uint8).cpu().numpy()
                    if keep_predictions:
                        preds_kept.setdefault(sample.id, {})[blob] = p8
                    if writer is not None:
                        d = Path(save_predictions) if len(heads) == 1 else Path(save_predictions) / blob
                        pending.append(writer.submit(save_label_png, child(d, f"{sample.id}.png"), p8,
                                                     (labelsets or {}).get(blob)))
                        _raise_done(pending)   # a refused write stops the run at once
            if bar is not None:
                bar.update(1)
            if on_image is not None:
                on_image()
        for f in pending:
            f.result()
    seconds = time.perf_counter() - t0
    return {"hists": {b: h.cpu().numpy() for b, h in hists.items()}, "images": len(ids), "seconds": seconds,
            "ids": ids, "predictions": preds_kept if keep_predictions else None}


def _raise_done(pending: list) -> None:
    """Raise the error of a finished write (and forget the finished ones)."""
    done = [f for f in pending if f.done()]
    for f in done:
        pending.remove(f)
        f.result()


def _split_file(dataset) -> Optional[str]:
    """The list file the split came from (None: the reader made the split, e.g. a folder without val.txt)."""
    f = getattr(dataset, "split_file", None)
    return None if f is None else os.fspath(f)


def _warn_out_of_range(label: np.ndarray, n: int, sid: str, lab_name: str, dataset) -> bool:
    """Warn (once per run) about label values in [n, 255) or above 255: not scored, not ignore."""
    bad = (label >= n) & (label != registry.IGNORE_LABEL)
    if not bad.any():
        return False
    vals = np.unique(label[bad])[:8].tolist()
    where = getattr(dataset, "split_file", None) or type(dataset).__name__
    warnings.warn(f"{where}: image {sid!r} label {lab_name!r} holds values {vals} outside the {n} classes "
                  f"(and not {registry.IGNORE_LABEL}, the ignore label); such pixels are not scored "
                  "(warned once per run)", LabelRangeWarning, stacklevel=3)
    return True


# ---------------------------------------------------------------- processes

def merge(hists: Dict[str, np.ndarray], blobs: Sequence[str], world: int) -> Dict[str, np.ndarray]:
    """Sum per-process matrices. A process that saw no image has none: the
    class counts are agreed first (MAX), then the matrices summed."""
    if world <= 1:
        return hists
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    sizes = torch.tensor([hists[b].shape[0] if b in hists else 0 for b in blobs], dtype=torch.int64, device=dev)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    out = {}
    for b, n in zip(blobs, sizes.tolist()):
        h = hists.get(b, np.zeros((n, n), dtype=np.int64))
        out[b] = all_reduce_hist(h)
    return out


def sum_scalar(v: float, world: int, op: str = "sum") -> float:
    """``v`` summed (or its MAX) over processes."""
    if world <= 1:
        return v
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([v], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


# ---------------------------------------------------------------- the protocol

def head_scores(hist: np.ndarray, dataset: SegDataset) -> dict:
    """Scores of one head's whole-set matrix under the dataset's protocol.

    SIFT Flow (``exclude_absent`` on its card): the classes with no ground
    truth in the evaluated set are left out of the mean IU. Returns
    :func:`fcn_repro.metrics.scores`' dict plus ``excluded_classes``.
    """
    exclude = absent_classes(hist) if getattr(dataset, "exclude_absent", False) else None
    cm = ConfusionMatrix(hist.shape[0])
    cm.merge(hist)
    sc = cm.scores(exclude=exclude)
    sc["excluded_classes"] = exclude
    return sc


#: the four scores, in print order, with their short names
SCORE_LABELS = (("overall_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iu", "mean IU"),
                ("fwavacc", "f.w. IU"))


def reference_comparison(head: dict, split: str, limit: Optional[int]) -> Optional[dict]:
    """One head of :func:`evaluate_set`'s report against its card's published scores.

    None without a reference; else {'source', 'split', 'decimals', 'rows': [{'key', 'label', 'ours',
    'reference', 'difference'} in points], 'comparable', 'tolerance', 'verdict': 'MATCH' |
    'DIFFERENT' | None (not comparable), 'note'}. MATCH: every published score within
    max(0.005, half a unit of its last published decimal) points.
    """
    ref = head.get("reference")
    if ref is None:
        return None
    dec = ref["decimals"]
    rows = []
    for key, label in SCORE_LABELS:
        r = ref["scores"].get(key)
        if r is not None:
            ours, theirs = 100 * head[key], 100 * r
            rows.append({"key": key, "label": label, "ours": ours, "reference": theirs, "difference": ours - theirs})
    tol = max(0.005, 0.5 * 10 ** -dec)
    out = {"source": ref["source"], "split": ref["split"], "decimals": dec, "rows": rows,
           "comparable": bool(ref["comparable"]), "tolerance": tol, "verdict": None, "note": ""}
    if ref["comparable"]:
        out["verdict"] = "MATCH" if all(abs(r["difference"]) <= tol for r in rows) else "DIFFERENT"
    else:
        out["note"] = (f"evaluated {split!r}" + (f", first {limit} images" if limit else "")
                       + f"; the reference is on the whole of {ref['split']!r}")
    return out


def head_result(hist: np.ndarray, dataset: SegDataset, labelset: LabelSet, label: str) -> dict:
    """One score head's part of a report: its label, class ``classes`` and ``palette`` (the
    LabelSet's), the matrix ``hist``, the dataset protocol's scores (:func:`head_scores`:
    the four, per-class ``iu`` and ``acc``, ``pixels``) and ``excluded_classes``."""
    sc = head_scores(hist, dataset)
    return {"label": label, "classes": list(labelset.names), "palette": labelset.colours(), "hist": hist,
            "excluded_classes": sc["excluded_classes"],
            **{k: sc[k] for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc", "iu", "acc", "pixels")}}


# ---------------------------------------------------------------- a net on a dataset

def load_net(prototxt: os.PathLike, weights: os.PathLike, device: str = "cpu", fast: bool = False):
    """Build the net from the prototxt, load the caffemodel directly, move to ``device``.

    fast: wrap it in :func:`fcn_repro.fast.optimize` (the same arithmetic on
    less work: the input-independent padding region is computed once;
    scores agree with the plain forward to float rounding).
    """
    net = Net(str(prototxt), weights=str(weights), phase="TEST")
    rep = getattr(net, "weights_report", None)
    if rep is not None and rep.missing:
        # Layers left at their fillers would score garbage: refuse, naming them.
        raise WeightsIncompleteError(
            f"{weights} has no weights for the layer(s) {rep.missing} of {prototxt}: "
            "these are not this net's weights")
    net.eval()
    net = net.to(torch.device(device))
    if fast:
        net = optimize(net)
    return net


def load_checked(prototxt: os.PathLike, weights: os.PathLike, device: str = "cpu", fast: bool = False,
                 verify: bool = True, progress: bool = True):
    """(net, weights check) with the weights file read once.

    verify: the file is checked against its published facts and the
    manifest's record first (:func:`fcn_repro.hub.check_file`: a mismatch is
    an error before any parsing), then :func:`load_net` parses it completely
    into the net, and only then is a first-seen file's sha256 recorded
    (:func:`fcn_repro.hub.record`). The check is None without ``verify``.
    """
    check = hub.check_file(weights, progress=progress) if verify else None
    net = load_net(prototxt, weights, device, fast=fast)
    if check is not None and check.status == "pending":
        hub.record(check)   # it parsed completely and fit every layer of the net
    return net, None if check is None else check.as_dict()


def build(model: Model, device: str = "cpu", fast: bool = False, verify: bool = True, progress: bool = True):
    """(net, weights check) of a resolved :class:`fcn_repro.resolve.Model`: its deploy net with its
    weights (:class:`fcn_repro.resolve.WeightsNotFoundError` when they are missing), checked as
    :func:`load_checked` checks them when the weights are a registry or a given file."""
    return load_checked(model.deploy, model.require_weights(), device, fast=fast,
                        verify=verify and model.verify, progress=progress)


class WeightsIncompleteError(FcnReproError):
    """The weights file lacks layers of the net (exit status 1)."""


def prototxt_inputs(prototxt: os.PathLike) -> List[str]:
    """Input blob names of a deploy prototxt (Input layers, legacy inputs), without building it."""
    netp = parse_prototxt(str(prototxt))
    out: List[str] = []
    for lp in netp.getall("layer"):
        if str(lp.get("type", "")) == "Input":
            out += [str(t) for t in lp.getall("top")]
    return out


_DATA_HELP = {
    "voc": "a PASCAL VOC year directory, e.g. --data /path/to/VOCdevkit/VOC2011",
    "siftflow": "the SIFT Flow directory, e.g. --data /path/to/SiftFlow",
    "nyud": "the NYUDv2 directory in the FCN layout, e.g. --data /path/to/nyud",
    "context": "the PASCAL-Context directory (with VOC2010 inside or --voc-dir), e.g. --data /path/to/pascal-context",
    "sbd": "the SBD dataset directory, e.g. --data /path/to/benchmark_RELEASE/dataset",
}


def open_dataset(kind: str, data: Optional[str], split: str, tops: Sequence[str] = (), voc_dir=None,
                 keep_image: bool = False) -> SegDataset:
    """The reader of ``kind`` on ``data``; MissingError when absent or malformed."""
    bundled = registry.dataset(kind).bundled
    root = data if data is not None or bundled is None else resource_path(bundled)
    if root is None:
        layout = getattr(READERS.get(kind), "layout", "")
        raise MissingError(f"no data given: pass {_DATA_HELP.get(kind, '--data DIR')}\n{layout}")
    kw = {"keep_image": keep_image}
    if kind == "nyud":
        kw["tops"] = tuple(tops) or ("color",)
    if kind == "context" and voc_dir:
        kw["voc_dir"] = voc_dir
    try:
        return make_dataset(kind, root, split, **kw)
    except DataMissingError as e:
        raise MissingError(str(e)) from None


def _head_labels(entry, blob: str, n: Optional[int], dataset: SegDataset, label: str,
                 given: Optional[Dict[str, LabelSet]] = None) -> LabelSet:
    """The classes of score blob ``blob`` (n channels): ``given[blob]`` (a user's run), else the
    registry net's, else the dataset's, else 'class i' (the VOC colours; shifted by one where
    class 0 is no background, :func:`fcn_repro.registry.has_background`)."""
    if given and blob in given and n in (None, len(given[blob])):
        return given[blob]
    if entry is not None and blob in entry.classes and n in (None, len(entry.class_names(blob))):
        return labels.for_net(entry, blob)
    names = dataset.heads.get(label)
    kind = dataset.card.labels.get(label) if dataset.name in registry.DATASETS else None
    bg = registry.has_background(kind)   # SIFT Flow's, NYUDv2's class 0 is a class: coloured
    if n is None:   # not known before the first forward: the colours alone matter here
        return LabelSet.voc(names or ["class 0"], background=bg)
    if names is None or len(names) != n:
        names = [f"class {i}" for i in range(n)]
    return LabelSet.voc(names, background=bg)


def evaluate_set(net: str | Model = "fcn8s", weights: Optional[str] = None, data: Optional[str] = None,
                 split: Optional[str] = None, device: str = "cpu", save_predictions: Optional[str] = None,
                 limit: Optional[int] = None, workers: int = 2, dataset_kind: Optional[str] = None,
                 voc_dir: Optional[str] = None, progress: bool = True, verify: bool = True,
                 fast: bool = False, labelsets: Optional[Dict[str, LabelSet]] = None,
                 observe: Optional[Callable[..., None]] = None, classes: Optional[Sequence[str]] = None,
                 outputs: Sequence[str] = ()) -> dict:
    """Evaluate ``net`` (a registry name, a deploy prototxt, a run directory, or a resolved
    :class:`fcn_repro.resolve.Model`) on a dataset.

    ``labelsets``: score blob -> :class:`~fcn_repro.labels.LabelSet` (default: the net's own, a
    run's or a registry net's, else the dataset's). ``observe``: :func:`run`'s per-image hook
    (the reader then keeps each image's RGB for it). ``classes``: names for every score head
    (a deploy prototxt of your own classes; colours: the VOC map). ``outputs``: files the caller
    will write (``--json``): refused at once when one is a file of the dataset (an image, a label,
    the split list). Each head of the report carries its class
    ``names`` and ``palette`` ((N, 3) colours); the report its start ``time`` (UTC, ISO 8601).

    Returns the report (scores per score blob, per-class IU, the card's
    reference, timing; ``rank`` says which process this is). In a process
    group the entry point started (``torchrun``), each process takes every
    world-th image and the matrices are summed; this function starts none
    and uses ``device`` as given. Raises MissingError naming every missing
    piece (weights and data) at once.
    """
    model = net if isinstance(net, Model) else resolve(net, weights)
    entry = model.card
    given = labelsets or model.heads
    facts = model.run.extra if model.run is not None else {}   # a run's data: reader, directory, splits
    kind = dataset_kind or (entry.dataset if entry is not None else str(facts.get("dataset") or "voc"))
    if data is None and dataset_kind in (None, facts.get("dataset")) and facts.get("data"):
        data = str(facts["data"])
        split = split or facts.get("val_split") or facts.get("split")
    elif data is not None and dataset_kind is None and entry is None:
        # a user's own net (a run, a prototxt) on a directory given: its layout says the reader; a run's
        # own-data validation split (val) is the default where that directory has it
        own = "folder" if is_folder(data) else ("voc" if is_voc_layout(data) and facts.get("dataset") else None)
        if own is not None:
            kind = own
            val = str(facts.get("val_split") or "val")
            if split is None and (own == "folder" or (Path(data) / "ImageSets" / "Segmentation" / f"{val}.txt")
                                  .is_file()):
                split = val
    split = split or registry.dataset(kind).split
    # Report every missing piece at once (weights and data), not one per run.
    problems = [model.weights_error] if model.weights is None else []
    dataset = None
    if entry is not None and kind == entry.dataset:
        tops = entry.tops
    else:
        tops = tuple(t for t in prototxt_inputs(model.deploy) if t in ("color", "hha", "depth"))
    try:
        dataset = open_dataset(kind, data, split, tops=tops if kind == "nyud" else (), voc_dir=voc_dir,
                               keep_image=observe is not None)
        dataset.check_files(limit)
    except (MissingError, DataMissingError) as e:
        problems.append(str(e))
    if problems:
        raise MissingError("\n\n".join(problems))
    rank, world = process_group()
    indices = shard_indices(len(dataset), rank, world, limit)
    if outputs:   # never replaced by a report: checked before the work, not after it
        ours = [p for i in indices for p in dataset.files(i)] + [f for f in [_split_file(dataset)] if f]
        for o in outputs:
            check_not_input(o, ours)
    netm, check = build(model, device, fast=fast, verify=verify and rank == 0, progress=progress)
    heads = score_heads(list(netm.outputs), list(dataset.heads), entry)
    if classes is not None:
        given = {b: LabelSet.own(classes, where="--classes") for b in heads}
    # bundled data may come with Caffe's own predictions to compare against
    reference = registry.dataset(kind).caffe_reference if data is None else None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = run(netm, dataset, heads, card=entry, device=device, indices=indices, workers=workers,
              save_predictions=save_predictions, keep_predictions=reference is not None, observe=observe,
              labelsets={b: _head_labels(entry, b, None, dataset, lab, given) for b, lab in heads.items()},
              progress=progress and rank == 0, desc=f"{model.name} {split}")
    hists = merge(res["hists"], list(heads), world)
    images = int(sum_scalar(res["images"], world))
    seconds = sum_scalar(res["seconds"], world, op="max")
    report = {
        "net": model.ref, "prototxt": str(model.deploy), "weights": str(model.weights), "weights_check": check,
        "weights_how": model.weights_how,
        "dataset": kind, "data": str(getattr(dataset, "root", data)), "split": split,
        "split_file": _split_file(dataset),
        "split_note": getattr(dataset, "split_note", None), "limit": limit, "images": images,
        "device": device, "world_size": world, "fast": fast, "time": started, "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else None, "heads": {},
    }
    for blob, lab in heads.items():
        if blob not in hists:
            continue
        h = hists[blob]
        head = head_result(h, dataset, _head_labels(entry, blob, h.shape[0], dataset, lab, given), lab)
        ref = entry.reference(blob, asserted=True) if entry is not None else None
        if ref is not None:
            head["reference"] = {"source": ref.source, "split": ref.split, "decimals": ref.decimals,
                                 "scores": ref.scores(), "comparable": split == ref.split and limit is None}
            head["reference_mean_iu"] = ref.mean_iu
            head["difference"] = 100 * head["mean_iu"] - ref.mean_iu
            head["comparable"] = head["reference"]["comparable"]
        if entry is not None:
            # published elsewhere (the paper's own models): printed beside ours as context, never asserted
            head["context"] = [{"source": r.source, "split": r.split, "scores": r.scores(), "text": r.text()}
                               for r in entry.references if r.head == blob and not r.asserted]
        report["heads"][blob] = head
    if reference is not None:
        report["caffe"] = _compare_with_caffe(res, hists, dataset, world, limit, resource_path(reference))
    report["rank"] = rank
    return report


def _compare_with_caffe(res: dict, hists: Dict[str, np.ndarray], dataset: SegDataset, world: int,
                        limit: Optional[int], npz: Path) -> dict:
    """Our sample predictions against Caffe's (sample.caffe.npz), pixel by pixel.

    Like with like: on the whole set, Caffe's own confusion matrix and scores;
    with ``--limit``, the matrix and scores of Caffe's predictions on the
    same images (their ground truth read again here), never a subset against
    the full set.
    """
    z = read_npz(npz)
    counts = np.zeros(4, dtype=np.float64)  # pixels, equal, differ, differ where margin < 1e-3
    n = hists["score"].shape[0] if "score" in hists else 0
    subset = np.zeros((n, n), dtype=np.int64)
    ids = set(res["predictions"] or {})
    for k in range(len(dataset)):
        i = dataset.ids[k]
        if i not in ids or f"pred/{i}" not in z:
            continue
        ours, theirs, margin = res["predictions"][i]["score"], z[f"pred/{i}"], z[f"margin/{i}"]
        diff = ours != theirs
        counts += [ours.size, (~diff).sum(), diff.sum(), (diff & (margin < 1e-3)).sum()]
        if limit is not None:
            subset += fast_hist(dataset.load(k).labels["label"], theirs, n)
    if world > 1:
        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(counts, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        counts = t.cpu().numpy()
        subset = merge({"score": subset}, ["score"], world)["score"]
    if limit is None:
        caffe_hist = z["hist"]
        caffe = {k: float(z[f"metric/{k}"]) for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc")}
        caffe["iu"] = z["metric/iu"]
    else:
        caffe_hist = subset
        sc = scores(subset)
        caffe = {k: sc[k] for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc", "iu")}
    ours = scores(hists["score"]) if "score" in hists else None
    return {
        "metrics": caffe, "hist": caffe_hist, "subset": limit is not None,
        "hist_equal": bool(ours is not None and np.array_equal(hists["score"], caffe_hist)),
        "pixels": int(counts[0]), "agree": int(counts[1]), "differ": int(counts[2]),
        "differ_margin_lt_1e-3": int(counts[3]),
        "agreement": counts[1] / counts[0] if counts[0] else float("nan"),
        "low_margin_pixels": int(sum((z[k] < 1e-3).sum() for k in z if k.startswith("margin/"))),
        "max_abs_score_diff": max(abs(ours[k] - caffe[k]) for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"))
        if ours is not None else None,
    }


# ---------------------------------------------------------------- training validation

class Validator:
    """Periodic validation: a TEST-phase net sharing the training weights, scored
    by :func:`run` and :func:`head_scores` (the numbers ``evaluate`` gives).

    ``heads``: score blob -> label key in the samples (VOC: {'score': 'label'};
    SIFT Flow: {'score_sem': 'sem', 'score_geo': 'geo'}). In a distributed run
    each process takes every world-th image and the matrices are summed.
    """

    def __init__(self, prototxt: str | os.PathLike, dataset: SegDataset, input_map: Dict[str, Sequence[str]],
                 heads: Dict[str, str], *, limit: Optional[int] = None, device: Any = "cpu",
                 rank: int = 0, world: int = 1, workers: int = 0,
                 labelsets: Optional[Dict[str, LabelSet]] = None):
        self.prototxt = os.fspath(prototxt)
        #: score blob -> the classes' names and colours (a user's run); default: the dataset's
        self.labelsets = dict(labelsets or {})
        self.last: Optional[dict] = None
        self.net = Net(self.prototxt, phase="TEST").to(device)
        self.net.eval()
        self.dataset, self.heads, self.limit = dataset, dict(heads), limit
        self.input_map = {k: tuple(v) for k, v in input_map.items() if k in self.net.inputs}
        missing = [b for b in self.net.inputs if b not in self.input_map]
        if missing:
            raise MismatchError(f"{self.prototxt}: no data for validation net input(s) {missing}")
        self.device, self.rank, self.world, self.workers = device, rank, world, workers

    def share(self, train_net: Any) -> None:
        """Copy the training net's parameters into the validation net (by layer name, exact shapes)."""
        src = {name: list(blobs) for name, blobs in train_net.params.items()}
        # the one matcher (exact shapes: both nets come from the same definitions)
        rep = match_weights(src, self.net.params, source="the training net", target=self.prototxt,
                            legacy=False).check()
        copy_matched(rep, src, self.net.params)

    def run(self, train_net: Any, progress: bool = False, observe: Optional[Callable[..., None]] = None) -> dict:
        """{score blob: {overall_acc, mean_acc, mean_iu, fwavacc, iu (per class), images,
        excluded_classes}} over the set. ``observe``: :func:`run`'s per-image hook (the reader
        then keeps each image's RGB for it). The matrices, image count, time and seconds stay
        in ``self.last`` (:func:`fcn_repro.report.training.validation_report` makes the report
        page's input of them)."""
        self.share(train_net)
        self.net.eval()
        n = len(self.dataset) if self.limit is None else min(self.limit, len(self.dataset))
        idx = shard_indices(len(self.dataset), self.rank, self.world, limit=n)
        self.dataset.keep_image = observe is not None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            res = run(self.net, self.dataset, self.heads, device=str(self.device), indices=idx, workers=self.workers,
                      progress=progress, desc="test", input_map=self.input_map, observe=observe)
        finally:
            self.dataset.keep_image = False
        hists = merge(res["hists"], list(self.heads), self.world)
        out = {}
        for blob in self.heads:
            if blob not in hists:
                raise MismatchError("validation ran on no image")
            sc = head_scores(hists[blob], self.dataset)
            out[blob] = {k: sc[k] for k in SCORE_KEYS}
            out[blob]["iu"] = sc["iu"]
            out[blob]["excluded_classes"] = sc["excluded_classes"]
            out[blob]["images"] = n
        self.last = {"hists": hists, "images": int(sum_scalar(res["images"], self.world)), "limit": self.limit,
                     "seconds": sum_scalar(res["seconds"], self.world, op="max"), "time": started}
        return out

    def labelset(self, blob: str, n: int) -> LabelSet:
        """The classes of score blob ``blob`` (``self.labelsets``' where given, else the dataset's)."""
        return _head_labels(None, blob, n, self.dataset, self.heads[blob], self.labelsets)
