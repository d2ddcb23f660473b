"""Segment images with an FCN: ``python -m fcn_repro.infer``.

    python -m fcn_repro.infer IMAGE|DIR|GLOB... --net fcn8s [--weights W] -o OUTDIR
        [--device cpu|cuda] [--save-scores] [--batch-size N] [--fast] [--json FILE]

Images are files, directories (their image files) or globs (quote them:
``'photos/**/*.jpg'``). Each is read with PIL and turned upright by its EXIF
orientation, and run at its own size (consecutive images of equal size in
batches of ``--batch-size``) through :class:`fcn_repro.predict.Predictor`.

For each image, OUTDIR receives ``<name>.png`` (the predicted labels as a
palette PNG, VOC palette), ``<name>_overlay.png`` (the palette colours
alpha-blended over the image) and, with ``--save-scores``, ``<name>.npy``
(the (C, H, W) float32 class scores). ``<name>`` is the image's stem; when
two images would write the same file (``a/x.jpg`` and ``b/x.jpg``) the later
one gets ``<stem>-2`` (``-3``, ...): no output overwrites another. Nets with
two score blobs (SIFT Flow) write ``<name>_<blob>.*`` per blob. The per-image
class summary (class name, fraction of pixels) is printed and written to
``OUTDIR/summary.json`` with the output names (``--json FILE`` writes the
same report to FILE as well; ``--json -``: to stdout, and the per-image lines
go to stderr).

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
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fcn_repro import cli
from fcn_repro.data.transforms import overlay, save_label_png
from fcn_repro.devices import check_device
from fcn_repro.evaluation import build
from fcn_repro.outputs import output_file, protect_inputs
from fcn_repro.predict import Predictor, Transforms, expand_images
from fcn_repro.resolve import MissingError, WeightsNotFoundError, resolve

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


def _class_names(known: Optional[List[str]], n: int) -> List[str]:
    if known is not None and len(known) == n:
        return known
    return [f"class {i}" for i in range(n)]


class _Names:
    """Output file names that never collide: ``<stem>``, else ``<stem>-2``, ``-3``, ..."""

    def __init__(self):
        self.used: set = set()

    def take(self, stem: str, files) -> str:
        k = 1
        while True:
            base = stem if k == 1 else f"{stem}-{k}"
            names = files(base)
            if not (set(names) & self.used):
                self.used.update(names)
                return base
            k += 1


def output_names(base: str, blobs: Sequence[str], scores: bool) -> List[str]:
    """The files one image writes (labels, overlay, scores) for ``base``."""
    out = []
    for b in blobs:
        suffix = "" if len(blobs) == 1 else f"_{b}"
        out += [f"{base}{suffix}.png", f"{base}{suffix}_overlay.png"] + ([f"{base}{suffix}.npy"] if scores else [])
    return out


def _guarded(guard, items):
    """``items``, iterated inside the context manager ``guard``."""
    with guard:
        yield from items


def infer(images: Sequence[str], net: str = "fcn8s", weights: Optional[str] = None, outdir: str = "out",
          device: str = "cpu", alpha: float = 0.5, out=None, verify: bool = True, fast: bool = False,
          save_scores: bool = False, batch_size: int = 2, json_path: Optional[str] = None) -> dict:
    """Segment ``images`` (files, directories, globs); write labels, overlays (and scores) into ``outdir``.

    Returns {image path: {'outputs': {blob: {...}}, 'size': [H, W]}} for the
    images read; unreadable ones are skipped with a warning and listed under
    the key 'skipped' of summary.json (and of ``json_path``: the same report;
    '-': stdout). Raises MissingError when the net, its weights or a named
    image file is missing, or nothing matches.
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
    netm, _ = build(model, device, fast=fast, verify=verify)
    heads = list(model.heads) or None
    class_lists = {h: list(ls.names) for h, ls in model.heads.items()}   # read once, not per image
    predictor = Predictor(netm, Transforms.for_model(model), heads, device=device, batch_size=batch_size,
                          keep_images=True)
    outdir_p = Path(outdir)
    outdir_p.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, dict] = {}
    skipped: List[dict] = []
    names = _Names()

    def skip(src, e):
        warnings.warn(f"skipped {src}: {e}", stacklevel=2)
        skipped.append({"image": str(src), "error": str(e)})

    protect = protect_inputs(paths)   # an output named like an input (infer photo.png -o .) is refused
    for pred in _guarded(protect, predictor.iter(paths, scores=save_scores, on_error=skip)):
        path, rgb = pred.source, pred.image
        blobs = list(pred.labels)
        base = names.take(Path(path).stem, lambda b: output_names(b, blobs, save_scores))
        per = {}
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}):", file=out)
        for blob, lab in pred.labels.items():
            n = int(pred.scores[blob].shape[0]) if pred.scores else None
            suffix = "" if len(blobs) == 1 else f"_{blob}"
            lab_path = outdir_p / f"{base}{suffix}.png"
            ov_path = outdir_p / f"{base}{suffix}_overlay.png"
            save_label_png(lab_path, lab)
            ov = overlay(rgb, lab, alpha=alpha)
            with output_file(ov_path, ov.nbytes, "wb") as f:   # PNG: at most about the raw size
                Image.fromarray(ov).save(f, format="PNG")
            rec = {"labels": str(lab_path), "overlay": str(ov_path)}
            if save_scores:
                sc_path = outdir_p / f"{base}{suffix}.npy"
                with output_file(sc_path, pred.scores[blob].nbytes + 4096, "wb") as f:
                    np.save(f, pred.scores[blob])
                rec["scores"] = str(sc_path)
            known = class_lists.get(blob)
            nclass = n if n is not None else (len(known) if known is not None else int(lab.max()) + 1)
            classes = summarize(lab, _class_names(known, nclass))
            rec["classes"] = classes
            per[blob] = rec
            head = f"  {blob}: " if len(blobs) > 1 else "  "
            print(head + ", ".join(f"{c['name']} {100 * c['fraction']:.1f}%" for c in classes), file=out)
        summary[str(path)] = {"outputs": per, "size": [int(rgb.shape[0]), int(rgb.shape[1])]}
    report = {"net": net, "weights": str(model.weights), "images": summary, "skipped": skipped}
    cli.write_json(outdir_p / "summary.json", report)
    if json_path:
        cli.write_json(json_path, report)
    nfiles = sum(len(v["outputs"]) for v in summary.values()) * (3 if save_scores else 2)
    print(f"wrote {nfiles} files for {len(summary)} image(s) and summary.json to {outdir_p}"
          + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""), file=out)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.infer",
                                 description="Segment images with an FCN; write label PNGs, overlays, a summary.")
    cli.add_common(ap, "also write the report (summary.json's content) as JSON to FILE ('-': stdout; "
                   "the per-image lines then go to stderr)")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or globs")
    ap.add_argument("--net", default="fcn8s", help="known net, 'sample' (bundled model), a deploy prototxt path or a "
                                                        "training run directory")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel, see python -m fcn_repro.zoo)")
    ap.add_argument("-o", "--outdir", default="out", help="output directory (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    ap.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours (default: %(default)s)")
    ap.add_argument("--save-scores", action="store_true",
                    help="also write each image's class scores, (C, H, W) float32, as <name>.npy")
    ap.add_argument("--batch-size", type=int, default=2, metavar="N",
                    help="images of equal size run together, at most N (default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="fast forward (fcn_repro.fast; equal up to float rounding)")
    return cli.run(_main, ap, argv)


def _main(args) -> int:
    """Exit 0; 1 when an image was skipped; user errors go to cli.run (one error line, exit 2)."""
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha {args.alpha}: must be between 0 and 1")
    device = check_device(args.device, "--device")
    # Outputs are checked before the work, so a bad path does not cost a whole run.
    cli.check_writable(args.outdir, "-o", directory=True)
    cli.check_writable(args.json, "--json")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infer(args.images, net=args.net, weights=args.weights, outdir=args.outdir, device=device,
                  alpha=args.alpha, fast=args.fast, save_scores=args.save_scores, batch_size=args.batch_size,
                  json_path=args.json, out=sys.stderr if args.json == "-" else None)
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
