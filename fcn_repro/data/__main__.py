"""``python -m fcn_repro.data check DIR [--classes a,b,c]``: check a dataset before training.

Reads every image and label of DIR (a plain ``images/`` + ``labels/`` folder
or a VOC-layout directory; :mod:`fcn_repro.data.folder`) and prints each
problem with its file (unreadable files, image/label size mismatches, label
values outside the classes, missing pairs), then the pixels of each class.
Exit status 0: no problems; 1: problems found (listed); 2: DIR can not be read
at all. Class names: ``--classes``, else DIR/classes.txt, else none (every
label value is counted, none is refused).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from fcn_repro.progress import bar as progress_bar

from fcn_repro import cli
from fcn_repro.data.check import check_dataset
from fcn_repro.data.folder import OwnDataError, own_labels, parse_classes
from fcn_repro.outputs import check_not_input, check_writable, write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common(ap, None, examples=[
                   'python -m fcn_repro.data check shapes --classes bg,disc,square',
                   'python -m fcn_repro.data check /path/to/VOCdevkit/VOC2011 --json report.json'])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("check", help="check a dataset folder: problems with their files, pixels per class")
    c.add_argument("dir", metavar="DIR", help="images/ + labels/ folder, or a VOC-layout directory")
    c.add_argument("--classes", help="class names, comma-separated, in label-value order (default: "
                   "DIR/classes.txt; without either, label values are counted but none is refused)")
    c.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE ('-': stdout)")
    cli.add_progress(c)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, build_parser(), argv, inputs=("classes",))


def _main(args: argparse.Namespace) -> int:
    check_writable(args.json, "--json")
    if args.json and args.json != "-" and _in_dataset(args.json, args.dir):
        check_not_input(args.json, inputs=[args.json])   # the report never replaces a file of the dataset
    try:
        classes = list(own_labels(args.dir, parse_classes(args.classes)).names)
    except OwnDataError:
        if args.classes is not None:
            raise
        classes = None   # no names anywhere: count every value
    bar = None
    if not args.no_progress:
        def bar(items):
            return progress_bar(items, desc="checking", unit="pair")
    rep = check_dataset(args.dir, classes, progress=bar)
    out = sys.stderr if args.json == "-" else sys.stdout
    for line in rep.lines():
        print(line, file=out)
    print(f"{len(rep.problems)} problem(s)" if rep.problems else "no problems", file=out)
    if args.json:
        write_json(args.json, rep.to_json())
    return 0 if rep.ok else 1


def _in_dataset(path: str, root: str) -> bool:
    """Whether ``path`` is an existing file (by any name) inside the dataset directory ``root``."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.isfile(real) and os.path.commonpath([real, top]) == top


if __name__ == "__main__":
    sys.exit(main())
