"""python -m fcn_repro.export NET|PROTOTXT [--weights W] -o OUT.onnx [--opset N] [--static HxW] [--fast] [--check]

Writes one ONNX file of a Caffe FCN (atomically). By default it runs every
batch, height and width as Caffe would; ``--static HxW`` fixes the spatial
size. ``--check`` runs it in onnxruntime against our forward and prints the
max relative difference and the argmax agreement (exit 1 when the difference
exceeds 1e-4). User errors print one ``error: ...`` line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from fcn_repro import cli
from fcn_repro.caffe.net import Net
from fcn_repro.data.folder import parse_classes
from fcn_repro.labels import LabelSet
from fcn_repro.predict import Transforms
from fcn_repro.resolve import list_names, resolve
from fcn_repro.outputs import check_writable, write_json

from .onnx_export import DEFAULT_OPSET, to_onnx

CHECK_TOLERANCE = 1e-4


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 500x500), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return h, w


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.export",
        description="Export a Caffe FCN to ONNX: any batch, height and width by default, Caffe blob names "
                    "as input/output names, checked against our forward with onnxruntime (--check).")
    ap.add_argument("net", metavar="NET|PROTOTXT|RUN", help=f"a net of the registry ({', '.join(list_names())}), "
                                                             "a deploy prototxt (give --weights) or a training run "
                                                             "directory")
    ap.add_argument("--weights", help=".caffemodel / .h5 (default: a known net's own file, a run's newest "
                                      "weights); an export of untrained filler weights is not a model")
    ap.add_argument("--classes", help="class names, comma-separated in label-value order, written into the "
                                      "file's metadata (a run directory or a known net: their own)")
    ap.add_argument("-o", "--output", required=True, help="the ONNX file to write (atomically)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--static", type=_size, metavar="HxW", help="export for this one input size "
                                                                 "(default: any size)")
    ap.add_argument("--fast", action="store_true",
                    help="Deconvolutions whose weight is zero off the channel diagonal (FCN's bilinear "
                         "upsampling) become depthwise ConvTranspose: same numbers to float rounding, fewer "
                         "multiplications")
    ap.add_argument("--check", action="store_true",
                    help="run the file in onnxruntime against our forward: max relative difference, argmax "
                         "agreement")
    cli.add_common(ap, examples=[
                   'python -m fcn_repro.export sample -o sample.onnx --check',
                   'python -m fcn_repro.export fcn8s -o fcn8s.onnx --static 500x500 --fast'])
    return cli.run(_main, ap, argv, inputs=("net", "weights"))


def _main(a) -> int:
    check_writable(a.output, "the ONNX file")
    check_writable(a.json, "--json")
    model = resolve(a.net, a.weights)
    net = Net(str(model.deploy), str(model.require_weights()))
    # the file carries what a consumer needs besides the graph: class names, and each input's
    # channel order, mean and scale
    names = parse_classes(a.classes)
    labels = model.heads if names is None else {b: LabelSet.own(names, where="--classes") for b in net.outputs}
    result = to_onnx(net, a.output, opset=a.opset, static=a.static, fast=a.fast, check=a.check,
                     labels=labels, preprocessing=Transforms.for_model(model).describe())
    print(result, file=sys.stderr if a.json == "-" else sys.stdout)
    if a.json:
        write_json(a.json, result)
    bad = [c for c in result.checks if not c["max_rel"] <= CHECK_TOLERANCE]
    if bad:
        where = ", ".join(f"{c['size'][0]}x{c['size'][1]} {c['output']}" for c in bad)
        print(f"error: onnxruntime differs from our forward by more than {CHECK_TOLERANCE:g} (relative) "
              f"at {where}", file=sys.stderr)
        return cli.EXIT_FAILED
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
