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
import hashlib
import json
import os
import sys
import warnings
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Dict, Optional, Tuple

from fcn_repro import registry

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
    return Path(directory or weights_dir()) / net.caffemodel


# ------------------------------------------------------------------ locations

def repo_root() -> Optional[Path]:
    """The source checkout this package runs from, if any (editable installs)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.py").is_file() and (root / "fcn_repro").is_dir():
        return root
    return None


def weights_dir() -> Path:
    """Where original weights are looked for: $FCN_REPRO_WEIGHTS_DIR, else the
    checkout's weights/, else ./weights."""
    env = os.environ.get("FCN_REPRO_WEIGHTS_DIR")
    if env:
        return Path(env)
    root = repo_root()
    if root is not None:
        return root / "weights"
    return Path.cwd() / "weights"


def manifest_path(directory: Optional[os.PathLike] = None) -> Path:
    """The manifest beside the weights (weights/manifest.json)."""
    return Path(directory or weights_dir()) / "manifest.json"


def deploy_prototxt(name: str) -> Path:
    """Path of the deploy prototxt of zoo net ``name``.

    In a checkout: prototxt/<name>/deploy.prototxt. Where prototxt/ is not
    available (a non-editable install), the net is generated with the
    project's net specifications (fcn_repro.caffe.fcn_nets) into a cache
    directory ($FCN_REPRO_CACHE or ~/.cache/fcn_repro).
    """
    if name == "sample":
        return registry.resource_path("sample", "fcn8s-shapes.prototxt")
    get(name)  # raises for an unknown name
    root = repo_root()
    if root is not None:
        p = root / "prototxt" / name / "deploy.prototxt"
        if p.is_file():
            return p
    cache = Path(os.environ.get("FCN_REPRO_CACHE") or Path.home() / ".cache" / "fcn_repro")
    p = cache / "prototxt" / name / "deploy.prototxt"
    _generate_deploy(name, p)  # cheap; rewritten when this version's net differs from the cached one
    return p


def _generate_deploy(name: str, path: Path) -> None:
    try:
        from fcn_repro.caffe import fcn_nets
    except ImportError as e:
        raise FileNotFoundError(
            f"no deploy prototxt for {name!r}: prototxt/{name}/deploy.prototxt is not in a checkout here "
            f"and the net generator fcn_repro.caffe.fcn_nets cannot be imported ({e})") from None
    from fcn_repro.utils import atomic_write

    text = fcn_nets.net_text(name, "deploy")
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_write(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------------ manifest

def _round_half_up(v: float, decimals: int) -> float:
    """Rounding as published tables round (65.0050 -> 65.01), not binary float rounding."""
    q = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(v)).quantize(q, rounding=ROUND_HALF_UP))


def build_manifest(previous: Optional[dict] = None) -> dict:
    """The manifest content from the registry, keeping recorded bytes/sha256."""
    prev = (previous or {}).get("files", {})
    files = {}

    def entry(file, url, extra):
        old = prev.get(file, {})
        d = {"url": url, "bytes": old.get("bytes"), "sha256": old.get("sha256")}
        d.update(extra)
        files[file] = d

    for net in NETS.values():
        if not net.caffemodel:
            continue
        ref = net.reference(asserted=True)
        entry(net.caffemodel, net.url, {
            "net": net.name, "dataset": net.dataset, "split": net.split,
            # the two-decimal figure of the release table, and the four-decimal one where published
            "expected_mean_iu": None if ref is None else _round_half_up(ref.mean_iu, min(ref.decimals, 2)),
            "expected_mean_iu_precise": ref.mean_iu if ref is not None and ref.decimals > 2 else None,
        })
    entry(VGG16_FILE, VGG16_URL, {"net": None, "note": "ILSVRC VGG-16 (V1 format), the start of FCN training"})
    return {
        "about": ("Original FCN caffemodels. bytes and sha256 are null until a file is first seen; "
                  "fcn_repro.zoo.verify_or_record() records them then and verifies them after. "
                  "Generated from fcn_repro/zoo.py (python -m fcn_repro.zoo --write-manifest)."),
        "base_url": BASE_URL,
        "files": files,
    }


def load_manifest(path: Optional[os.PathLike] = None) -> dict:
    """The manifest at ``path`` (default weights/manifest.json); built from the
    registry when the file does not exist."""
    p = Path(path) if path else manifest_path()
    if p.is_file():
        with open(p, "r", encoding="utf-8") as f:
            return json.load(f)
    return build_manifest()


def write_manifest(manifest: dict, path: Optional[os.PathLike] = None) -> Path:
    from fcn_repro.utils import atomic_write

    p = Path(path) if path else manifest_path()
    with atomic_write(p, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return p


class WeightsMismatchError(ValueError):
    """A weights file differs from the size/checksum recorded in the manifest."""


def sha256_file(path: os.PathLike, progress: bool = True) -> Tuple[int, str]:
    """(bytes, sha256 hex) of a file, streamed; a progress bar for big files."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    bar = None
    if progress and size > (64 << 20):
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}", leave=False)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return size, h.hexdigest()


def verify_or_record(path: os.PathLike, manifest: Optional[os.PathLike] = None, progress: bool = True) -> dict:
    """Check a weights file against the manifest, recording it if first seen.

    The entry is found by file name. When its bytes/sha256 are null they are
    computed and written into the manifest (status 'recorded'); when present
    the file must match them (status 'verified') or WeightsMismatchError is
    raised naming both checksums. A file not in the manifest gives status
    'unknown' (user weights are fine; nothing to check). If the manifest
    cannot be written the status is 'unrecorded' (with a warning).

    Returns {'status', 'file', 'bytes', 'sha256', 'manifest'}.
    """
    path = Path(path)
    mpath = Path(manifest) if manifest else manifest_path()
    m = load_manifest(mpath)
    entry = m.get("files", {}).get(path.name)
    out = {"status": "unknown", "file": str(path), "bytes": None, "sha256": None, "manifest": str(mpath)}
    if entry is None:
        return out
    size, digest = sha256_file(path, progress=progress)
    out.update(bytes=size, sha256=digest)
    if entry.get("sha256") is None or entry.get("bytes") is None:
        entry["bytes"], entry["sha256"] = size, digest
        try:
            write_manifest(m, mpath)
            out["status"] = "recorded"
        except OSError as e:
            warnings.warn(f"could not record {path.name} in {mpath}: {e}")
            out["status"] = "unrecorded"
        return out
    if entry["bytes"] != size or entry["sha256"] != digest:
        raise WeightsMismatchError(
            f"{path} does not match the manifest {mpath}: expected {entry['bytes']} bytes, sha256 "
            f"{entry['sha256']}; found {size} bytes, sha256 {digest}. The file is corrupt or not the "
            f"original (download it again from {entry.get('url')}).")
    out["status"] = "verified"
    return out


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
    return {"weights_dir": str(wdir), "nets": [one(n) for n in NETS.values()], "sample": one(SAMPLE),
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


def main(argv=None) -> int:
    from fcn_repro import cli

    ap = argparse.ArgumentParser(prog="python -m fcn_repro.zoo", description=__doc__.split("\n\n")[0])
    cli.add_common(ap)
    ap.add_argument("--write-manifest", action="store_true",
                    help="regenerate weights/manifest.json from the registry (keeps recorded checksums)")
    ap.add_argument("--weights-dir", default=None, help="weights directory (default: $FCN_REPRO_WEIGHTS_DIR, "
                    "the checkout's weights/, or ./weights)")
    return cli.run(_main, ap, argv)


def _main(args) -> int:
    from fcn_repro import cli

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
