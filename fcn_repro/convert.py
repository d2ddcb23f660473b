"""Convert Caffe weights between .caffemodel (V1/V2) and Caffe HDF5, and check them.

    python -m fcn_repro.convert IN [-o OUT] [--prototxt NET] [--json] [--strict]

IN: a ``.caffemodel`` (V1 or V2) or ``.caffemodel.h5`` / ``.h5`` (told apart by
content). OUT, by suffix: ``.h5`` / ``.caffemodel.h5`` (Caffe's HDF5 layout,
which Caffe's ``CopyTrainedLayersFromHDF5`` loads) or ``.caffemodel`` (V2
binary). Without ``-o`` the file is only listed (and checked).

Prints a table (layer, blob, shape, dtype, bytes) and totals, or with
``--json`` one JSON object for machines; a progress bar on stderr while a
large file is written. The output is written atomically: a failed or
interrupted run leaves no partial OUT.

``--prototxt NET`` checks every blob against the parameter shapes of the net
the way Caffe's ``CopyTrainedLayersFrom`` does, and writes blobs stored with
legacy 4-D shapes in the net's shapes; net layers with parameters that IN
lacks ("missing") fail the check, and with ``--strict`` IN layers the net
lacks ("unused") too. ``--keep-legacy-shapes`` writes legacy shapes to .h5 as
stored. The rules, and how legacy shapes are written without a net:
:mod:`fcn_repro.conversion` (the library this CLI prints).

Exit status: 0 ok, 1 the check failed, 2 bad input or usage. Nothing is ever
unpickled.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fcn_repro import cli
# the library this CLI has always exported (tests and callers import them from here)
from fcn_repro.conversion import check_failed, check_messages, convert, shape_str
from fcn_repro.outputs import check_writable, write_json

__all__ = ["main"]

UsageError = cli.UsageError


# --------------------------------------------------------------------- CLI

def _table(report: dict) -> str:
    rows = [("layer", "blob", "shape", "dtype", "bytes")]
    for r in report["blobs"]:
        shape = shape_str(r["shape"])
        if r["shape"] != r["stored_shape"]:
            shape += f" (stored {shape_str(r['stored_shape'])})"
        elif r["legacy_shape"]:
            shape += " (legacy 4-D)"
        rows.append((r["layer"], str(r["blob"]), shape, r["dtype"], f"{r['bytes']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i in (1, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = report["totals"]
    lines.append(f"total: {t['blobs']} blobs in {t['layers_with_blobs']} layers "
                 f"({t['layers']} layers in all), {t['values']:,} values, {t['bytes']:,} bytes")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fcn_repro.convert",
        description="List, check and convert Caffe weights (.caffemodel V1/V2 <-> Caffe HDF5 .h5).")
    cli.add_common(ap, "write the report as JSON to FILE ('-': stdout, instead of the table)", examples=[
                   'python -m fcn_repro.convert fcn8s-heavy-pascal.caffemodel -o fcn8s.caffemodel.h5   # to Caffe HDF5',
                   'python -m fcn_repro.convert fcn8s.caffemodel.h5 --prototxt deploy.prototxt --strict   # check only'])
    ap.add_argument("input", help=".caffemodel (V1 or V2) or .caffemodel.h5 / .h5")
    ap.add_argument("-o", "--output", help="write to this .caffemodel or .h5 / .caffemodel.h5 (atomically)")
    ap.add_argument("--prototxt", help="check every blob against this net's parameter shapes")
    ap.add_argument("--phase", default="TEST", choices=("TRAIN", "TEST"), help="net phase for --prototxt")
    ap.add_argument("--strict", action="store_true",
                    help="with --prototxt: layers of the file the net lacks fail the check too")
    ap.add_argument("--keep-legacy-shapes", action="store_true",
                    help="write legacy 4-D blob shapes to .h5 as stored (Caffe's HDF5 loader refuses them)")
    cli.add_progress(ap, "-q", "--quiet")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, build_parser(), argv, inputs=("input", "prototxt"))


def _main(a: argparse.Namespace) -> int:
    check_writable(a.json, "--json")
    check_writable(a.output, "-o")
    report = convert(a.input, a.output, a.prototxt, strict=a.strict, phase=a.phase,
                     keep_legacy_shapes=a.keep_legacy_shapes, quiet=a.no_progress)
    if a.json:
        write_json(a.json, report)
    if a.json != "-":
        print(f"{a.input}: {report['input_format']}"
              + (f", net {report['net_name']!r}" if report["net_name"] else ""))
        print(_table(report))
        for n in report["notes"]:
            print(f"note: {n}")
    if report["check"] is not None:
        c = report["check"]
        for m in c["messages"]:
            print(m, file=sys.stderr)
        if a.json != "-":
            state = "passed" if c["ok"] else "FAILED"
            print(f"check against {a.prototxt}: {state} ({len(c['matched'])} layers matched, "
                  f"{len(c['coerced'])} legacy blobs accepted, {len(c['missing'])} missing, {len(c['unused'])} unused)")
    if not report["ok"]:
        if a.output:
            print(f"not written: {a.output}", file=sys.stderr)
        return 1
    if report["written"] and a.json != "-":
        print(f"wrote {a.output} ({report['output_format']}, {report['output_bytes']:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
