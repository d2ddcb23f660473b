"""The known FCN nets: names, prototxts, original weights, data and reference scores.

This registry is the single source of the published names, URLs and reference
mean IU (FACTS.md); ``weights/manifest.json`` is generated from it and adds
what can only be learned from the files themselves (bytes, sha256), recorded
the first time a file is seen and verified every time after
(:func:`verify_or_record`).

``python -m fcn_repro.zoo`` lists the nets and which weights are present;
``python -m fcn_repro.zoo --write-manifest`` regenerates the manifest
(keeping recorded sizes and checksums).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# the weights' places, manifest and verification live in fcn_repro.hub
from fcn_repro.hub import (  # noqa: F401
    WeightsMismatchError, build_manifest, load_manifest, manifest_path, repo_root, sha256_file,
    verify_or_record, weights_dir, write_manifest,
)

__all__ = [
    "ZooNet", "NETS", "BASE_URL", "get", "names", "weights_dir", "manifest_path", "load_manifest",
    "build_manifest", "write_manifest", "verify_or_record", "WeightsMismatchError", "deploy_prototxt",
    "repo_root", "sha256_file",
]

BASE_URL = "http://dl.caffe.berkeleyvision.org/"

#: Where the VGG team published the ILSVRC VGG-16 caffemodel (their Model Zoo
#: entry); FCN training starts from it (issue 7).
VGG16_FILE = "VGG_ILSVRC_16_layers.caffemodel"
VGG16_URL = "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel"


@dataclass(frozen=True)
class ZooNet:
    """One known net.

    name: our name, the directory under prototxt/ (``prototxt/<name>/deploy.prototxt``).
    caffemodel: original file name (None when no weights were published).
    dataset: reader kind ('voc', 'siftflow', 'nyud', 'context', 'sample').
    split: default evaluation split.
    classes: output head blob -> (label name in the dataset sample, class-list kind).
    inputs: net input blob -> dataset tops concatenated along channels.
    reference_mean_iu: published mean IU in percent (FACTS.md), or None.
    reference_decimals: digits after the point it was published with.
    reference_precise: more digits where FACTS.md gives them.
    """

    name: str
    caffemodel: Optional[str]
    dataset: str
    split: str
    classes: Dict[str, Tuple[str, str]]
    inputs: Dict[str, Tuple[str, ...]] = field(default_factory=lambda: {"data": ("data",)})
    reference_mean_iu: Optional[float] = None
    reference_decimals: Optional[int] = None
    reference_precise: Optional[float] = None
    title: str = ""

    @property
    def url(self) -> Optional[str]:
        return BASE_URL + self.caffemodel if self.caffemodel else None

    @property
    def tops(self) -> Tuple[str, ...]:
        """Dataset inputs this net needs (NYUDv2: 'color', 'hha', 'depth')."""
        out: List[str] = []
        for ts in self.inputs.values():
            out += [t for t in ts if t not in out]
        return tuple(out)

    def weights_path(self, directory: Optional[os.PathLike] = None) -> Optional[Path]:
        if not self.caffemodel:
            return None
        return Path(directory or weights_dir()) / self.caffemodel

    def class_names(self, head: str) -> List[str]:
        from fcn_repro.data.base import class_names

        return class_names(self.classes[head][1])


_VOC = {"score": ("label", "pascal")}
_SIFT = {"score_sem": ("sem", "siftflow"), "score_geo": ("geo", "siftflow-geo")}
_NYUD = {"score": ("label", "nyud")}
_CTX = {"score": ("label", "pascalcontext")}


def _voc(name, file, ref, dec, precise, title):
    return ZooNet(name, file, "voc", "seg11valid", _VOC, reference_mean_iu=ref, reference_decimals=dec,
                  reference_precise=precise, title=title)


NETS: Dict[str, ZooNet] = {n.name: n for n in [
    _voc("fcn32s", "fcn32s-heavy-pascal.caffemodel", 63.63, 2, 63.6261, "FCN-32s PASCAL"),
    _voc("fcn16s", "fcn16s-heavy-pascal.caffemodel", 65.01, 2, 65.0050, "FCN-16s PASCAL"),
    _voc("fcn8s", "fcn8s-heavy-pascal.caffemodel", 65.51, 2, 65.5126, "FCN-8s PASCAL"),
    _voc("fcn8s-atonce", "fcn8s-atonce-pascal.caffemodel", 65.40, 2, 65.3998, "FCN-8s at-once PASCAL"),
    _voc("fcn-alexnet", "fcn-alexnet-pascal.caffemodel", 48.0, 1, None, "FCN-AlexNet PASCAL"),
    ZooNet("siftflow-fcn32s", "siftflow-fcn32s-heavy.caffemodel", "siftflow", "test", _SIFT,
           title="FCN-32s SIFT Flow (semantic + geometric)"),
    ZooNet("siftflow-fcn16s", "siftflow-fcn16s-heavy.caffemodel", "siftflow", "test", _SIFT,
           title="FCN-16s SIFT Flow (semantic + geometric)"),
    ZooNet("siftflow-fcn8s", "siftflow-fcn8s-heavy.caffemodel", "siftflow", "test", _SIFT,
           title="FCN-8s SIFT Flow (semantic + geometric)"),
    ZooNet("nyud-fcn32s-color", "nyud-fcn32s-color-heavy.caffemodel", "nyud", "test", _NYUD,
           inputs={"data": ("color",)}, title="FCN-32s NYUDv2 colour"),
    ZooNet("nyud-fcn32s-hha", "nyud-fcn32s-hha-heavy.caffemodel", "nyud", "test", _NYUD,
           inputs={"data": ("hha",)}, title="FCN-32s NYUDv2 HHA"),
    # No published weights for early fusion are listed in FACTS.md.
    ZooNet("nyud-fcn32s-color-d", None, "nyud", "test", _NYUD,
           inputs={"color": ("color",), "depth": ("depth",)},
           title="FCN-32s NYUDv2 colour + log-depth (early fusion: concatenated inside the net)"),
    ZooNet("nyud-fcn32s-color-hha", "nyud-fcn32s-color-hha-heavy.caffemodel", "nyud", "test", _NYUD,
           inputs={"color": ("color",), "hha": ("hha",)}, title="FCN-32s NYUDv2 colour + HHA (late fusion)"),
    ZooNet("pascalcontext-fcn32s", "pascalcontext-fcn32s-heavy.caffemodel", "context", "val", _CTX,
           title="FCN-32s PASCAL-Context (59 classes + background)"),
    ZooNet("pascalcontext-fcn16s", "pascalcontext-fcn16s-heavy.caffemodel", "context", "val", _CTX,
           title="FCN-16s PASCAL-Context (59 classes + background)"),
    ZooNet("pascalcontext-fcn8s", "pascalcontext-fcn8s-heavy.caffemodel", "context", "val", _CTX,
           title="FCN-8s PASCAL-Context (59 classes + background)"),
]}

#: The bundled sample (fcn_repro/resources/sample): a reduced FCN-8s trained in
#: real Caffe on synthetic shapes. Not a PASCAL model.
SAMPLE = ZooNet("sample", "fcn8s-shapes.caffemodel", "sample", "val", {"score": ("label", "sample")},
                title="bundled sample: reduced FCN-8s on synthetic shapes (not PASCAL)")


def names() -> List[str]:
    return list(NETS)


def get(name: str) -> ZooNet:
    """The zoo entry called ``name`` ('sample' is the bundled model)."""
    if name == "sample":
        return SAMPLE
    try:
        return NETS[name]
    except KeyError:
        raise KeyError(f"unknown net {name!r}; known nets: {', '.join(NETS)}, sample "
                       "(or give a path to a deploy prototxt)") from None


# ------------------------------------------------------------------ locations

def deploy_prototxt(name: str) -> Path:
    """Path of the deploy prototxt of zoo net ``name``.

    In a checkout: prototxt/<name>/deploy.prototxt. Where prototxt/ is not
    available (a non-editable install), the net is generated with the
    project's net specifications (fcn_repro.caffe.fcn_nets) into a cache
    directory ($FCN_REPRO_CACHE or ~/.cache/fcn_repro).
    """
    if name == "sample":
        from fcn_repro.data.base import resource_path

        return resource_path("sample", "fcn8s-shapes.prototxt")
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


# ------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:
        from fcn_repro import hub

        return hub.main_download(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.zoo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-manifest", action="store_true",
                    help="regenerate weights/manifest.json from the registry (keeps recorded checksums)")
    ap.add_argument("--weights-dir", default=None, help="weights directory (default: %(default)s -> "
                    "$FCN_REPRO_WEIGHTS_DIR, the checkout's weights/, or ./weights)")
    args = ap.parse_args(argv)
    wdir = Path(args.weights_dir) if args.weights_dir else weights_dir()
    if args.write_manifest:
        p = manifest_path(wdir)
        prev = load_manifest(p) if p.is_file() else None
        print(f"wrote {write_manifest(build_manifest(prev), p)}")
        return 0
    print(f"weights directory: {wdir}")
    print(f"{'net':<24} {'reference mean IU':>18}  {'weights':<40} present")
    for net in NETS.values():
        ref = "-" if net.reference_mean_iu is None else f"{net.reference_mean_iu:.{net.reference_decimals}f}"
        wp = net.weights_path(wdir)
        present = "yes" if wp is not None and wp.is_file() else ("no" if wp is not None else "(none published)")
        print(f"{net.name:<24} {ref:>18}  {net.caffemodel or '-':<40} {present}")
    print(f"download: {BASE_URL}<file>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
