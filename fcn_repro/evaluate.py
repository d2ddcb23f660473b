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
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from fcn_repro import cli, registry, zoo
from fcn_repro.data import DataMissingError, SegDataset, make_dataset, shard_indices
from fcn_repro.data.base import resource_path
from fcn_repro.evaluation import head_scores, merge, net_inputs, run, score_heads, sum_scalar  # noqa: F401
from fcn_repro.metrics import fast_hist, format_scores, scores

__all__ = ["MissingError", "resolve_net", "resolve_weights", "load_net", "open_dataset", "net_inputs",
           "score_heads", "run", "evaluate", "evaluate_sample", "main", "EXIT_MISSING"]

EXIT_MISSING = 2


class MissingError(FileNotFoundError):
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
            f"  download the original (from {entry.url} or its mirrors, verified): "
            f"python -m fcn_repro.zoo download {entry.name} --dir {wdir}\n"
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
    rank, world, device = cli.dist_setup(device)
    indices = shard_indices(len(dataset), rank, world, limit)
    check = None
    if verify and rank == 0:
        check = zoo.verify_or_record(wpath, progress=progress)
    netm = load_net(prototxt, wpath, device, fast=fast)
    heads = score_heads(list(netm.outputs), list(dataset.heads), entry)
    # the bundled images come with Caffe's own predictions to compare against
    compare_caffe = kind == "sample" and data is None
    res = run(netm, dataset, heads, card=entry, device=device, indices=indices, workers=workers,
              save_predictions=save_predictions, keep_predictions=compare_caffe,
              progress=progress and rank == 0, desc=f"{Path(str(net)).name} {split}")
    hists = merge(res["hists"], list(heads), world)
    images = int(sum_scalar(res["images"], world))
    seconds = sum_scalar(res["seconds"], world, op="max")
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
        sc = head_scores(h, dataset)
        exclude = sc["excluded_classes"]
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
        report["caffe"] = _compare_with_caffe(res, hists, dataset, world, limit)
    if rank == 0:
        if json_path:
            cli.write_json(json_path, report)
        if json_path != "-":
            _print_report(report, entry, out)
    return report


def _compare_with_caffe(res: dict, hists: Dict[str, np.ndarray], dataset: SegDataset, world: int,
                        limit: Optional[int]) -> dict:
    """Our sample predictions against Caffe's (sample.caffe.npz), pixel by pixel.

    Like with like: on the whole set, Caffe's own confusion matrix and scores;
    with ``--limit``, the matrix and scores of Caffe's predictions on the
    same images (their ground truth read again here), never a subset against
    the full set.
    """
    z = np.load(resource_path("sample", "sample.caffe.npz"))
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
        import torch
        import torch.distributed as dist

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
To run the real reproduction (FCN-8s on PASCAL VOC 2011 seg11valid; reference {ref}):
  1. weights: python -m fcn_repro.zoo download fcn8s   (from {url} or a mirror, verified)
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
            ref = dict(caffe["metrics"])
            title += (": ours vs Caffe's own run" if report["limit"] is None else
                      f": ours vs Caffe's predictions on the same {report['images']} images (--limit)")
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
        which = (f"Caffe's on the same {report['images']} images" if caffe["subset"] else "Caffe's")
        p(f"confusion matrix {'identical to' if caffe['hist_equal'] else 'DIFFERENT from'} {which}; "
          f"largest score difference {caffe['max_abs_score_diff']:.2e}")
        p()
        e = zoo.get("fcn8s")
        p(_REAL_HOWTO.format(wdir=zoo.weights_dir(), url=e.url, ref=e.reference(asserted=True).text()))


def evaluate_sample(**kw) -> dict:
    """The embedded default: the bundled sample model on the bundled images."""
    return evaluate(net="sample", dataset_kind="sample", **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.evaluate",
                                 description="Evaluate an FCN (Caffe prototxt + caffemodel) on a segmentation set.")
    cli.add_common(ap, "write the full report as JSON to FILE ('-': stdout, and no table)")
    ap.add_argument("--net", default="fcn8s",
                    help="known net (python -m fcn_repro.zoo lists them; 'sample' = bundled model) or a deploy "
                         "prototxt path (default: %(default)s)")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel under weights/)")
    ap.add_argument("--data", help="dataset directory (VOC: the year directory, e.g. VOCdevkit/VOC2011); "
                                   "none: the bundled sample (fcn8s/sample only)")
    ap.add_argument("--split", help="split list name or .txt path (default: the net's reference split)")
    ap.add_argument("--dataset", choices=list(registry.DATASETS),
                    help="reader for --data (default: the net's dataset; voc for a prototxt path)")
    ap.add_argument("--voc-dir", help="PASCAL-Context only: the VOC2010 year directory")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    ap.add_argument("--save-predictions", metavar="DIR", help="write predicted labels as palette PNGs")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N images of the split (N >= 1)")
    ap.add_argument("--workers", type=int, default=2, metavar="K", help="decoding threads (default: %(default)s)")
    ap.add_argument("--fast", action="store_true",
                    help="fast forward (fcn_repro.fast: equal to the plain forward up to float rounding)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    return cli.run(_main, build_parser(), argv)


def _main(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise cli.UsageError(f"--limit {args.limit}: give a number of images >= 1")
    if args.workers < 0:
        raise cli.UsageError(f"--workers {args.workers}: must be >= 0")
    # Outputs are checked before the work, so a bad path does not cost a whole evaluation.
    cli.check_writable(args.json, "--json")
    cli.check_writable(args.save_predictions, "--save-predictions", directory=True)
    sample_mode = args.data is None and args.weights is None and args.net in ("fcn8s", "sample") \
        and args.dataset in (None, "sample")
    kw = dict(device=args.device, save_predictions=args.save_predictions, json_path=args.json, limit=args.limit,
              workers=args.workers, progress=not args.no_progress, split=args.split, fast=args.fast)
    if sample_mode:
        evaluate_sample(**kw)
    else:
        evaluate(net=args.net, weights=args.weights, data=args.data, dataset_kind=args.dataset,
                 voc_dir=args.voc_dir, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
