"""The weight matcher: stored blobs to a net's parameter blobs, by layer name.

One rule, Caffe's (``Net::CopyTrainedLayersFrom`` with ``Blob::ShapeEquals``),
used by every place that puts weights into a net: loading a caffemodel,
FCN surgery (:func:`fcn_repro.caffe.net.transplant`), restoring a snapshot,
sharing a training net's parameters with its validation net, and checking a
file against a prototxt (``convert``).

* Layers are matched by name. A stored layer whose name is not in the net is
  *unexpected* (Caffe ignores it); a net layer with parameters that the source
  lacks is *missing* (it keeps its initial values).
* A matched layer must have as many stored blobs as the net gives it
  parameter blobs (Caffe: "Incompatible number of blobs").
* Each blob must have the parameter's shape exactly, or be a legacy blob
  (V1 files store only num/channels/height/width) whose 4-D shape is the
  parameter's shape left-padded with ones to 4 axes: a V1 InnerProduct weight
  stored as (1, 1, O, I) loads into (O, I), a bias (1, 1, 1, O) into (O,).
* ``surgery=True`` (FCN's net surgery, not a Caffe rule) also accepts a blob
  whose element count equals the parameter's, reshaped: a classifier's fully
  connected weight (4096, 25088) becomes the convolution (4096, 512, 7, 7).
  Blobs that do not fit are then skipped instead of failing the load.

Torch-free: a blob is anything with a ``shape`` (numpy arrays, tensors,
:class:`~fcn_repro.caffe.caffemodel.BlobInfo`) or a shape tuple. Whether a
stored blob's shape is a legacy one is read from its ``legacy_shape``
attribute when it has one (``BlobInfo``); arrays do not say, so for them the
``legacy`` argument decides (default: a 4-D array may be legacy, which is what
loading a V1 file into arrays needs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence

from fcn_repro.caffe.caffemodel import WeightsError

__all__ = ["MatchReport", "match_weights", "blob_fits", "legacy_fits", "blob_shape"]

Shape = tuple


def blob_shape(blob: Any) -> Shape:
    """The shape of a stored blob (array, tensor, BlobInfo or a shape sequence) as a tuple of ints."""
    shape = getattr(blob, "shape", blob)
    try:
        return tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"a weight blob must be an array or a shape, got {type(blob).__name__}") from None


def legacy_fits(stored: Sequence[int], expected: Sequence[int]) -> bool:
    """Caffe's ``Blob::ShapeEquals`` for a blob stored with the legacy 4-D dims.

    The parameter has at most 4 axes and, left-padded with ones to 4 axes,
    equals the stored shape.
    """
    stored, expected = tuple(int(s) for s in stored), tuple(int(s) for s in expected)
    return len(stored) == 4 and len(expected) <= 4 and (1,) * (4 - len(expected)) + expected == stored


def blob_fits(stored: Sequence[int], expected: Sequence[int], legacy: Optional[bool] = None) -> bool:
    """Whether a stored blob of shape ``stored`` loads into a parameter of shape ``expected``.

    ``legacy``: whether ``stored`` came from the legacy 4-D fields; None
    (unknown, as for arrays) lets a 4-D shape count as legacy.
    """
    stored, expected = tuple(int(s) for s in stored), tuple(int(s) for s in expected)
    if stored == expected:
        return True
    return legacy is not False and legacy_fits(stored, expected)


def _count(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclasses.dataclass
class MatchReport:
    """What matching stored weights to a net found.

    ``source``: the weights (file name or a description); ``target``: the net
    (prototxt file name). Every record names the layer and blob index:

    * ``matched``: net layers with parameters whose blobs all fit (copied).
    * ``coerced``: (layer, blob, stored shape, net shape) for blobs that fit
      under another shape (legacy 4-D; surgery reshapes).
    * ``mismatched``: (layer, blob, stored shape, net shape) for blobs that
      do not fit.
    * ``count_mismatch``: (layer, stored blob count, net blob count).
    * ``skipped``: (layer, blob, reason), ``surgery`` only: what was left
      as initialised instead of failing.
    * ``missing``: net layers with parameters the source lacks (net order).
    * ``unexpected``: source layers with blobs the net lacks (source order).
    * ``copies``: (layer, blob) pairs that fit, in net order: what to copy.
    """
    source: str = "<weights>"
    target: str = "<net>"
    surgery: bool = False
    matched: list = dataclasses.field(default_factory=list)
    coerced: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)
    count_mismatch: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    copies: list = dataclasses.field(default_factory=list)

    # Names kept for the builder's users (``net.weights_report.copied``).
    @property
    def copied(self) -> list:
        return self.matched

    @property
    def unused(self) -> list:
        return self.unexpected

    @property
    def complete(self) -> bool:
        """Every net layer got all its blobs and every stored layer was used."""
        return not (self.missing or self.unexpected or self.skipped or self.mismatched or self.count_mismatch)

    def failed(self, strict: bool = False) -> bool:
        """A blob or count that does not fit; with ``strict`` also a missing or unexpected layer."""
        return bool(self.mismatched or self.count_mismatch or (strict and (self.missing or self.unexpected)))

    def errors(self, strict: bool = False) -> list[WeightsError]:
        """One :class:`WeightsError` per failure (file, layer, blob, both shapes), in net order."""
        out = []
        for layer, n, m in self.count_mismatch:
            out.append(WeightsError(
                f"{n} blobs in the weights but the net ({self.target}) gives the layer {m} parameter "
                "blobs (Caffe: incompatible number of blobs)", self.source, layer=layer))
        for layer, i, s, e in self.mismatched:
            out.append(WeightsError(
                f"shape mismatch: the weights have shape {_fmt(s)}, the net ({self.target}) expects "
                f"{_fmt(e)}. To learn this layer from scratch instead, rename it", self.source,
                layer=layer, blob=i))
        if strict and (self.missing or self.unexpected):
            out.append(WeightsError(
                f"does not match {self.target} exactly (strict): net layers without weights "
                f"{self.missing}, weights without layers {self.unexpected}", self.source))
        return out

    def check(self, strict: bool = False) -> "MatchReport":
        """Raise the first of :meth:`errors`; return the report when there is none."""
        errs = self.errors(strict)
        if errs:
            raise errs[0]
        return self

    def messages(self, strict: bool = False) -> list[str]:
        """One line per failure (errors) and per missing/unexpected layer (warnings unless ``strict``)."""
        out = [str(e) for e in self.errors(False)]
        kind = "error" if strict else "warning"
        if self.missing:
            out.append(f"{kind}: net layers with parameters not in {self.source}: {', '.join(self.missing)}")
        if self.unexpected:
            out.append(f"{kind}: layers of {self.source} not in the net: {', '.join(self.unexpected)}")
        return out

    def to_json(self, strict: bool = False) -> dict:
        return {
            "source": self.source, "target": self.target, "ok": not self.failed(strict), "strict": strict,
            "matched": list(self.matched),
            "mismatched": [{"layer": lay, "blob": i, "stored": list(s), "expected": list(e)}
                           for lay, i, s, e in self.mismatched],
            "count_mismatch": [{"layer": lay, "stored": n, "expected": m} for lay, n, m in self.count_mismatch],
            "coerced": [{"layer": lay, "blob": i, "stored": list(s), "shape": list(e)}
                        for lay, i, s, e in self.coerced],
            "skipped": [{"layer": lay, "blob": i, "reason": r} for lay, i, r in self.skipped],
            "missing": list(self.missing), "unexpected": list(self.unexpected),
        }

    def __str__(self) -> str:
        lines = [f"weights from {self.source}: {len(self.matched)} layers copied"]
        for layer, i, s, d in self.coerced:
            lines.append(f"  coerced {layer}[{i}]: {tuple(s)} -> {tuple(d)}")
        for layer, i, why in self.skipped:
            lines.append(f"  skipped {layer}[{i}]: {why}")
        for layer, i, s, d in self.mismatched:
            lines.append(f"  mismatched {layer}[{i}]: {tuple(s)} does not fit {tuple(d)}")
        for layer, n, m in self.count_mismatch:
            lines.append(f"  {layer}: {n} blobs stored, the net has {m}")
        if self.missing:
            lines.append(f"  net layers without weights in the source (left as initialised): {self.missing}")
        if self.unexpected:
            lines.append(f"  source layers not in the net (ignored): {self.unexpected}")
        return "\n".join(lines)


def match_weights(stored: Mapping[str, Sequence[Any]] | Iterable[tuple[str, Sequence[Any]]],
                  expected: Mapping[str, Sequence[Any]], *, source: str = "<weights>", target: str = "<net>",
                  surgery: bool = False, legacy: Optional[bool] = None,
                  layers: Optional[Sequence[str]] = None) -> MatchReport:
    """Match stored blobs to a net's parameter blobs by layer name (Caffe's rule; see the module doc).

    Args:
        stored: layer name -> blobs in Caffe order (arrays, tensors, BlobInfo,
            or shapes), or (name, blobs) pairs (a file's layers in file order).
        expected: net layer name -> its parameter blobs or shapes, Caffe order
            (``net.params``, or ``{name: [shape, ...]}``).
        source, target: the weights' and the net's names, for messages.
        surgery: also accept equal element counts (FC -> convolution) and skip,
            rather than fail, what does not fit.
        legacy: whether stored blobs without a ``legacy_shape`` attribute may
            be legacy 4-D blobs (None: yes for 4-D shapes; False: exact only).
        layers: the net's layer names in order (default: ``expected``'s keys);
            names listed here but absent from ``expected`` have no parameters.

    Nothing is raised here: call :meth:`MatchReport.check` (or read the report).
    """
    pairs = list(stored.items()) if isinstance(stored, Mapping) else [(str(k), v) for k, v in stored]
    src: dict[str, Sequence[Any]] = {}
    for name, blobs in pairs:
        src[str(name)] = blobs
    order = list(layers) if layers is not None else list(expected)
    net_names = set(order) | set(expected)
    rep = MatchReport(source=str(source), target=str(target), surgery=surgery)
    for name in order:
        params = [blob_shape(p) for p in expected.get(name, ())]
        if name not in src:
            if params:
                rep.missing.append(name)
            continue
        blobs = list(src[name])
        if not surgery and len(blobs) != len(params):
            rep.count_mismatch.append((name, len(blobs), len(params)))
            continue
        ok = True
        for i, want in enumerate(params):
            if i >= len(blobs):
                rep.skipped.append((name, i, f"the source has only {len(blobs)} blobs"))
                ok = False
                continue
            b = blobs[i]
            have = blob_shape(b)
            leg = getattr(b, "legacy_shape", legacy)
            if blob_fits(have, want, leg):
                if have != want:
                    rep.coerced.append((name, i, have, want))
            elif surgery and _count(have) == _count(want):
                rep.coerced.append((name, i, have, want))
            elif surgery:
                rep.skipped.append((name, i, f"source shape {have} ({_count(have)} values) cannot "
                                             f"become {want} ({_count(want)} values)"))
                ok = False
                continue
            else:
                rep.mismatched.append((name, i, have, want))
                ok = False
                continue
            rep.copies.append((name, i))
        for i in range(len(params), len(blobs)):
            rep.skipped.append((name, i, f"the net layer has only {len(params)} parameter blobs"))
            ok = False
        if ok and params:
            rep.matched.append(name)
    rep.unexpected = [n for n, b in pairs if str(n) not in net_names and len(b)]
    return rep
