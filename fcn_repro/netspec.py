"""Regenerate prototxt/: ``python -m fcn_repro.netspec [--out DIR] [--check] [NET...]``.

Writes ``<out>/<net>/{deploy,train,val,solver}.prototxt`` for every net of
:data:`fcn_repro.caffe.fcn_nets.NETS` (or the nets named), atomically. With
``--check`` nothing is written: the exit status is 1 when a file on disk
differs from what the generator writes (or is missing, or is a stray
``*.prototxt`` not generated), 0 when all agree; the message gives the
command that regenerates exactly what was checked.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fcn_repro import cli
from fcn_repro.caffe import fcn_nets
from fcn_repro.outputs import check_writable, output_file, write_json


def default_out() -> Path:
    """The repository's prototxt/ when running from a checkout, else ./prototxt."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / "prototxt").is_dir() and (repo / "setup.py").exists():
        return repo / "prototxt"
    return Path("prototxt")


def check(out: Path, files: dict[str, str], all_nets: bool) -> list[str]:
    """Differences between ``files`` and the tree under ``out`` (empty: equal)."""
    problems = []
    for rel, text in sorted(files.items()):
        p = out / rel
        if not p.exists():
            problems.append(f"missing: {p}")
        elif p.read_text(encoding="utf-8") != text:
            problems.append(f"differs: {p}")
    if all_nets and out.is_dir():
        for p in sorted(out.glob("*/*.prototxt")):
            rel = p.relative_to(out).as_posix()
            if rel not in files:
                problems.append(f"not generated (stray): {p}")
    return problems


def regenerate_command(out_arg: Path | None, nets: list[str]) -> str:
    """The command that rewrites what ``--check`` with these arguments checked."""
    parts = ["python", "-m", "fcn_repro.netspec"]
    if out_arg is not None:
        parts += ["--out", str(out_arg)]
    return " ".join(shlex.quote(p) for p in parts + list(nets))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.netspec", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common(ap, "write what was written or checked as JSON to FILE ('-': stdout)", examples=[
                   'python -m fcn_repro.netspec --check   # exit 1 when prototxt/ differs from the generator',
                   'python -m fcn_repro.netspec --out /tmp/nets fcn8s fcn32s'])
    ap.add_argument("nets", nargs="*", metavar="NET",
                    help=f"nets to generate (default: all: {', '.join(fcn_nets.NETS)})")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: prototxt/)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if the files on disk differ from the generator's")
    return ap


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    out = args.out or default_out()
    unknown = [n for n in args.nets if n not in fcn_nets.NETS]
    if unknown:
        raise cli.UsageError(f"unknown net(s) {', '.join(unknown)}; known: {', '.join(fcn_nets.NETS)}")
    check_writable(args.json, "--json")
    if not args.check:
        check_writable(out, "--out", directory=True)
    files = fcn_nets.generate_files(args.nets or None)
    say = sys.stderr if args.json == "-" else sys.stdout
    if args.check:
        problems = check(out, files, all_nets=not args.nets)
        if args.json:
            write_json(args.json, {"out": str(out), "files": sorted(files), "ok": not problems,
                                       "problems": problems})
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"{len(problems)} file(s) out of date; to regenerate them run: "
                  f"{regenerate_command(args.out, args.nets)}", file=sys.stderr)
            return 1
        print(f"{len(files)} files in {out} are up to date", file=say)
        return 0
    for rel, text in sorted(files.items()):
        with output_file(out / rel, len(text.encode()), "w") as f:
            f.write(text)
    if args.json:
        write_json(args.json, {"out": str(out), "files": sorted(files), "written": True})
    print(f"wrote {len(files)} files for {len(args.nets or fcn_nets.NETS)} nets to {out}", file=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
