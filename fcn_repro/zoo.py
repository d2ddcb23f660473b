"""The known FCN nets on this machine: ``python -m fcn_repro.zoo``.

    python -m fcn_repro.zoo [--weights-dir DIR] [--json FILE]     # every net, its weights, its references
    python -m fcn_repro.zoo download fcn8s fcn32s [--dir DIR] [--base-url URL]
    python -m fcn_repro.zoo download --all
    python -m fcn_repro.zoo --write-manifest [--weights-dir DIR]

The facts about each net (title, weights file and sources, references) are
its card in :mod:`fcn_repro.registry`; where its files are here is
:mod:`fcn_repro.resolve` (the listing looks where ``fcn_repro.load`` looks:
$FCN_REPRO_WEIGHTS_DIR or the checkout's weights/, then the download cache);
downloads and the manifest of what was seen are :mod:`fcn_repro.hub`. This
module is only the command line (conventions: :mod:`fcn_repro.cli`).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fcn_repro import cli, hub
from fcn_repro.resolve import listing
from fcn_repro.outputs import check_writable, write_json

__all__ = ["main", "main_download"]


def _print_listing(info: dict) -> None:
    print(f"weights looked for in: {', '.join(info['weights_dirs'])}")
    for e in info["nets"]:
        w = e["weights"]
        if w is None:
            state = "(none published)"
        elif w["bundled"]:
            state = "bundled with the package"
        else:
            state = f"here: {w['path']}" if w["present"] else \
                f"not downloaded (python -m fcn_repro.zoo download {e['net']})"
        print(f"\n{e['net']}: {e['title']}  [{e['dataset']} {e['split']}]")
        print(f"  weights {w['file'] if w else '-'}: {state}")
        if w is not None and w["sources"]:
            print(f"  sources: {', '.join(w['sources'])}")
        for r in e["references"]:
            kind = "reference" if r["asserted"] else "context"
            print(f"  {kind} ({r['split']}, {r['head']}): {r['text']}; {r['source']}")
        if w is not None and w["bundled"]:
            print(f"  run it: python -m fcn_repro.evaluate --net {e['net']}")
    for c in info["other_published"]:
        print(f"\n(no net here) {c['net']} on {c['dataset']} {c['split']}, context: {c['text']}; {c['source']}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:
        return main_download(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.zoo", description=__doc__.split("\n\n")[0])
    cli.add_common(ap, examples=[
                   'python -m fcn_repro.zoo   # every net, its weights files and whether they are here',
                   'python -m fcn_repro.zoo download fcn8s   # the original weights, verified',
                   'python -m fcn_repro.zoo --json -'])
    ap.add_argument("--write-manifest", action="store_true",
                    help="regenerate the weights directory's manifest.json from the registry (keeps recorded "
                         "checksums)")
    ap.add_argument("--weights-dir", default=None, help="list (or write the manifest of) this directory only "
                    "(default: where fcn_repro.load looks: $FCN_REPRO_WEIGHTS_DIR or the checkout's weights/, "
                    "then the download cache)")
    return cli.run(_main, ap, argv)


def _main(args) -> int:
    check_writable(args.json, "--json")
    if args.write_manifest:
        p = hub.manifest_path(Path(args.weights_dir) if args.weights_dir else hub.weights_dir())
        check_writable(p, "manifest")
        print(f"wrote {hub.update_manifest(hub.build_manifest, p)}")   # under the manifest's lock
        return 0
    info = listing(args.weights_dir)
    if args.json:
        write_json(args.json, info)
    if args.json != "-":
        _print_listing(info)
    return 0


def main_download(argv=None) -> int:
    """``python -m fcn_repro.zoo download NET... | --all [--dir DIR] [--base-url URL]``."""
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.zoo download",
                                 description="Download the original FCN weights from their sources (the original "
                                             "host, then mirrors), resuming and verifying them.")
    cli.add_common(ap, json_help=None, examples=[
                   'python -m fcn_repro.zoo download fcn8s fcn32s',
                   'python -m fcn_repro.zoo download --all --dir /data/weights',
                   'python -m fcn_repro.zoo download fcn8s --base-url https://mirror.example.org/fcn'])
    ap.add_argument("nets", nargs="*", help="nets (python -m fcn_repro.zoo lists them), file names, or vgg16")
    ap.add_argument("--all", action="store_true", help="every net with published weights")
    ap.add_argument("--dir", default=None, help="where to put them (default: $FCN_REPRO_WEIGHTS_DIR, else "
                                                "$FCN_REPRO_HOME/weights, else ~/.cache/fcn_repro/weights)")
    ap.add_argument("--base-url", action="append", default=None, metavar="URL",
                    help="fetch URL/<file> instead of the registry's sources (repeat for fallbacks)")
    d = hub.Bounds()
    ap.add_argument("--deadline", type=float, default=d.deadline, metavar="SECONDS",
                    help="give up on a source when one file from it takes longer (default: %(default)g)")
    ap.add_argument("--min-rate", type=float, default=d.min_rate / 1024, metavar="KIB_PER_S",
                    help=f"give up on a source slower than this on average over {d.window:g} s "
                         "(default: %(default)g KiB/s; 0: no minimum)")
    ap.add_argument("--stall-timeout", type=float, default=d.timeout, metavar="SECONDS",
                    help="give up on a source when nothing arrives for this long (default: %(default)g)")
    cli.add_progress(ap, help="no progress bars (there are some only when stderr is a terminal)")
    return cli.run(_main_download, ap, argv)


def _main_download(args) -> int:
    if not args.nets and not args.all:
        raise cli.UsageError("name the nets to download (python -m fcn_repro.zoo lists them), or pass --all")
    for opt, v, least in (("--deadline", args.deadline, 0), ("--stall-timeout", args.stall_timeout, 0),
                          ("--min-rate", args.min_rate, None)):
        if not (math.isfinite(v) and (v > least if least is not None else v >= 0)):
            raise cli.UsageError(f"{opt} {v:g}: must be a {'positive' if least is not None else 'non-negative'} "
                                 "finite number")
    bounds = hub.Bounds(deadline=args.deadline, min_rate=args.min_rate * 1024, timeout=args.stall_timeout)
    try:
        hub.download(args.nets, all=args.all, directory=args.dir, base_url=args.base_url,
                 progress=not args.no_progress, bounds=bounds)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
