"""The known FCN nets on this machine: their weights files, prototxts and manifest.

The facts about each net (title, weights file and sources, references) are
its card in :mod:`fcn_repro.registry`; where their files are here, the
manifest (``weights/manifest.json``: generated from the cards, plus the bytes
and sha256 recorded the first time a file is seen and verified every time
after) and the downloads are :mod:`fcn_repro.hub`. This module is the CLI
(and keeps the names callers import from it).

``python -m fcn_repro.zoo`` lists every net, its references, its weights'
sources and whether they are present, and the bundled sample (``--json FILE``);
``python -m fcn_repro.zoo --write-manifest`` regenerates the manifest
(keeping recorded sizes and checksums).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

from fcn_repro import cli, hub, registry

# the library of the weights' places, the nets' files, the manifest and verification is
# fcn_repro.hub; these names have always been importable from here
from fcn_repro.hub import (  # noqa: F401
    WeightsMismatchError, build_manifest, deploy_prototxt, listing, load_manifest, manifest_path, repo_root,
    sha256_file, verify_or_record, weights_dir, weights_path, write_manifest,
)

__all__ = [
    "ZooNet", "NETS", "BASE_URL", "get", "names", "weights_dir", "weights_path", "manifest_path", "load_manifest",
    "build_manifest", "write_manifest", "verify_or_record", "WeightsMismatchError", "deploy_prototxt",
    "repo_root", "sha256_file", "listing", "main",
]

#: The registry's cards (fcn_repro.registry) are the nets; hub adds where
#: their files are on this machine and the manifest of what was seen.
ZooNet = registry.NetCard
NETS: Dict[str, ZooNet] = registry.NETS
SAMPLE = registry.SAMPLE
BASE_URL = registry.BASE_URL
VGG16_FILE = registry.INIT_WEIGHTS["vgg16"].file
VGG16_URL = registry.INIT_WEIGHTS["vgg16"].url
names = registry.names
get = registry.net


# ------------------------------------------------------------------ CLI

def _print_listing(info: dict) -> None:
    print(f"weights directory: {info['weights_dir']}")
    for e in info["nets"] + [info["sample"]]:
        w = e["weights"]
        state = "(none published)" if w is None else ("present" if w["present"] else "not here")
        print(f"\n{e['net']}: {e['title']}  [{e['dataset']} {e['split']}]")
        print(f"  weights {w['file'] if w else '-'}: {state}")
        if w is not None and e["net"] != "sample":
            print(f"  sources: {', '.join(w['sources'])}")
        for r in e["references"]:
            kind = "reference" if r["asserted"] else "context"
            print(f"  {kind} ({r['split']}, {r['head']}): {r['text']}; {r['source']}")
        if e["net"] == "sample":
            print("  run it: python -m fcn_repro.evaluate --net sample")
    for c in info["other_published"]:
        print(f"\n(no net here) {c['net']} on {c['dataset']} {c['split']}, context: {c['text']}; {c['source']}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:
        return hub.main_download(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.zoo", description=__doc__.split("\n\n")[0])
    cli.add_common(ap)
    ap.add_argument("--write-manifest", action="store_true",
                    help="regenerate weights/manifest.json from the registry (keeps recorded checksums)")
    ap.add_argument("--weights-dir", default=None, help="weights directory (default: $FCN_REPRO_WEIGHTS_DIR, "
                    "the checkout's weights/, or ./weights)")
    return cli.run(_main, ap, argv)


def _main(args) -> int:
    cli.check_writable(args.json, "--json")
    wdir = Path(args.weights_dir) if args.weights_dir else weights_dir()
    if args.write_manifest:
        p = manifest_path(wdir)
        cli.check_writable(p, "manifest")
        print(f"wrote {hub.update_manifest(build_manifest, p)}")   # under the manifest's lock
        return 0
    info = listing(wdir)
    if args.json:
        cli.write_json(args.json, info)
    if args.json != "-":
        _print_listing(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
