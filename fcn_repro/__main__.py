"""``python -m fcn_repro``: the tools, one line each; ``python -m fcn_repro TOOL ...`` runs one.

Each tool is also ``python -m fcn_repro.TOOL`` and has ``--help`` with examples.
Nothing heavy is imported to list them.
"""
from __future__ import annotations

import runpy
import sys
from typing import Optional, Sequence

from fcn_repro import __version__

#: every command-line tool of the package (``python -m fcn_repro.<name>``) -> what it does
TOOLS = {
    "evaluate": "score a net on a segmentation set (mean IU, pixel and mean accuracy), the paper's numbers",
    "infer": "segment images: label PNGs, overlays, class scores",
    "train": "train a net as Caffe did (net surgery, bilinear init, Caffe's SGD, snapshots), or on your data",
    "export": "write a net to ONNX (any input size), checked against our forward with onnxruntime",
    "convert": "convert Caffe weights between .caffemodel (V1/V2) and Caffe HDF5, and check them",
    "compare": "compare our forward, blob by blob, with a reference (Caffe's blobs saved to .npz)",
    "zoo": "the known nets, their weights and where they are; `zoo download NET` fetches the originals",
    "data": "`data check DIR`: check a dataset (images, labels, classes) before training",
    "netspec": "regenerate (or --check) the prototxt files of every net",
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: python -m fcn_repro TOOL [ARGS...]   (the same as python -m fcn_repro.TOOL [ARGS...])",
             "", "tools:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in TOOLS.items()]
    lines += ["", "python -m fcn_repro.TOOL --help: the tool's options and examples."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"fcn_repro {__version__}")
        return 0
    tool = args[0]
    if tool not in TOOLS:
        print(f"error: no tool {tool!r}\n\n{usage()}", file=sys.stderr)
        return 2
    sys.argv = [f"python -m fcn_repro.{tool}", *args[1:]]
    runpy.run_module(f"fcn_repro.{tool}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
