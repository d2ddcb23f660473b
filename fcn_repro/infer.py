"""Segment images with an FCN: ``python -m fcn_repro.infer``.

    python -m fcn_repro.infer IMAGE|DIR|GLOB... --net fcn8s [--weights W] -o OUTDIR
        [--device cpu|cuda] [--save-scores] [--scores-format .npy|.f16.npy|.npz|.f16.npz]
        [--tile N] [--batch-size N] [--fast] [--json FILE]
        [--alpha A] [--background-alpha A] [--side-by-side] [--no-legend]
        [--input NAME=FILE_OR_DIR]   # nets of more than one image read (NYUDv2 color + HHA)

Images are files, directories (their image files) or globs (quote them:
``'photos/**/*.jpg'``). Each is read with PIL and turned upright by its EXIF
orientation, and run at its own size (consecutive images of equal size in
batches of ``--batch-size``) through :class:`fcn_repro.predict.Predictor`.

For each image, OUTDIR receives ``<name>.png`` (the predicted labels as a
palette PNG in the classes' colours), ``<name>_overlay.png`` and, with
``--save-scores``, ``<name>.npy`` (the (C, H, W) float32 class scores;
``--scores-format`` picks float16 and/or a compressed .npz instead, the file
ending naming the format, see :mod:`fcn_repro.scorefile`). The
overlay (:mod:`fcn_repro.report.overlays`) blends the class colours over
the image at ``--alpha`` and leaves the background (classes coloured black,
VOC's) undimmed unless ``--background-alpha`` says otherwise; below it, a
legend of the classes present (colour, name, share of the pixels; drawn by
matplotlib, the ``report`` extra: without it one warning and no legend;
``--no-legend``; an untinted background says so); ``--side-by-side`` puts
the image on its left. Colours and names are the head's
:class:`~fcn_repro.labels.LabelSet` (the net's dataset's, or a user's own;
SIFT Flow's and NYUDv2's class 0 is a class, coloured, not a background).

``<name>`` is the image's stem, or ``<stem>_<ext>`` where two inputs share a
stem (``x.jpg`` and ``x.png``); when a name is still taken (``a/x.jpg`` and
``b/x.jpg``), or would be one of the input files (inputs inside OUTDIR), it
becomes ``<name>-2`` (``-3``, ...): no output overwrites another or an input.
A ``--json`` file (or OUTDIR/summary.json) that is one of the inputs is refused
before any work.
Nets with two score blobs (SIFT Flow) write ``<name>_<blob>.*`` per blob. The
per-image class summary (class name, fraction of pixels) is printed and
written to ``OUTDIR/summary.json`` with the output names (``--json FILE``
writes the same report to FILE as well; ``--json -``: to stdout, and the
per-image lines go to stderr).

Big images give exactly the whole-image scores in bounded memory. By default
an image whose one forward would need more than the memory budget
(``FCN_REPRO_MAX_FORWARD_BYTES``, 1 GiB) is *streamed* layer by layer
(:mod:`fcn_repro.streaming`: bands of rows at the full width, every row of every
map computed once, memory bounded by a band), or run in exact tiles
(:mod:`fcn_repro.tiles`) when the net has a layer that cannot be streamed; the
output says which. ``--tile N``: exact tiles of at most N x N input pixels (a
size too small for the net's margins is enlarged, and said so; the margins are
computed twice); ``--tile 0``: always the whole image. A streamed or tiled
image shows a progress bar per band or tile on a terminal, and its scores are
written to disk part by part, never held whole in memory.

An image that cannot be read (corrupt, truncated, over the pixel cap) is
skipped with a warning naming it; the others go on (exit status 1 if any
was skipped). The preprocessing is the net's training data's (the dataset's
BGR mean). ``--net sample`` runs the bundled model (synthetic shapes; not
PASCAL). When the original weights of a named net are missing, the message
says where they were looked for and how to get them, and the exit status is 2.

The CLI follows :mod:`fcn_repro.cli`: CPU unless ``--device cuda`` (a clean
error where CUDA is absent), outputs (``-o``, ``--json``) checked writable
before any work, one ``error:`` line and exit status 2 on a user error.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fcn_repro import cli
from fcn_repro.data.folder import parse_classes
from fcn_repro.data.transforms import read_rgb, save_label_png
from fcn_repro.devices import check_device
from fcn_repro.evaluation import build
from fcn_repro.labels import LabelSet
from fcn_repro.outputs import check_not_input, check_writable, output_file, protect_inputs, write_json
from fcn_repro.predict import Predictor, Transforms, expand_images
from fcn_repro.registry import IGNORE_LABEL
from fcn_repro.report import available
from fcn_repro.report.overlays import overlay_picture
from fcn_repro.report.plots import percent
from fcn_repro.resolve import MissingError, WeightsNotFoundError, resolve
from fcn_repro.scorefile import FORMATS, ScoreFile, save_scores as save_scores_file

__all__ = ["summarize", "infer", "main", "output_names"]


def summarize(label: np.ndarray, names: Optional[Sequence[str]] = None) -> List[dict]:
    """Classes present in ``label``, by decreasing pixel fraction."""
    counts = np.bincount(np.asarray(label).reshape(-1), minlength=256)
    total = counts.sum()
    out = []
    for c in np.argsort(-counts, kind="stable"):
        if counts[c] == 0:
            break
        name = names[c] if names is not None and c < len(names) else f"class {c}"
        out.append({"class": int(c), "name": name, "pixels": int(counts[c]), "fraction": counts[c] / total})
    return out


def _labelset(known: Optional[LabelSet], n: Optional[int], label: np.ndarray) -> LabelSet:
    """The head's LabelSet; for a net without one (a bare prototxt), 'class i' for its n classes."""
    if known is not None and (n is None or len(known) == n):
        return known
    n = n if n is not None else int(label[label != IGNORE_LABEL].max(initial=0)) + 1
    return LabelSet.voc([f"class {i}" for i in range(n)])


class _Names:
    """Output base names that never collide and never name an input.

    An image's base is its stem; where two inputs share a stem (``a/x.jpg``,
    ``b/x.png``), each keeps its extension (``x_jpg``, ``x_png``); a base
    whose files are already taken, or would be one of the input files (an
    input inside the output directory), becomes ``<base>-2``, ``-3``, ...
    """

    def __init__(self, paths: Sequence[Path] = (), outdir: Optional[Path] = None):
        self.used: set = set()
        stems = Counter(Path(p).stem for p in paths)
        self.shared = {s for s, k in stems.items() if k > 1}
        self.outdir = outdir
        self.inputs = {_real(p) for p in paths}

    def base(self, path: Path) -> str:
        """The wanted base of ``path`` (its stem, with its extension where stems are shared)."""
        path = Path(path)
        ext = path.suffix.lstrip(".")
        return f"{path.stem}_{ext}" if path.stem in self.shared and ext else path.stem

    def take(self, stem: str, files) -> str:
        k = 1
        while True:
            base = stem if k == 1 else f"{stem}-{k}"
            names = files(base)
            clash = set(names) & self.used
            if not clash and self.outdir is not None:
                clash = {n for n in names if _real(self.outdir / n) in self.inputs}
            if not clash:
                self.used.update(names)
                return base
            k += 1


def _real(p) -> str:
    return os.path.realpath(os.fspath(p))


def output_names(base: str, blobs: Sequence[str], scores: bool, scores_format: str = ".npy") -> List[str]:
    """The files one image writes (labels, overlay, scores) for ``base``."""
    out = []
    for b in blobs:
        suffix = "" if len(blobs) == 1 else f"_{b}"
        out += ([f"{base}{suffix}.png", f"{base}{suffix}_overlay.png"]
                + ([f"{base}{suffix}{scores_format}"] if scores else []))
    return out


def _guarded(guard, items):
    """``items``, iterated inside the context manager ``guard``."""
    with guard:
        yield from items


def infer(images: Sequence[str], net: str = "fcn8s", weights: Optional[str] = None, outdir: str = "out",
          device: str = "cpu", alpha: float = 0.5, out=None, verify: bool = True, fast: bool = False,
          save_scores: bool = False, batch_size: int = 2, json_path: Optional[str] = None,
          background_alpha: float = 0.0, legend: bool = True, side_by_side: bool = False,
          labelsets: Optional[Dict[str, LabelSet]] = None, tile: Optional[int] = None,
          scores_format: str = ".npy", progress: bool = True, classes: Optional[Sequence[str]] = None,
          inputs: Optional[Dict[str, str]] = None) -> dict:
    """Segment ``images`` (files, directories, globs); write labels, overlays (and scores) into ``outdir``.

    Returns {image path: {'outputs': {blob: {...}}, 'size': [H, W]}} for the
    images read; unreadable ones are skipped with a warning and listed under
    the key 'skipped' of summary.json (and of ``json_path``: the same report;
    '-': stdout). Raises MissingError when the net, its weights or a named
    image file is missing, or nothing matches. tile: see the module
    docstring (None: automatic); scores_format: a file ending of
    :data:`fcn_repro.scorefile.FORMATS`; progress: False, no bar over the tiles (there is
    one only on a terminal).

    Overlays: the head's colours (``labelsets``: score blob -> a user's
    :class:`~fcn_repro.labels.LabelSet`; default the net's dataset's) at
    ``alpha``, background (black) classes at ``background_alpha``; with
    ``legend`` the classes present below it (needs matplotlib: without it,
    one warning naming the extra and no legend); ``side_by_side``: the image
    on the left. ``classes``: names for every score head (a deploy prototxt of
    your own classes; a run directory knows its own). ``inputs``: for a net
    that reads more than one image (NYUDv2's color and HHA), {read: file or
    directory} for each read after the first: ``images`` are the first read's
    (e.g. the colour photos), a directory gives each the file of the same
    stem, a file serves one image.
    """
    out = out or sys.stdout
    device = check_device(device)
    model = resolve(net, weights)
    model.require_weights()
    missing = [p for p in images if not Path(p).exists() and not glob.has_magic(str(p))]
    if missing:
        raise MissingError("image(s) not found: " + ", ".join(missing))
    paths = expand_images(list(images))
    if not paths:
        raise MissingError("no image files in " + ", ".join(images))
    for target in (Path(outdir) / "summary.json", json_path):   # refused before the work, not after it
        if target and target != "-":
            check_not_input(target, paths)
    netm, _ = build(model, device, fast=fast, verify=verify)
    transforms = Transforms.for_model(model, netm.inputs)
    items = _paired(paths, transforms.reads, dict(inputs or {}))
    heads = list(model.heads) or None
    given = dict(labelsets or {})
    if classes is not None:     # names for every score head (a deploy prototxt of the user's classes)
        given = {b: LabelSet.own(classes, where="--classes") for b in (heads or netm.outputs)}
    if heads:
        given = {h: given.get(h) or model.heads[h] for h in heads}   # read once, not per image
    if legend and not available("matplotlib"):
        warnings.warn("overlays without a legend: the legend needs matplotlib (pip install 'fcn_repro[report]'; "
                      "--no-legend says you want none)", stacklevel=2)
        legend = False
    predictor = Predictor(netm, transforms, heads, device=device, batch_size=batch_size,
                          keep_images=True, tile=tile, progress=None if progress else False)
    outdir_p = Path(outdir)
    outdir_p.mkdir(parents=True, exist_ok=True)

    def sink(src, head, shape):   # a tiled image's scores go to disk tile by tile
        return ScoreFile(outdir_p, shape, scores_format)
    summary: Dict[str, dict] = {}
    skipped: List[dict] = []
    names = _Names(paths, outdir_p)

    def skip(src, e):
        warnings.warn(f"skipped {src}: {e}", stacklevel=2)
        skipped.append({"image": str(src), "error": str(e)})

    every = paths + [v for it in items if isinstance(it, dict) for v in list(it.values())[1:]]
    protect = protect_inputs(every)   # an output named like an input (infer photo.png -o .) is refused
    for pred in _guarded(protect, predictor.iter(items, scores=save_scores, on_error=skip, score_sink=sink)):
        path = pred.source[transforms.reads[0]] if isinstance(pred.source, dict) else pred.source
        rgb = pred.image if pred.image is not None else read_rgb(path)   # no colour read: the first one shown
        blobs = list(pred.labels)
        base = names.take(names.base(Path(path)), lambda b: output_names(b, blobs, save_scores, scores_format))
        per = {}
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}):", file=out)
        if pred.tiling is not None:
            print(f"  {'' if pred.tiling.stream else 'tiled: '}{pred.tiling.describe()}", file=out)
        for blob, lab in pred.labels.items():
            suffix = "" if len(blobs) == 1 else f"_{blob}"
            lab_path = outdir_p / f"{base}{suffix}.png"
            ov_path = outdir_p / f"{base}{suffix}_overlay.png"
            n = int(pred.scores[blob].shape[0]) if pred.scores else None
            ls = _labelset(given.get(blob), n, lab)
            save_label_png(lab_path, lab, ls)
            ov = overlay_picture(rgb, lab, ls, alpha=alpha, background_alpha=background_alpha, legend=legend,
                                 side_by_side=side_by_side)
            with output_file(ov_path, ov.nbytes, "wb") as f:   # PNG: at most about the raw size
                Image.fromarray(ov).save(f, format="PNG")
            rec = {"labels": str(lab_path), "overlay": str(ov_path)}
            if save_scores:
                sc_path = save_scores_file(pred.scores[blob], outdir_p / f"{base}{suffix}{scores_format}",
                                           scores_format)
                rec["scores"] = str(sc_path)
            classes = summarize(lab, ls.names)
            rec["classes"] = classes
            per[blob] = rec
            head = f"  {blob}: " if len(blobs) > 1 else "  "
            print(head + ", ".join(f"{c['name']} {percent(c['fraction'])}" for c in classes), file=out)
        summary[str(path)] = {"outputs": per, "size": [int(rgb.shape[0]), int(rgb.shape[1])]}
        if pred.tiling is not None:
            my, mx = pred.tiling.margins
            summary[str(path)]["tiles"] = {"count": pred.tiling.count, "window": list(pred.tiling.window),
                                           "margins": [my, mx], "margin_fraction": pred.tiling.overhead,
                                           "streamed_rows": pred.tiling.stream}
    report = {"net": net, "weights": str(model.weights), "images": summary, "skipped": skipped}
    with protect_inputs(every):
        write_json(outdir_p / "summary.json", report)
        if json_path:
            write_json(json_path, report)
    nfiles = sum(len(v["outputs"]) for v in summary.values()) * (3 if save_scores else 2)
    print(f"wrote {nfiles} files for {len(summary)} image(s) and summary.json to {outdir_p}"
          + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""), file=out)
    return summary


def _paired(paths: List, reads: List[str], inputs: Dict[str, str]) -> List:
    """The predictor's items: ``paths`` as they are for a net of one image read, else one dict per image,
    {first read: path, other read: its file} (from ``inputs``: a file, or a directory searched by stem)."""
    unknown = sorted(set(inputs) - set(reads[1:]))
    if unknown:
        raise cli.UsageError(f"--input {unknown[0]}=...: this net reads {', '.join(reads)}"
                             + (f"; the {reads[0]} images are the IMAGE arguments" if unknown[0] == reads[0] else ""))
    if len(reads) == 1 and reads[0] in ("data", "color"):
        return list(paths)
    missing = [r for r in reads[1:] if r not in inputs]
    if missing:
        raise cli.UsageError(f"this net reads {', '.join(reads)}: the IMAGE arguments are its {reads[0]} images; "
                             f"give the others with " + " ".join(f"--input {r}=FILE_OR_DIR" for r in missing))
    items = []
    for p in paths:
        it = {reads[0]: p}
        for r in reads[1:]:
            src = Path(inputs[r])
            if src.is_dir():
                found = sorted(f for f in src.iterdir() if f.stem == Path(p).stem and f.is_file())
                if not found:
                    raise MissingError(f"--input {r}={src}: no file named {Path(p).stem}.* for {p}")
                it[r] = str(found[0])
            elif src.is_file():
                if len(paths) > 1:
                    raise cli.UsageError(f"--input {r}={src} is one file for {len(paths)} images: give a "
                                         "directory (its files are matched to the images by name)")
                it[r] = str(src)
            else:
                raise MissingError(f"--input {r}={src}: not found")
        items.append(it)
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.infer",
                                 description="Segment images with an FCN; write label PNGs, overlays, a summary.")
    cli.add_common(ap, "also write the report (summary.json's content) as JSON to FILE ('-': stdout; "
                   "the per-image lines then go to stderr)", examples=[
                   'python -m fcn_repro.infer photo.jpg --net fcn8s -o out   # out/photo.png, the overlay, '
                   'summary.json',
                   "python -m fcn_repro.infer 'images/*.jpg' --net sample -o out --save-scores --side-by-side"])
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or globs")
    ap.add_argument("--net", default="fcn8s", help="known net, 'sample' (bundled model), a deploy prototxt path or a "
                                                        "training run directory")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel, see python -m fcn_repro.zoo)")
    ap.add_argument("--classes", help="class names, comma-separated in label-value order, for a deploy prototxt "
                                      "of your own classes (a run directory knows its own)")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE_OR_DIR",
                    help="a net that reads more than one image (NYUDv2 color+HHA): the IMAGE arguments are its "
                         "first read, each other read from a file (one image) or a directory (files matched by "
                         "name), e.g. --input hha=hha/")
    ap.add_argument("-o", "--outdir", default="out", help="output directory (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    ap.add_argument("--alpha", type=float, default=0.5,
                    help="overlay opacity of the class colours, 0..1 (default: %(default)s)")
    ap.add_argument("--background-alpha", type=float, default=0.0, metavar="ALPHA",
                    help="opacity of the background (classes coloured black): 0 leaves the photo undimmed "
                         "(default: %(default)s)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="the overlay PNG shows the image on the left and the overlay on the right")
    ap.add_argument("--no-legend", action="store_true",
                    help="no legend under the overlay (the legend lists the classes present with their colours "
                         "and shares; it needs matplotlib: pip install 'fcn_repro[report]')")
    ap.add_argument("--save-scores", action="store_true",
                    help="also write each image's class scores, (C, H, W) float32, as <name>.npy")
    ap.add_argument("--scores-format", default=".npy", choices=list(FORMATS), metavar="ENDING",
                    help="with --save-scores: the scores' file ending, which names the format: .npy (float32, "
                         "default), .f16.npy (float16), .npz / .f16.npz (compressed)")
    ap.add_argument("--tile", type=int, default=None, metavar="N",
                    help="run each image in exact tiles of at most NxN input pixels (same scores as the whole "
                         "image, memory bounded by the tile; too small for the net: enlarged, said so); 0: "
                         "whole image; default: the whole image, or streamed layer by layer in bands of rows "
                         "(same scores, every row computed once) when one forward would exceed "
                         "FCN_REPRO_MAX_FORWARD_BYTES (1 GiB)")
    ap.add_argument("--batch-size", type=int, default=2, metavar="N",
                    help="images of equal size run together, at most N (default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="fast forward (fcn_repro.fast; equal up to float rounding)")
    cli.add_progress(ap, help="no progress bar over the bands or tiles of a big image (there is one only when "
                     "stderr is a terminal)")
    return cli.run(_main, ap, argv)


def _main(args) -> int:
    """Exit 0; 1 when an image was skipped; user errors go to cli.run (one error line, exit 2)."""
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    for opt, v in (("--alpha", args.alpha), ("--background-alpha", args.background_alpha)):
        if not 0.0 <= v <= 1.0:
            raise cli.UsageError(f"{opt} {v}: must be between 0 and 1")
    if args.tile is not None and args.tile < 0:
        raise cli.UsageError(f"--tile {args.tile}: must be 0 (whole image) or a size in pixels")
    device = check_device(args.device, "--device")
    extra = {}
    for item in args.input:
        name, eq, src = item.partition("=")
        if not eq or not name or not src:
            raise cli.UsageError(f"--input {item}: expected NAME=FILE_OR_DIR (e.g. hha=hha/)")
        extra[name] = src
    # Outputs are checked before the work, so a bad path does not cost a whole run.
    check_writable(args.outdir, "-o", directory=True)
    check_writable(args.json, "--json")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infer(args.images, net=args.net, weights=args.weights, outdir=args.outdir, device=device,
                  alpha=args.alpha, fast=args.fast, save_scores=args.save_scores, batch_size=args.batch_size,
                  json_path=args.json, out=sys.stderr if args.json == "-" else None,
                  background_alpha=args.background_alpha, legend=not args.no_legend, side_by_side=args.side_by_side,
                  tile=args.tile, scores_format=args.scores_format, progress=not args.no_progress,
                  classes=parse_classes(args.classes), inputs=extra)
    except WeightsNotFoundError as e:
        if args.net == "fcn8s" and args.weights is None:
            raise WeightsNotFoundError(f"{e}\n  (to try the bundled model instead: --net sample; it knows synthetic "
                               "shapes, not PASCAL)") from None
        raise
    skipped = 0
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
        skipped += str(w.message).startswith("skipped ")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
