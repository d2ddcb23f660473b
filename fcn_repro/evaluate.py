"""Evaluate an FCN on a segmentation set: ``python -m fcn_repro.evaluate``.

    python -m fcn_repro.evaluate --net fcn8s [--weights W] [--data DIR] [--split seg11valid]
        [--device cpu|cuda] [--save-predictions DIR] [--json FILE] [--limit N] [--workers K]

``--net`` is a known net (``python -m fcn_repro.zoo`` lists them; ``sample`` is
the bundled model) or a path to a deploy prototxt. Weights default to the
original caffemodel under weights/ and are read directly. The confusion
matrix is accumulated over the whole set (fcn_repro.metrics) and, under
``torchrun``, summed over processes, each of which takes every WORLD_SIZE-th
image.

With no ``--data`` and no ``--weights``, ``--net fcn8s`` (or ``--net sample``)
runs the bundled sample: a reduced FCN-8s trained in real Caffe on synthetic
shapes, compared pixel by pixel with Caffe's own predictions. It is not
PASCAL VOC; the output says how to run the real reproduction.

Exit status: 0 on success, 2 when weights, data or the net are missing (the
message says what, where it was looked for, and how to get it), 1 on other
errors.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from fcn_repro import registry, zoo
from fcn_repro.data import DataMissingError, SampleLoader, SegDataset, make_dataset, shard_indices
from fcn_repro.data.base import resource_path
from fcn_repro.data.transforms import save_label_png
from fcn_repro.metrics import absent_classes, format_scores, scores

__all__ = ["MissingError", "resolve_net", "resolve_weights", "load_net", "open_dataset", "net_inputs",
           "score_heads", "run", "evaluate", "evaluate_sample", "main", "EXIT_MISSING"]

EXIT_MISSING = 2


class MissingError(Exception):
    """Weights, data or a net file is missing; the CLIs exit with status 2."""


# ---------------------------------------------------------------- resolving

def resolve_net(net: str):
    """``--net`` -> (ZooNet or None, deploy prototxt Path)."""
    p = Path(net)
    if net.endswith(".prototxt") or p.is_file() or os.sep in net:
        if not p.is_file():
            raise MissingError(f"deploy prototxt not found: {p}\n"
                               f"--net takes a known net ({', '.join(zoo.names())}, sample) or a prototxt path.")
        return None, p
    try:
        entry = zoo.get(net)
    except KeyError as e:
        raise MissingError(str(e.args[0])) from None
    try:
        return entry, zoo.deploy_prototxt(net)
    except FileNotFoundError as e:
        raise MissingError(str(e)) from None


def resolve_weights(entry, weights: Optional[str], net_arg: str) -> Path:
    """``--weights`` or the original file under weights/ -> Path (must exist)."""
    if weights:
        p = Path(weights)
        if not p.is_file():
            raise MissingError(f"weights file not found: {p}")
        return p
    if entry is None:
        raise MissingError(f"--net {net_arg} is a prototxt path: pass its weights with --weights FILE "
                           "(.caffemodel, .caffemodel.h5 or .h5)")
    if entry.name == "sample":
        return zoo.weights_path(entry)
    if entry.caffemodel is None:
        raise MissingError(f"no original weights were published for {entry.name}; train them "
                           "(python -m fcn_repro.train) and pass --weights FILE")
    p = zoo.weights_path(entry)
    if not p.is_file():
        wdir = zoo.weights_dir()
        raise MissingError(
            f"weights for {entry.name} not found: looked for {p}\n"
            f"  download the original: wget -P {wdir} {entry.url}\n"
            f"  (or pass --weights FILE, or set FCN_REPRO_WEIGHTS_DIR to the directory holding "
            f"{entry.caffemodel})")
    return p


def load_net(prototxt: os.PathLike, weights: os.PathLike, device: str = "cpu", fast: bool = False):
    """Build the net from the prototxt, load the caffemodel directly, move to ``device``.

    fast: wrap it in :func:`fcn_repro.fast.optimize` (the same arithmetic on
    less work: the input-independent padding region is computed once;
    scores agree with the plain forward to float rounding).
    """
    import torch

    from fcn_repro.caffe import Net

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
        from fcn_repro.fast import optimize

        net = optimize(net)
    return net


class WeightsIncompleteError(ValueError):
    """The weights file lacks layers of the net (exit status 1)."""


def prototxt_inputs(prototxt: os.PathLike) -> List[str]:
    """Input blob names of a deploy prototxt (Input layers, legacy inputs), without building it."""
    from fcn_repro.caffe.prototxt import parse_prototxt

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
    if kind == "sample":
        root = Path(data) if data else resource_path("sample", "sample")
    else:
        root = data
    if root is None:
        from fcn_repro.data import READERS

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


def net_inputs(net_input_names: Sequence[str], sample, entry=None) -> Dict[str, np.ndarray]:
    """Map a sample's inputs onto the net's input blobs.

    A blob named like a sample input takes it; else the zoo entry says which
    dataset inputs to concatenate along channels (NYUDv2 early fusion:
    'color' + 'depth' -> 'data'); else a net with one input takes the
    sample's only input. Returns blob -> (C, H, W) float32.
    """
    out = {}
    for b in net_input_names:
        if b in sample.inputs:
            out[b] = sample.inputs[b]
        elif entry is not None and b in entry.input_map and all(t in sample.inputs for t in entry.input_map[b]):
            parts = [sample.inputs[t] for t in entry.input_map[b]]
            out[b] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        elif len(net_input_names) == 1 and len(sample.inputs) == 1:
            out[b] = next(iter(sample.inputs.values()))
        else:
            raise ValueError(f"net input blob {b!r}: the dataset provides {sorted(sample.inputs)}; "
                             "no rule says which feeds it")
    return out


def score_heads(net_outputs: Sequence[str], label_names: Sequence[str], entry=None) -> Dict[str, str]:
    """Pair the net's score blobs with the dataset's label heads: blob -> label."""
    if entry is not None and entry.classes:
        missing = [b for b in entry.classes if b not in net_outputs]
        if missing:
            raise ValueError(f"{entry.name}: expected output blob(s) {missing}; the net outputs {list(net_outputs)}")
        return {b: entry.classes[b][0] for b in entry.classes}
    outs = list(net_outputs)
    if len(outs) == 1 and len(label_names) == 1:
        return {outs[0]: label_names[0]}
    pairs = {}
    for lab in label_names:
        for cand in (f"score_{lab}", lab, "score"):
            if cand in outs and cand not in pairs:
                pairs[cand] = lab
                break
    if not pairs:
        raise ValueError(f"cannot pair the net's outputs {outs} with the dataset's labels {list(label_names)} "
                         "(name a score blob score_<label>)")
    return pairs


# ---------------------------------------------------------------- the loop

def run(net, dataset: SegDataset, heads: Dict[str, str], *, entry=None, device: str = "cpu",
        indices: Optional[Sequence[int]] = None, workers: int = 2, save_predictions: Optional[str] = None,
        keep_predictions: bool = False, progress: bool = True, desc: str = "evaluate") -> dict:
    """Forward every image, accumulate a confusion matrix per score blob.

    net: a built net (``forward(**inputs) -> {blob: (1, C, H, W)}``).
    heads: score blob -> label head of the dataset's samples.
    Returns {'hists': {blob: (C, C) int64 ndarray}, 'images': int,
    'seconds': float, 'ids': [...], 'predictions': {id: {blob: (H, W) uint8}}
    (when keep_predictions)}. Predictions are the argmax over channels (the
    first maximum wins, as numpy's argmax in FCN's score.py).
    """
    import torch

    from fcn_repro.metrics import fast_hist_torch

    dev = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    hists: Dict[str, "torch.Tensor"] = {}
    preds_kept: Dict[str, Dict[str, np.ndarray]] = {}
    ids: List[str] = []
    input_names = list(net.inputs)
    writer = ThreadPoolExecutor(1, thread_name_prefix="fcn-save") if save_predictions else None
    pending = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for sample in SampleLoader(dataset, indices, workers=workers):
                feed = {b: torch.from_numpy(a).unsqueeze(0).to(dev, non_blocking=True)
                        for b, a in net_inputs(input_names, sample, entry).items()}
                out = net.forward(**feed)
                ids.append(sample.id)
                for blob, lab_name in heads.items():
                    if blob not in out:
                        raise ValueError(f"the net produced no blob {blob!r} (outputs: {sorted(out)})")
                    score = out[blob]
                    label = sample.labels[lab_name]
                    if tuple(score.shape[2:]) != label.shape:
                        raise ValueError(f"{sample.id}: score blob {blob!r} is {tuple(score.shape[2:])}, "
                                         f"label {lab_name!r} is {label.shape}")
                    n = int(score.shape[1])
                    pred = score[0].argmax(0)
                    lab_t = torch.from_numpy(label).to(dev, non_blocking=True)
                    h = fast_hist_torch(lab_t, pred, n, check=False)
                    if blob in hists:
                        if hists[blob].shape[0] != n:
                            raise ValueError(f"score blob {blob!r} changed from {hists[blob].shape[0]} to {n} channels")
                        hists[blob] += h
                    else:
                        hists[blob] = h
                    if keep_predictions or writer is not None:
                        p8 = pred.to(torch.uint8).cpu().numpy()
                        if keep_predictions:
                            preds_kept.setdefault(sample.id, {})[blob] = p8
                        if writer is not None:
                            d = Path(save_predictions) if len(heads) == 1 else Path(save_predictions) / blob
                            pending.append(writer.submit(save_label_png, d / f"{sample.id}.png", p8))
                if bar is not None:
                    bar.update(1)
        for f in pending:
            f.result()
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.shutdown(wait=True)
    seconds = time.perf_counter() - t0
    return {"hists": {b: h.cpu().numpy() for b, h in hists.items()}, "images": len(ids), "seconds": seconds,
            "ids": ids, "predictions": preds_kept if keep_predictions else None}


# ---------------------------------------------------------------- distributed

def _dist_setup(device: str):
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1).

    Returns (rank, world, device). gloo on CPU, nccl on CUDA (one GPU per
    local rank).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def _merge_hists(hists: Dict[str, np.ndarray], blobs: Sequence[str], world: int) -> Dict[str, np.ndarray]:
    """Sum per-process matrices. A process that saw no image has none: the
    class counts are agreed first (MAX), then the matrices summed."""
    if world <= 1:
        return hists
    import torch
    import torch.distributed as dist

    from fcn_repro.metrics import all_reduce_hist

    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    sizes = torch.tensor([hists[b].shape[0] if b in hists else 0 for b in blobs], dtype=torch.int64, device=dev)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    out = {}
    for b, n in zip(blobs, sizes.tolist()):
        h = hists.get(b, np.zeros((n, n), dtype=np.int64))
        out[b] = all_reduce_hist(h)
    return out


def _sum_scalar(v: float, world: int, op: str = "sum") -> float:
    if world <= 1:
        return v
    import torch
    import torch.distributed as dist

    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([v], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


# ---------------------------------------------------------------- reporting

def _head_classes(entry, blob: str, n: int, dataset: SegDataset, label: str) -> List[str]:
    names = None
    if entry is not None and blob in entry.classes:
        names = entry.class_names(blob)
    elif dataset.heads.get(label) is not None:
        names = dataset.heads[label]
    if names is None or len(names) != n:
        names = [f"class {i}" for i in range(n)]
    return list(names)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_json(path: str, report: dict) -> None:
    from fcn_repro.utils import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(_jsonable(report), f, indent=2)
        f.write("\n")


_SCORE_NAMES = (("overall_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iu", "mean IU"),
                ("fwavacc", "f.w. IU"))


def _reference_lines(entry, head: dict, split: str, limit) -> List[str]:
    """Our four scores against the card's published ones (where published)."""
    ref = head.get("reference")
    if ref is None:
        return []
    dec = ref["decimals"]
    lines = [f"reference for {entry.name} ({entry.title}) on {ref['split']}: {ref['source']}"]
    for key, label in _SCORE_NAMES:
        r = ref["scores"].get(key)
        if r is None:
            continue
        ours, theirs = 100 * head[key], 100 * r
        lines.append(f"  {label:<10} ours {ours:8.4f}   published {theirs:8.{dec}f}   difference {ours - theirs:+.4f}")
    if not ref["comparable"]:
        lines.append(f"  (not comparable: evaluated {split!r}" + (f", first {limit} images" if limit else "")
                     + f"; the reference is on the whole of {ref['split']!r})")
    else:
        tol = max(0.005, 0.5 * 10 ** -dec)
        same = all(abs(100 * head[k] - 100 * ref["scores"][k]) <= tol for k, _ in _SCORE_NAMES
                   if ref["scores"].get(k) is not None)
        lines.append(f"  within {tol:g} points of every published score: {'MATCH' if same else 'DIFFERENT'}")
    return lines


# ---------------------------------------------------------------- main entries

def evaluate(net: str = "fcn8s", weights: Optional[str] = None, data: Optional[str] = None,
             split: Optional[str] = None, device: str = "cpu", save_predictions: Optional[str] = None,
             json_path: Optional[str] = None, limit: Optional[int] = None, workers: int = 2,
             dataset_kind: Optional[str] = None, voc_dir: Optional[str] = None, progress: bool = True,
             verify: bool = True, fast: bool = False, out=None) -> dict:
    """Evaluate ``net`` (zoo name or prototxt) on a dataset; see the module doc.

    Returns the report (scores per score blob, per-class IU, reference and
    timing) on every process; prints it (rank 0) to ``out`` (default stdout).
    Raises MissingError when weights, data or the net are missing.
    """
    out = out or sys.stdout
    entry, prototxt = resolve_net(net)
    kind = dataset_kind or (entry.dataset if entry is not None else "voc")
    split = split or registry.dataset(kind).split
    # Report every missing piece at once (weights and data), not one per run.
    problems = []
    wpath = dataset = None
    try:
        wpath = resolve_weights(entry, weights, net)
    except MissingError as e:
        problems.append(str(e))
    if entry is not None and kind == entry.dataset:
        tops = entry.tops
    else:
        tops = tuple(t for t in prototxt_inputs(prototxt) if t in ("color", "hha", "depth"))
    try:
        dataset = open_dataset(kind, data, split, tops=tops if kind == "nyud" else (), voc_dir=voc_dir)
        dataset.check_files(limit)
    except (MissingError, DataMissingError) as e:
        problems.append(str(e))
    if problems:
        raise MissingError("\n\n".join(problems))
    rank, world, device = _dist_setup(device)
    indices = shard_indices(len(dataset), rank, world, limit)
    check = None
    if verify and rank == 0:
        check = zoo.verify_or_record(wpath, progress=progress)
    netm = load_net(prototxt, wpath, device, fast=fast)
    heads = score_heads(list(netm.outputs), list(dataset.heads), entry)
    # the bundled images come with Caffe's own predictions to compare against
    compare_caffe = kind == "sample" and data is None
    res = run(netm, dataset, heads, entry=entry, device=device, indices=indices, workers=workers,
              save_predictions=save_predictions, keep_predictions=compare_caffe,
              progress=progress and rank == 0, desc=f"{Path(str(net)).name} {split}")
    hists = _merge_hists(res["hists"], list(heads), world)
    images = int(_sum_scalar(res["images"], world))
    seconds = _sum_scalar(res["seconds"], world, op="max")
    report = {
        "net": net, "prototxt": str(prototxt), "weights": str(wpath), "weights_check": check,
        "dataset": kind, "data": str(getattr(dataset, "root", data)), "split": split,
        "split_file": str(getattr(dataset, "split_file", "")), "limit": limit, "images": images,
        "device": device, "world_size": world, "fast": fast, "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else None, "heads": {},
    }
    for blob, lab in heads.items():
        if blob not in hists:
            continue
        h = hists[blob]
        exclude = absent_classes(h) if dataset.exclude_absent else None
        sc = scores(h, exclude=exclude)
        names = _head_classes(entry, blob, h.shape[0], dataset, lab)
        head = {"label": lab, "classes": names, "hist": h, "excluded_classes": exclude,
                **{k: sc[k] for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc", "iu", "acc", "pixels")}}
        ref = entry.reference(blob, asserted=True) if entry is not None else None
        if ref is not None:
            head["reference"] = {"source": ref.source, "split": ref.split, "decimals": ref.decimals,
                                 "scores": ref.scores(), "comparable": split == ref.split and limit is None}
            head["reference_mean_iu"] = ref.mean_iu
            head["difference"] = 100 * sc["mean_iu"] - ref.mean_iu
            head["comparable"] = head["reference"]["comparable"]
        report["heads"][blob] = head
    if compare_caffe:
        report["caffe"] = _compare_with_caffe(res, hists, dataset, world)
    if rank == 0:
        _print_report(report, entry, out)
        if json_path:
            _write_json(json_path, report)
    return report


def _compare_with_caffe(res: dict, hists: Dict[str, np.ndarray], dataset: SegDataset, world: int) -> dict:
    """Our sample predictions against Caffe's (sample.caffe.npz), pixel by pixel."""
    z = np.load(resource_path("sample", "sample.caffe.npz"))
    counts = np.zeros(4, dtype=np.float64)  # pixels, equal, differ, differ where margin < 1e-3
    for i, preds in (res["predictions"] or {}).items():
        key = f"pred/{i}"
        if key not in z:
            continue
        ours = preds["score"]
        theirs = z[key]
        margin = z[f"margin/{i}"]
        diff = ours != theirs
        counts += [ours.size, (~diff).sum(), diff.sum(), (diff & (margin < 1e-3)).sum()]
    if world > 1:
        import torch
        import torch.distributed as dist

        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(counts, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        counts = t.cpu().numpy()
    caffe = {k: float(z[f"metric/{k}"]) for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc")}
    caffe["iu"] = z["metric/iu"]
    ours = scores(hists["score"]) if "score" in hists else None
    return {
        "metrics": caffe, "hist": z["hist"],
        "hist_equal": bool(ours is not None and np.array_equal(hists["score"], z["hist"])),
        "pixels": int(counts[0]), "agree": int(counts[1]), "differ": int(counts[2]),
        "differ_margin_lt_1e-3": int(counts[3]),
        "agreement": counts[1] / counts[0] if counts[0] else float("nan"),
        "low_margin_pixels": int(sum((z[k] < 1e-3).sum() for k in z.files if k.startswith("margin/"))),
        "max_abs_score_diff": max(abs(ours[k] - caffe[k]) for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"))
        if ours is not None else None,
    }


_SAMPLE_BANNER = """\
=== The bundled sample: NOT PASCAL VOC ===
No --data was given, so this ran the small sample that ships with fcn_repro
(fcn_repro/resources/sample): a reduced-width FCN-8s (every layer, kernel,
stride, pad and crop offset of the real one; widths 8..64) trained in real
Caffe on synthetic shapes (5 classes), evaluated on 24 held-out images, and
compared with the predictions and scores Caffe itself computed on them."""

_REAL_HOWTO = """\
To run the real reproduction (FCN-8s on PASCAL VOC 2011 seg11valid, reference mean IU 65.51):
  1. weights: wget -P {wdir} {url}
  2. data: PASCAL VOC 2011 from http://host.robots.ox.ac.uk/pascal/VOC/ (VOCdevkit/VOC2011 with
     JPEGImages/, SegmentationClass/; the seg11valid list ships with fcn_repro)
  3. python -m fcn_repro.evaluate --net fcn8s --data /path/to/VOCdevkit/VOC2011
     (other nets: python -m fcn_repro.zoo; several processes: torchrun --nproc_per_node N -m fcn_repro.evaluate ...)"""


def _print_report(report: dict, entry, out) -> None:
    p = lambda s="": print(s, file=out)  # noqa: E731
    caffe = report.get("caffe")
    if caffe is not None:
        p(_SAMPLE_BANNER)
        p()
    ips = report["images_per_s"]
    p(f"net {report['net']} ({report['prototxt']})")
    chk = report.get("weights_check") or {}
    p(f"weights {report['weights']}" + (f" [{chk['status']} in {chk['manifest']}]"
                                          if chk.get("status") in ("recorded", "verified") else ""))
    p(f"data {report['data']} split {report['split']}: {report['images']} images in {report['seconds']:.1f} s"
      + (f" ({ips:.2f} images/s" if ips else " (") + f", {report['device']}, {report['world_size']} process(es)"
      + (", fast forward)" if report.get("fast") else ")"))
    for blob, head in report["heads"].items():
        p()
        ref = None
        title = f"{blob} ({len(head['classes'])} classes, {head['pixels']} labelled pixels)"
        if caffe is not None and blob == "score":
            if report["limit"] is None:
                ref = dict(caffe["metrics"])
                title += ": ours vs Caffe's own run"
            else:
                title += f" (first {report['limit']} images; Caffe's scores cover all 24, so they are not shown)"
        if head.get("excluded_classes"):
            title += "; excluded (absent from the set): " + ", ".join(
                head["classes"][c] for c in head["excluded_classes"])
        p(format_scores(head, head["classes"], title=title, reference=ref))
        if head.get("reference") is not None:
            p()
            for ln in _reference_lines(entry, head, report["split"], report["limit"]):
                p(ln)
    if caffe is not None:
        p()
        p(f"pixel agreement with Caffe: {caffe['agree']:,} of {caffe['pixels']:,} pixels "
          f"({100 * caffe['agreement']:.4f}%); {caffe['differ']} differ, {caffe['differ_margin_lt_1e-3']} of them "
          f"where Caffe's own top-two margin is below 1e-3 ({caffe['low_margin_pixels']} such pixels in the set)")
        p(f"confusion matrix {'identical to' if caffe['hist_equal'] else 'DIFFERENT from'} Caffe's; "
          f"largest score difference {caffe['max_abs_score_diff']:.2e}")
        p()
        e = zoo.get("fcn8s")
        p(_REAL_HOWTO.format(wdir=zoo.weights_dir(), url=e.url))


def evaluate_sample(**kw) -> dict:
    """The embedded default: the bundled sample model on the bundled images."""
    return evaluate(net="sample", dataset_kind="sample", **kw)


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.evaluate",
                                 description="Evaluate an FCN (Caffe prototxt + caffemodel) on a segmentation set.")
    ap.add_argument("--net", default="fcn8s",
                    help="known net (python -m fcn_repro.zoo lists them; 'sample' = bundled model) or a deploy "
                         "prototxt path (default: %(default)s)")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel under weights/)")
    ap.add_argument("--data", help="dataset directory (VOC: the year directory, e.g. VOCdevkit/VOC2011); "
                                   "none: the bundled sample (fcn8s/sample only)")
    ap.add_argument("--split", help="split list name or .txt path (default: the net's reference split)")
    ap.add_argument("--dataset", choices=["voc", "sbd", "siftflow", "nyud", "context", "sample"],
                    help="reader for --data (default: the net's dataset; voc for a prototxt path)")
    ap.add_argument("--voc-dir", help="PASCAL-Context only: the VOC2010 year directory")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--save-predictions", metavar="DIR", help="write predicted labels as palette PNGs")
    ap.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N images of the split")
    ap.add_argument("--workers", type=int, default=2, metavar="K", help="decoding threads (default: %(default)s)")
    ap.add_argument("--fast", action="store_true",
                    help="fast forward (fcn_repro.fast: the input-independent padding region computed once, "
                         "GEMM 1x1/fc layers, Winograd F(2x2,3x3) on 512-channel layers; equal to the "
                         "plain forward up to float rounding)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {device}: CUDA is not available here (torch {torch.__version__}); "
                  "use --device cpu", file=sys.stderr)
            return 1
    sample_mode = args.data is None and args.weights is None and args.net in ("fcn8s", "sample") \
        and args.dataset in (None, "sample")
    try:
        if sample_mode:
            evaluate_sample(device=device, save_predictions=args.save_predictions, json_path=args.json,
                            limit=args.limit, workers=args.workers, progress=not args.no_progress,
                            split=args.split, fast=args.fast)
        else:
            evaluate(net=args.net, weights=args.weights, data=args.data, split=args.split, device=device,
                     save_predictions=args.save_predictions, json_path=args.json, limit=args.limit,
                     workers=args.workers, dataset_kind=args.dataset, voc_dir=args.voc_dir,
                     progress=not args.no_progress, fast=args.fast)
    except MissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MISSING
    except (zoo.WeightsMismatchError, WeightsIncompleteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        _dist_teardown()
    return 0


def _dist_teardown():
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
