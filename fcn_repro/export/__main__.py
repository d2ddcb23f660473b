"""python -m fcn_repro.export NET|PROTOTXT [--weights W] -o OUT.onnx [--opset N] [--static HxW] [--fast] [--check]

Writes one ONNX file of a Caffe FCN (atomically). By default it runs every
batch, height and width as Caffe would; ``--static HxW`` fixes the spatial
size. ``--check`` runs it in onnxruntime against our forward and prints the
max relative difference and the argmax agreement (exit 1 when the difference
exceeds 1e-4). User errors print one ``error: ...`` line and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from fcn_repro import cli, hub, registry, zoo
from fcn_repro.cli import UsageError
from fcn_repro.caffe.net import Net

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


def resolve(net: str, weights: Optional[str]) -> tuple[str, str]:
    """(prototxt path, weights path) for a prototxt path or a net of the registry."""
    if os.path.exists(net):
        if weights is None:
            raise UsageError(f"{net}: give the weights with --weights (.caffemodel or .h5); an export of "
                             "untrained filler weights is not a model")
        return net, weights
    try:
        card = registry.net(net)
    except registry.UnknownNameError as e:
        raise UsageError(f"{net!r} is neither a prototxt file nor a known net ({e})") from None
    prototxt = str(zoo.deploy_prototxt(net))
    if weights is None:
        if card.weights is None:
            raise UsageError(f"net {net!r} has no published weights; give --weights")
        found = zoo.weights_path(card)   # the bundled sample, or the original where it is
        if not found.is_file():
            raise UsageError(f"net {net!r}: {card.weights.file} not found in {hub.weights_dir()} or "
                             f"{hub.download_dir()}; run `python -m fcn_repro.zoo download {net}` or give "
                             "--weights")
        weights = str(found)
    return prototxt, weights


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.export",
        description="Export a Caffe FCN to ONNX: any batch, height and width by default, Caffe blob names "
                    "as input/output names, checked against our forward with onnxruntime (--check).")
    ap.add_argument("net", metavar="NET|PROTOTXT", help=f"a net of the registry ({', '.join(registry.names())}, "
                                                         "sample) or a deploy prototxt")
    ap.add_argument("--weights", help=".caffemodel / .h5 (default for a known net: its file in the weights dir)")
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
    cli.add_common(ap)
    return cli.run(_main, ap, argv)


def _main(a) -> int:
    cli.check_writable(a.output, "the ONNX file")
    cli.check_writable(a.json, "--json")
    prototxt, weights = resolve(a.net, a.weights)
    net = Net(prototxt, weights)
    result = to_onnx(net, a.output, opset=a.opset, static=a.static, fast=a.fast, check=a.check)
    print(result, file=sys.stderr if a.json == "-" else sys.stdout)
    if a.json:
        cli.write_json(a.json, result)
    bad = [c for c in result.checks if not c["max_rel"] <= CHECK_TOLERANCE]
    if bad:
        where = ", ".join(f"{c['size'][0]}x{c['size'][1]} {c['output']}" for c in bad)
        print(f"error: onnxruntime differs from our forward by more than {CHECK_TOLERANCE:g} (relative) "
              f"at {where}", file=sys.stderr)
        return cli.EXIT_FAILED
    return cli.EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
