"""The known FCN nets on this machine: their weights files, prototxts and manifest.

The facts about each net (title, weights file and sources, references) are
its card in :mod:`fcn_repro.registry`; ``weights/manifest.json`` is generated
from the cards and adds
what can only be learned from the files themselves (bytes, sha256), recorded
the first time a file is seen and verified every time after
(:func:`verify_or_record`).

``python -m fcn_repro.zoo`` lists every net, its references, its weights'
sources and whether they are present, and the bundled sample (``--json FILE``);
``python -m fcn_repro.zoo --write-manifest`` regenerates the manifest
(keeping recorded sizes and checksums).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, Optional

from fcn_repro import cli, hub, registry
from fcn_repro.caffe import fcn_nets
from fcn_repro.outputs import output_file

# the weights' places, manifest and verification live in fcn_repro.hub
from fcn_repro.hub import (  # noqa: F401
    WeightsMismatchError, build_manifest, load_manifest, manifest_path, repo_root, sha256_file,
    verify_or_record, weights_dir, write_manifest,
)

__all__ = [
    "ZooNet", "NETS", "BASE_URL", "get", "names", "weights_dir", "weights_path", "manifest_path", "load_manifest",
    "build_manifest", "write_manifest", "verify_or_record", "WeightsMismatchError", "deploy_prototxt",
    "repo_root", "sha256_file",
]

#: The registry's cards (fcn_repro.registry) are the nets; the zoo adds where
#: their files are on this machine and the manifest of what was seen.
ZooNet = registry.NetCard
NETS: Dict[str, ZooNet] = registry.NETS
SAMPLE = registry.SAMPLE
BASE_URL = registry.BASE_URL
VGG16_FILE = registry.INIT_WEIGHTS["vgg16"].file
VGG16_URL = registry.INIT_WEIGHTS["vgg16"].url
names = registry.names
get = registry.net


def weights_path(net: ZooNet, directory: Optional[os.PathLike] = None) -> Optional[Path]:
    """Where the net's original weights file is looked for (None: none published)."""
    if net.name == "sample":
        return registry.resource_path("sample", net.weights.file)
    if not net.caffemodel:
        return None
    if directory is None:   # weights/ or $FCN_REPRO_WEIGHTS_DIR, else the download cache (fcn_repro.hub)
        return hub.find_weights(net.caffemodel) or weights_dir() / net.caffemodel
    return Path(directory) / net.caffemodel


# ------------------------------------------------------------------ locations

def deploy_prototxt(name: str) -> Path:
    """Path of the deploy prototxt of zoo net ``name``.

    In a checkout: prototxt/<name>/deploy.prototxt. Where prototxt/ is not
    available (a non-editable install), the net is generated with the
    project's net specifications (fcn_repro.caffe.fcn_nets) into a cache
    directory under the project's one cache root (:func:`fcn_repro.hub.home`:
    $FCN_REPRO_HOME or ~/.cache/fcn_repro).
    """
    if name == "sample":
        return registry.resource_path("sample", "fcn8s-shapes.prototxt")
    get(name)  # raises for an unknown name
    root = repo_root()
    if root is not None:
        p = root / "prototxt" / name / "deploy.prototxt"
        if p.is_file():
            return p
    p = hub.home() / "prototxt" / name / "deploy.prototxt"
    _generate_deploy(name, p)  # cheap; rewritten when this version's net differs from the cached one
    return p


def _generate_deploy(name: str, path: Path) -> None:
    text = fcn_nets.net_text(name, "deploy")
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with output_file(path, len(text.encode()), "w") as f:
        f.write(text)


# ------------------------------------------------------------------ CLI

def listing(wdir: Path) -> dict:
    """Every net with its weights (present here or not), references and sources; and the sample."""
    def one(net: ZooNet) -> dict:
        wp = weights_path(net, wdir)
        w = net.weights
        return {
            "net": net.name, "title": net.title, "dataset": net.dataset, "split": net.split,
            "weights": None if w is None else {"file": w.file, "sources": list(w.urls), "bytes": w.bytes,
                                               "sha1": w.sha1, "path": str(wp), "present": wp.is_file()},
            "references": [{"source": r.source, "split": r.split, "head": r.head, "asserted": r.asserted,
                            "decimals": r.decimals, "scores": r.scores(), "extra": dict(r.extra),
                            "text": r.text()} for r in net.references],
        }
    context = [{"dataset": d.key, "net": title, "split": r.split, "source": r.source, "scores": r.scores(),
                "text": r.text()} for d in registry.DATASETS.values() for title, r in d.context]
    return {"weights_dir": str(wdir), "nets": [one(n) for n in NETS.values()], "sample": one(SAMPLE),
            "other_published": context,
            "init_weights": {k: {"file": w.file, "sources": list(w.urls), "bytes": w.bytes}
                             for k, w in registry.INIT_WEIGHTS.items()}}


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
        prev = load_manifest(p) if p.is_file() else None
        print(f"wrote {write_manifest(build_manifest(prev), p)}")
        return 0
    info = listing(wdir)
    if args.json:
        cli.write_json(args.json, info)
    if args.json != "-":
        _print_listing(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
