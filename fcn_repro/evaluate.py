"""Evaluate an FCN on a segmentation set: ``python -m fcn_repro.evaluate``.

    python -m fcn_repro.evaluate --net fcn8s [--weights W] [--data DIR] [--split seg11valid]
        [--device cpu|cuda] [--save-predictions DIR] [--json FILE] [--limit N] [--workers K]
        [--report DIR [--gallery K]]

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

``--report DIR`` writes ``DIR/index.html``, a page that opens from disk
(:mod:`fcn_repro.report`: the scores against the reference, the per-class IU
chart, the confusion matrix heatmap, the worst and best K images, the run's
facts); it needs matplotlib (``pip install 'fcn_repro[report]'``).

The library side (the loop, the protocol, resolving nets/weights/data) is
:mod:`fcn_repro.evaluation`; this module prints its report and is the CLI
(conventions: :mod:`fcn_repro.cli`).

Exit status: 0 on success, 2 on a user error (weights, data or the net
missing or unreadable, a bad option: one ``error:`` line saying what, where
it was looked for, and how to get it).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from fcn_repro import cli, registry
from fcn_repro.data.folder import parse_classes
from fcn_repro.evaluation import evaluate_set, reference_comparison
from fcn_repro.metrics import format_scores
from fcn_repro.report import Gallery, require, write_report
from fcn_repro.resolve import list_names, resolve
from fcn_repro.outputs import check_writable, write_json

__all__ = ["evaluate", "stand_in", "main", "EXIT_MISSING"]

EXIT_MISSING = 2


# ---------------------------------------------------------------- reporting

def _reference_lines(entry, head: dict, split: str, limit) -> List[str]:
    """Our four scores against the card's published ones (where published)."""
    cmp = reference_comparison(head, split, limit)
    if cmp is None:
        return []
    dec = cmp["decimals"]
    lines = [f"reference for {entry.name} ({entry.title}) on {cmp['split']}: {cmp['source']}"]
    for row in cmp["rows"]:
        ours, theirs = row["ours"], row["reference"]
        lines.append(f"  {row['label']:<10} ours {ours:8.4f}   published {theirs:8.{dec}f}   "
                     f"difference {row['difference']:+.4f}")
    if not cmp["comparable"]:
        lines.append(f"  (not comparable: {cmp['note']})")
    else:
        lines.append(f"  within {cmp['tolerance']:g} points of every published score: {cmp['verdict']}")
    return lines


# ---------------------------------------------------------------- main entries

def evaluate(net: str = "fcn8s", weights: Optional[str] = None, data: Optional[str] = None,
             split: Optional[str] = None, device: str = "cpu", save_predictions: Optional[str] = None,
             json_path: Optional[str] = None, limit: Optional[int] = None, workers: int = 2,
             dataset_kind: Optional[str] = None, voc_dir: Optional[str] = None, progress: bool = True,
             verify: bool = True, fast: bool = False, out=None, report_dir: Optional[str] = None,
             gallery: int = 4, labelsets=None, classes: Optional[Sequence[str]] = None) -> dict:
    """:func:`fcn_repro.evaluation.evaluate_set`, then (rank 0) the report printed to
    ``out`` (default stdout) and written to ``json_path`` ('-': stdout, no table), and with
    ``report_dir`` the HTML page (:func:`fcn_repro.report.write_report`; its gallery shows the
    ``gallery`` worst and best images of the whole set, every process's share gathered on
    rank 0). ``labelsets``: score blob ->
    :class:`fcn_repro.labels.LabelSet` (a user's own classes and colours); ``classes``: names for every
    score head (a deploy prototxt of your own classes)."""
    if report_dir is not None:
        require("matplotlib", "the evaluation report (--report)")
    pics = Gallery(gallery) if report_dir is not None and gallery > 0 else None   # 0: no gallery
    model = resolve(net, weights)
    report = evaluate_set(model, data=data, split=split, device=device,
                          save_predictions=save_predictions, limit=limit, workers=workers,
                          dataset_kind=dataset_kind, voc_dir=voc_dir, progress=progress, verify=verify, fast=fast,
                          observe=None if pics is None else pics.observe, labelsets=labelsets,
                          classes=classes, outputs=[json_path] if json_path and json_path != "-" else [])
    if pics is not None:   # every process's share: the worst and best of the whole set (rank 0)
        pics = pics.gathered(report["world_size"])
    if report["rank"] == 0:
        if json_path:
            write_json(json_path, report)
        if json_path != "-":
            _print_report(report, model.card, out or sys.stdout)
        if report_dir is not None:
            page = write_report(report_dir, report, pics)
            print(f"report: {page}", file=sys.stderr if json_path == "-" else (out or sys.stdout))
    return report


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
    if report.get("split_note") and not report.get("split_file"):
        p(f"split {report['split_note']}")      # a split the reader made (no list file): how
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
        for c in head.get("context") or []:
            p(f"context ({c['split']}; {c['source']}): {c['text']}")
    if caffe is not None:
        p()
        p(f"pixel agreement with Caffe: {caffe['agree']:,} of {caffe['pixels']:,} pixels "
          f"({100 * caffe['agreement']:.4f}%); {caffe['differ']} differ, {caffe['differ_margin_lt_1e-3']} of them "
          f"where Caffe's own top-two margin is below 1e-3 ({caffe['low_margin_pixels']} such pixels in the set)")
        which = (f"Caffe's on the same {report['images']} images" if caffe["subset"] else "Caffe's")
        p(f"confusion matrix {'identical to' if caffe['hist_equal'] else 'DIFFERENT from'} {which}; "
          f"largest score difference {caffe['max_abs_score_diff']:.2e}")
        p()
        e = registry.net("fcn8s")
        p(_REAL_HOWTO.format(url=e.url, ref=e.reference(asserted=True).text()))


def stand_in(net: str, data: Optional[str], weights: Optional[str], dataset: Optional[str]) -> Optional[str]:
    """The net that runs when no data and no weights are given: a registry net whose weights and
    data ship with the package (a card with bundled data) and that is ``net`` or a reduced copy of
    its definition (the sample stands in for fcn8s); None when ``net`` runs as asked."""
    if data is not None or weights is not None:
        return None
    for name in list_names():
        card = registry.net(name)
        if net in (card.name, card.definition) and card.data.bundled and dataset in (None, card.dataset):
            return card.name
    return None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.evaluate",
                                 description="Evaluate an FCN (Caffe prototxt + caffemodel) on a segmentation set.")
    cli.add_common(ap, "write the full report as JSON to FILE ('-': stdout, and no table)", examples=[
                   "python -m fcn_repro.evaluate --net fcn8s   # the bundled default: scores next to Caffe's",
                   'python -m fcn_repro.evaluate --net fcn8s --data /path/to/VOCdevkit/VOC2011 --report out/report',
                   'torchrun --nproc_per_node 2 -m fcn_repro.evaluate --net fcn8s --data /path/to/VOCdevkit/VOC2011'])
    ap.add_argument("--net", default="fcn8s",
                    help="known net (python -m fcn_repro.zoo lists them; 'sample' = bundled model), a deploy "
                         "prototxt path or a training run directory (default: %(default)s)")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel under weights/)")
    ap.add_argument("--classes", help="class names, comma-separated in label-value order, for a deploy prototxt "
                                      "of your own classes (a run directory knows its own)")
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
    ap.add_argument("--report", metavar="DIR",
                    help="also write DIR/index.html: scores against the reference, per-class IU chart, confusion "
                         "matrix heatmap, worst/best images, the run's facts (needs pip install "
                         "'fcn_repro[report]')")
    ap.add_argument("--gallery", type=int, default=4, metavar="K",
                    help="with --report: show the K worst and K best images by per-image IU (0: no gallery; "
                         "default: %(default)s)")
    cli.add_progress(ap)
    return ap


def main(argv=None) -> int:
    return cli.run(_main, build_parser(), argv, inputs=("weights",))


def _main(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise cli.UsageError(f"--limit {args.limit}: give a number of images >= 1")
    if args.workers < 0:
        raise cli.UsageError(f"--workers {args.workers}: must be >= 0")
    # Outputs are checked before the work, so a bad path does not cost a whole evaluation.
    check_writable(args.json, "--json")
    check_writable(args.save_predictions, "--save-predictions", directory=True)
    check_writable(args.report, "--report", directory=True)
    if args.gallery < 0:
        raise cli.UsageError(f"--gallery {args.gallery}: must be >= 0")
    if args.report is not None:
        require("matplotlib", "--report")
    _, _, device = cli.dist_setup(args.device)   # the entry point sets up the device and processes
    kw = dict(device=device, save_predictions=args.save_predictions, json_path=args.json, limit=args.limit,
              workers=args.workers, progress=not args.no_progress, split=args.split, fast=args.fast,
              report_dir=args.report, gallery=args.gallery, classes=parse_classes(args.classes))
    bundled = stand_in(args.net, args.data, args.weights, args.dataset)
    if bundled is not None:
        evaluate(net=bundled, **kw)
    else:
        evaluate(net=args.net, weights=args.weights, data=args.data, dataset_kind=args.dataset,
                 voc_dir=args.voc_dir, **kw)
    return 0


cli.front_door(__name__, "evaluate")   # fcn_repro.evaluate(...) stays the library call

if __name__ == "__main__":
    sys.exit(main())
