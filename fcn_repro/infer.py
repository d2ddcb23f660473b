"""Segment images with an FCN: ``python -m fcn_repro.infer``.

    python -m fcn_repro.infer IMAGE... --net fcn8s [--weights W] -o OUTDIR [--device cpu|cuda]

For each image, OUTDIR receives ``<stem>.png`` (the predicted labels as a
palette PNG, VOC palette) and ``<stem>_overlay.png`` (the palette colours
alpha-blended over the image), and the per-image class summary (class name,
fraction of pixels) is printed and written to ``OUTDIR/summary.json``. Nets
with two score blobs (SIFT Flow) write ``<stem>_<blob>.png`` per blob.

The image is preprocessed as the net's training data was (FACTS.md for the
VOC nets: RGB -> BGR, minus the mean, full size, batch of 1). ``--net sample``
runs the bundled model (synthetic shapes; not PASCAL). When the original
weights of a named net are missing, the message says where they were looked
for and how to get them, and the exit status is 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from fcn_repro import zoo
from fcn_repro.data.transforms import (MEAN_CONTEXT, MEAN_NYUD_COLOR, MEAN_SIFTFLOW, MEAN_VOC, overlay, preprocess,
                                       read_rgb, save_label_png)
from fcn_repro.evaluate import EXIT_MISSING, MissingError, load_net, resolve_net, resolve_weights
from fcn_repro.utils import atomic_write

__all__ = ["predict", "summarize", "infer", "main", "MEANS"]

#: Input mean of each dataset kind (the mean its nets were trained with).
MEANS = {"voc": MEAN_VOC, "sample": MEAN_VOC, "sbd": MEAN_VOC, "siftflow": MEAN_SIFTFLOW,
         "context": MEAN_CONTEXT, "nyud": MEAN_NYUD_COLOR}


def predict(net, rgb: np.ndarray, mean=MEAN_VOC, device: str = "cpu", entry=None,
            channels: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """Labels of one image: {score blob: (H, W) uint8 argmax over classes}.

    rgb: (H, W, 3) uint8. The net must take one colour input (3 channels).
    channels: if given, filled with {score blob: number of classes C}.
    """
    import torch

    inputs = list(net.inputs)
    if len(inputs) != 1:
        raise ValueError(f"infer feeds one colour image; this net has inputs {inputs}")
    if entry is not None and entry.tops and entry.tops != ("color",) and entry.dataset == "nyud":
        raise ValueError(f"{entry.name} takes {', '.join(entry.tops)} inputs, not a colour image")
    x = torch.from_numpy(preprocess(rgb, mean)).unsqueeze(0).to(device)
    with torch.inference_mode():
        out = net.forward(**{inputs[0]: x})
    blobs = [b for b in (entry.classes if entry is not None else out) if b in out] or list(out)
    if channels is not None:
        channels.update({b: int(out[b].shape[1]) for b in blobs})
    return {b: out[b][0].argmax(0).to(torch.uint8).cpu().numpy() for b in blobs}


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


def _class_names(entry, blob: str, n: int) -> List[str]:
    if entry is not None and blob in entry.classes:
        names = entry.class_names(blob)
        if len(names) == n:
            return names
    if n == 21:
        from fcn_repro.data.base import class_names

        return class_names("pascal")
    return [f"class {i}" for i in range(n)]


def infer(images: Sequence[str], net: str = "fcn8s", weights: Optional[str] = None, outdir: str = "out",
          device: str = "cpu", alpha: float = 0.5, out=None, verify: bool = True, fast: bool = False) -> dict:
    """Segment ``images``; writes label and overlay PNGs and summary.json into ``outdir``.

    Returns {image path: {'outputs': {blob: {...}}}}. Raises MissingError
    when the net, its weights or an image is missing.
    """
    out = out or sys.stdout
    entry, prototxt = resolve_net(net)
    wpath = resolve_weights(entry, weights, net)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise MissingError("image(s) not found: " + ", ".join(missing))
    if verify:
        zoo.verify_or_record(wpath)
    netm = load_net(prototxt, wpath, device, fast=fast)
    mean = MEANS.get(entry.dataset if entry is not None else "voc", MEAN_VOC)
    outdir_p = Path(outdir)
    outdir_p.mkdir(parents=True, exist_ok=True)
    summary = {}
    stems = set()
    for path in images:
        rgb = read_rgb(path)
        channels: dict = {}
        labels = predict(netm, rgb, mean, device, entry, channels)
        stem = Path(path).stem
        if stem in stems:  # two images with the same name from different folders
            stem = f"{stem}_{len(stems)}"
        stems.add(stem)
        per = {}
        print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}):", file=out)
        for blob, lab in labels.items():
            names = _class_names(entry, blob, channels[blob])
            suffix = "" if len(labels) == 1 else f"_{blob}"
            lab_path = outdir_p / f"{stem}{suffix}.png"
            ov_path = outdir_p / f"{stem}{suffix}_overlay.png"
            save_label_png(lab_path, lab)
            with atomic_write(ov_path, "wb") as f:
                Image.fromarray(overlay(rgb, lab, alpha=alpha)).save(f, format="PNG")
            classes = summarize(lab, names)
            per[blob] = {"labels": str(lab_path), "overlay": str(ov_path), "classes": classes}
            head = f"  {blob}: " if len(labels) > 1 else "  "
            print(head + ", ".join(f"{c['name']} {100 * c['fraction']:.1f}%" for c in classes), file=out)
        summary[str(path)] = {"outputs": per, "size": [int(rgb.shape[0]), int(rgb.shape[1])]}
    with atomic_write(outdir_p / "summary.json", "w") as f:
        json.dump({"net": net, "weights": str(wpath), "images": summary}, f, indent=2)
        f.write("\n")
    print(f"wrote {2 * sum(len(v['outputs']) for v in summary.values())} PNGs and summary.json to {outdir_p}",
          file=out)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.infer",
                                 description="Segment images with an FCN; write label PNGs, overlays, a summary.")
    ap.add_argument("images", nargs="+", metavar="IMAGE")
    ap.add_argument("--net", default="fcn8s", help="known net, 'sample' (bundled model) or a deploy prototxt path")
    ap.add_argument("--weights", help="weights file (default: the original caffemodel under weights/)")
    ap.add_argument("-o", "--outdir", default="out", help="output directory (default: %(default)s)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours (default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="fast forward (fcn_repro.fast; equal up to float rounding)")
    args = ap.parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        infer(args.images, net=args.net, weights=args.weights, outdir=args.outdir, device=device, alpha=args.alpha,
              fast=args.fast)
    except MissingError as e:
        msg = str(e)
        if args.net == "fcn8s" and args.weights is None:
            msg += "\n  (to try the bundled model instead: --net sample; it knows synthetic shapes, not PASCAL)"
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_MISSING
    except zoo.WeightsMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
