"""Per-blob comparison of our forward with a reference (Caffe's blobs saved to .npz).

    python -m fcn_repro.compare NET.prototxt WEIGHTS REFERENCE.npz [--prefix s0/] [--tol 1e-5]
                                [--no-fuse] [--phase TEST] [--double] [--json FILE|-]

The reference holds blobs by Caffe name, optionally under a prefix
(``s0/conv1_1``); the net's inputs are read from it, the net is run, and for
every blob, in the order the net produces them, the tool prints its shape,
the max abs difference, the max relative difference (max abs diff / max abs
reference value) and, for score blobs (blobs whose channel axis has as many
entries as a net output's: the class scores), the fraction of positions
whose argmax over classes agrees. Caffe's auto-inserted split blobs
(``pool4_pool4_0_split_0``) are compared with the blob they copy; reference
blobs the net does not have are listed as skipped.

All blobs are computed without fusion (fused intermediates do not exist);
unless ``--no-fuse``, the outputs are computed a second time with fusion on,
and that is what the output rows compare. The exit status is 1 when a blob
differs by more than the tolerance, a shape differs, or an output's argmax
disagrees anywhere; 2 on usage or load errors.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from fcn_repro import cli
from fcn_repro.caffe import Net
from fcn_repro.errors import FcnReproError
from fcn_repro.npz import npz_members, read_npz
from fcn_repro.outputs import check_writable, jsonable, write_json

__all__ = ["BlobReport", "CompareResult", "CompareError", "compare", "main", "split_blob_source", "pick_prefix"]


class CompareError(FcnReproError):
    """A reference that does not hold what the net needs (its inputs, a blob)."""


@dataclass
class BlobReport:
    name: str
    shape: list
    ref_shape: list
    max_abs: float
    max_rel: float
    argmax_agree: Optional[float] = None   # fraction of positions, score blobs only
    source: str = ""                        # for split blobs: "layer:top" whose value it holds
    output: bool = False
    fused: bool = False                     # compared on the fused forward
    ok: bool = True


@dataclass
class CompareResult:
    net: str
    weights: str
    reference: str
    prefix: str
    tol: float
    fuse: bool
    dtype: str
    blobs: list = field(default_factory=list)
    skipped: list = field(default_factory=list)            # (reference blob, why)
    not_in_reference: list = field(default_factory=list)   # net blobs the reference lacks

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.blobs)

    def to_dict(self) -> dict:
        """Plain data for JSON (non-finite numbers, as from a shape mismatch, become None)."""
        d = asdict(self)
        d["ok"] = self.ok
        d["worst_rel"] = max((b.max_rel for b in self.blobs if math.isfinite(b.max_rel)), default=0.0)
        return jsonable(d)


def split_blob_source(net, blob: str) -> Optional[tuple[str, int]]:
    """(layer, top index) whose top a Caffe split blob copies, or None.

    Caffe's InsertSplits names the copies of a blob read by several layers
    ``{blob}_{producing layer}_{top index}_split_{j}``; they hold that
    version of the blob (before any later in-place layer changed it).
    """
    for layer, m in zip(net.layer_names, net._layer_list):
        for i, t in enumerate(m.top_names):
            prefix = f"{t}_{layer}_{i}_split_"
            if blob.startswith(prefix) and blob[len(prefix):].isdigit():
                return layer, i
    return None


def pick_prefix(keys: Sequence[str], inputs: Sequence[str], prefix: Optional[str]) -> str:
    """The reference prefix: the one given, else the one holding every net input and the most blobs."""
    if prefix is not None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        missing = [n for n in inputs if prefix + n not in keys]
        if missing:
            raise CompareError(f"the reference has no {[prefix + n for n in missing]} (the net's inputs under "
                             f"prefix {prefix!r}); prefixes present: {_prefixes(keys)}")
        return prefix
    cands = []
    for p in [""] + _prefixes(keys):
        if all(p + n in keys for n in inputs):
            cands.append((-sum(k.startswith(p) and "/" not in k[len(p):] for k in keys), p))
    if not cands:
        raise CompareError(f"no prefix of the reference holds every net input {list(inputs)}; "
                         f"prefixes present: {_prefixes(keys)}")
    return sorted(cands)[0][1]


def _prefixes(keys: Sequence[str]) -> list[str]:
    return sorted({k[:k.index("/") + 1] for k in keys if "/" in k})


def _rel(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if ref.size == 0:
        return 0.0, 0.0
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max())
    if not math.isfinite(diff):
        return diff, math.inf
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))


def compare(prototxt: Any, weights: Any, reference: Any, prefix: Optional[str] = None, tol: float = 1e-5,
            fuse: bool = True, phase: str = "TEST", dtype: torch.dtype = torch.float32) -> CompareResult:
    """Run the net on the reference's inputs and compare every blob (see the module docstring).

    ``reference``: a path to an .npz or a mapping name -> array.
    """
    from_file = isinstance(reference, (str, bytes)) or hasattr(reference, "__fspath__")
    # a file: every member's header checked before anything is read (fcn_repro.npz)
    keys = list(npz_members(reference)) if from_file else list(reference.keys())
    net = Net(prototxt, weights, phase=phase, fuse=False, keep_blobs=True).to(dtype)
    pre = pick_prefix(keys, net.inputs, prefix)
    ref = read_npz(reference, [k for k in keys if k.startswith(pre)]) if from_file else reference
    res = CompareResult(net=str(prototxt), weights=str(weights), reference=str(reference), prefix=pre, tol=tol,
                        fuse=fuse, dtype=str(dtype).replace("torch.", ""))
    inputs = {n: torch.from_numpy(np.asarray(ref[pre + n])).to(dtype) for n in net.inputs}
    with torch.no_grad():
        net(**inputs)
        blobs, layer_tops = net.blobs, net.layer_tops
        fused_out = {}
        if fuse:
            net.keep_blobs = False
            net.fuse = True
            fused_out = net(**inputs)

    # The class count(s): channel sizes of the net's outputs with a channel axis.
    out_channels = {int(blobs[o].shape[1]) for o in net.outputs if blobs[o].dim() >= 2 and blobs[o].shape[1] > 1}

    ref_blobs = [k[len(pre):] for k in keys if k.startswith(pre) and "/" not in k[len(pre):]]
    # Net order: each blob where the net first produces it; split blobs right after their source.
    order: dict[str, int] = {}
    for i, layer in enumerate(net.layer_names):
        for t in net.layer(layer).top_names:
            order.setdefault(t, 2 * i)
    placed = []
    for b in ref_blobs:
        if b in blobs:
            placed.append((order.get(b, -1), 0, b, None))
            continue
        src = split_blob_source(net, b)
        if src is None:
            res.skipped.append((b, "not a blob of this net (nor a Caffe split of one)"))
            continue
        placed.append((2 * net.layer_names.index(src[0]) + 1, 1, b, src))
    placed.sort(key=lambda t: (t[0], t[1], t[2]))

    for _, _, b, src in placed:
        t = blobs[b] if src is None else layer_tops[src[0]][src[1]]
        is_out = src is None and b in net.outputs
        if is_out and fuse:
            t = fused_out[b]
        got, r = t.detach().cpu().numpy(), np.asarray(ref[pre + b])
        rep = BlobReport(name=b, shape=list(got.shape), ref_shape=list(r.shape), max_abs=math.nan, max_rel=math.nan,
                         source=f"{src[0]}:{src[1]}" if src else "", output=is_out, fused=is_out and fuse)
        if got.shape != r.shape:
            rep.ok = False
        else:
            rep.max_abs, rep.max_rel = _rel(got, r)
            rep.ok = rep.max_rel <= tol
            if got.ndim >= 2 and got.shape[1] in out_channels:
                rep.argmax_agree = float((got.argmax(1) == r.argmax(1)).mean()) if got.size else 1.0
                if is_out and rep.argmax_agree < 1.0:
                    rep.ok = False
        res.blobs.append(rep)
    compared = {b.name for b in res.blobs}
    res.not_in_reference = [b for b in blobs if b not in compared]
    return res


def format_table(res: CompareResult) -> str:
    lines = [f"net {res.net}  weights {res.weights}",
             f"reference {res.reference}  prefix {res.prefix!r}  tol {res.tol:g}  dtype {res.dtype}  "
             f"fusion {'on (outputs)' if res.fuse else 'off'}"]
    w = max([len(b.name) for b in res.blobs] + [4])
    lines.append(f"{'blob':<{w}}  {'shape':<20}  {'max abs diff':>12}  {'max rel diff':>12}  {'argmax':>8}  ")
    for b in res.blobs:
        shape = "x".join(map(str, b.shape)) if b.shape == b.ref_shape else (
            f"{'x'.join(map(str, b.shape))}!={'x'.join(map(str, b.ref_shape))}")
        am = "" if b.argmax_agree is None else f"{100 * b.argmax_agree:7.3f}%"
        note = []
        if b.source:
            note.append(f"split of {b.source}")
        if b.output:
            note.append("output" + (" (fusion on)" if b.fused else ""))
        if not b.ok:
            note.append("FAIL")
        lines.append(f"{b.name:<{w}}  {shape:<20}  {b.max_abs:12.3e}  {b.max_rel:12.3e}  {am:>8}  {' '.join(note)}")
    for name, why in res.skipped:
        lines.append(f"skipped {name}: {why}")
    if res.not_in_reference:
        lines.append(f"net blobs not in the reference: {', '.join(res.not_in_reference)}")
    worst = max(res.blobs, key=lambda b: (not b.ok, b.max_rel if math.isfinite(b.max_rel) else math.inf),
                default=None)
    nbad = sum(not b.ok for b in res.blobs)
    lines.append(f"{len(res.blobs)} blobs compared, {nbad} over tolerance"
                 + (f"; worst {worst.name} {worst.max_rel:.3e}" if worst else "")
                 + (": OK" if res.ok else ": FAIL"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fcn_repro.compare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_common(ap, "write the result as JSON to FILE ('-': stdout, instead of the table)", examples=[
                   'python -m fcn_repro.compare fcn8s.prototxt fcn8s.caffemodel caffe_blobs.npz --tol 1e-5',
                   'python -m fcn_repro.compare net.prototxt net.caffemodel ref.npz --prefix s0/ --json -   # as JSON'])
    ap.add_argument("prototxt", help="the net (deploy prototxt)")
    ap.add_argument("weights", help=".caffemodel, .caffemodel.h5 or .h5")
    ap.add_argument("reference", help=".npz of reference blobs by Caffe name")
    ap.add_argument("--prefix", default=None, help="key prefix of the blobs in the npz (e.g. s0/); "
                                                   "default: the one holding the net's inputs and the most blobs")
    ap.add_argument("--tol", type=float, default=1e-5, help="max relative difference allowed (default 1e-5)")
    ap.add_argument("--no-fuse", action="store_true", help="compute the outputs without fused ops too")
    ap.add_argument("--phase", default="TEST", choices=["TEST", "TRAIN"],
                    help="the phase the net is built in (Caffe's include/exclude rules; default: %(default)s)")
    ap.add_argument("--double", action="store_true", help="compute in float64 (a diagnostic)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, build_parser(), argv, inputs=("prototxt", "weights", "reference"))


def _main(args: argparse.Namespace) -> int:
    check_writable(args.json, "--json")
    for what, path in (("prototxt", args.prototxt), ("weights", args.weights), ("reference", args.reference)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such {what} file")
    try:
        res = compare(args.prototxt, args.weights, args.reference, prefix=args.prefix, tol=args.tol,
                      fuse=not args.no_fuse, phase=args.phase,
                      dtype=torch.float64 if args.double else torch.float32)
    except KeyError as e:  # a blob the reference lacks
        raise CompareError(f"{args.reference}: {e.args[0] if e.args else e}") from None
    if args.json:
        write_json(args.json, res.to_dict())
    if args.json != "-":
        print(format_table(res))
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
