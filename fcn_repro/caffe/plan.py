"""The execution plan of a built net: typed steps that every executor runs.

The builder (:class:`fcn_repro.caffe.net.Net`) makes a :class:`Plan` from its
layer modules; the plain forward (``Net.forward``), the fast path
(:mod:`fcn_repro.fast`) and the exporters consume it. A plan is a list of
steps in Caffe's execution order, each one of:

* :class:`LayerStep`: one layer module, run as it is.
* :class:`DeconvCropStep`: Deconvolution -> Crop fused into
  ``Deconvolution.forward_cropped`` (only the window the Crop keeps is
  computed).
* :class:`CropSumStep`: Crop -> Eltwise SUM fused into ``ops.crop_sum`` (no
  cropped copy).

Every step names what it reads and writes as :class:`BlobRef` (blob name and
*version*: version 0 is a blob's first value, each in-place layer writes the
next), frees the blobs listed in ``drop`` after it runs (their last reader),
says whether it may run in place (``inplace_ok``) and which of its tops carry
a loss weight (``loss``). :meth:`Step.run` computes the tops from the bottom
tensors; :meth:`Step.apply` does that on an environment (blob name -> value),
naming the step in any error.

Fusion applies only where the intermediate blob has no other reader, carries
no loss, and the fused op reads the same versions the unfused layers would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

from fcn_repro import ops
from fcn_repro.caffe.layers.base import Layer, fmt_shape
from fcn_repro.errors import add_context
from fcn_repro.caffe.layers.crop import Crop
from fcn_repro.caffe.layers.deconvolution import Deconvolution
from fcn_repro.caffe.layers.eltwise import Eltwise
from fcn_repro.caffe.layers.input import Input

__all__ = ["BlobRef", "Step", "LayerStep", "DeconvCropStep", "CropSumStep", "Plan", "make_plan"]


@dataclass(frozen=True)
class BlobRef:
    """A blob as a step sees it: its Caffe name and version (0: first value; +1 per write)."""
    name: str
    version: int = 0

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class Step:
    """One unit of the forward. Subclasses say what runs; the fields say what is read and written.

    ``layers``: the layer modules involved, prototxt order. ``bottoms`` /
    ``tops``: :class:`BlobRef` in :meth:`run`'s argument and result order.
    ``drop``: blob names to free after the step. ``inplace_ok``: the step may
    overwrite its single bottom (no other reader, produced fresh).
    ``loss``: (top index, loss weight) of the loss-weighted tops.
    """
    layers: tuple
    bottoms: tuple
    tops: tuple
    drop: list = field(default_factory=list)
    inplace_ok: bool = False
    loss: list = field(default_factory=list)
    kind = "step"

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.layers)

    @property
    def type_name(self) -> str:
        return "+".join(m.type_name for m in self.layers)

    @property
    def bottom_names(self) -> list:
        return [b.name for b in self.bottoms]

    @property
    def top_names(self) -> list:
        return [t.name for t in self.tops]

    @property
    def fresh(self) -> bool:
        """Every top is a new tensor (a later in-place step may overwrite it)."""
        return True

    def run(self, xs: Sequence[torch.Tensor], inplace: bool = False) -> list:
        raise NotImplementedError

    def apply(self, env: dict, inplace: bool = False, read: Optional[Callable] = None,
              filename: str = "<net>") -> list:
        """Run on ``env`` (blob name -> value): read the bottoms (through ``read``), write the tops.

        An error of the layer's computation keeps its type (a bug stays a bug,
        a net's own error stays one); the step and its bottoms'
        shapes are added to it as a note (:func:`add_context`).
        """
        xs = [env[b.name] if read is None else read(env[b.name]) for b in self.bottoms]
        try:
            ys = self.run(xs, inplace)
        except Exception as e:
            shapes = ", ".join(f"{b.name!r} {fmt_shape(tuple(x.shape))}" for b, x in zip(self.bottoms, xs))
            add_context(e, f"{filename}: in layer {self.name!r} ({self.type_name}), bottoms {shapes}")
            raise
        for t, y in zip(self.tops, ys):
            env[t.name] = y
        return ys


@dataclass
class LayerStep(Step):
    """One layer module, unfused."""
    kind = "layer"

    @property
    def layer(self) -> Layer:
        return self.layers[0]

    @property
    def fresh(self) -> bool:
        return self.layer.fresh_output

    def run(self, xs, inplace=False):
        return self.layer(*xs, inplace=inplace)


@dataclass
class DeconvCropStep(Step):
    """Deconvolution(x) cropped to ``ref`` as its Crop says; bottoms (x, ref), one top."""
    kind = "deconv_crop"

    @property
    def deconv(self) -> Deconvolution:
        return self.layers[0]

    @property
    def crop(self) -> Crop:
        return self.layers[1]

    def run(self, xs, inplace=False):
        (x, ref), d, c = xs, self.deconv, self.crop
        if x.dim() != 4 or ref.dim() != 4:
            raise c.error(f"fused Deconvolution+Crop needs 4-D blobs, got {fmt_shape(tuple(x.shape))} and "
                          f"{fmt_shape(tuple(ref.shape))}")
        full = (x.shape[0], d.num_output) + d.out_size(x.shape[2], x.shape[3])
        shape, _, offs = c.out_shape(full, tuple(ref.shape), check=True)
        return [d.forward_cropped(x, (offs[0], offs[1]), (shape[2], shape[3]))]


@dataclass
class CropSumStep(Step):
    """Eltwise SUM whose bottom ``position`` is Crop(b, ref): bottoms (a, b, ref), one top,
    a * coeff[1 - position] + crop(b) * coeff[position] in one op."""
    position: int = 0
    kind = "crop_sum"

    @property
    def crop(self) -> Crop:
        return self.layers[0]

    @property
    def eltwise(self) -> Eltwise:
        return self.layers[1]

    def run(self, xs, inplace=False):
        (a, b, ref), c, e, k = xs, self.crop, self.eltwise, self.position
        if b.dim() != 4 or ref.dim() != 4:
            raise c.error(f"fused Crop+Eltwise needs 4-D blobs, got {fmt_shape(tuple(b.shape))} and "
                          f"{fmt_shape(tuple(ref.shape))}")
        shape, _, offs = c.out_shape(tuple(b.shape), tuple(ref.shape), check=True)
        if tuple(a.shape) != tuple(shape):
            names = [e.bottom_names[1 - k], c.top_names[0]]
            raise e.error(f"bottoms must have the same shape: {names[0]!r} is {fmt_shape(tuple(a.shape))}, "
                          f"{names[1]!r} is {fmt_shape(shape)}")
        ca, cb = e.coeffs[1 - k], e.coeffs[k]
        coeffs = None if ca == 1.0 and cb == 1.0 else (ca, cb)
        return [ops.crop_sum(a, b, (offs[0], offs[1]), coeffs)]


@dataclass
class Plan:
    """The steps of a net's forward, in order, with the net's inputs and outputs (blob names)."""
    steps: list
    inputs: list
    outputs: list

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i):
        return self.steps[i]


# ---------------------------------------------------------------- building

def _fusable_crop(m: Crop) -> bool:
    """A Crop of the two spatial axes of 4-D blobs (what the fused ops implement)."""
    return m.axis_param in (2, -2) and len(m.offsets_param) in (0, 1, 2)


def make_plan(layers: Sequence[Layer], inputs: Sequence[str], outputs: Sequence[str],
              loss_weights: Mapping[str, Sequence[float]], fuse: bool = True, keep_blobs: bool = False) -> Plan:
    """The plan of a net's layers (prototxt order, after phase filtering; Input layers are skipped).

    ``loss_weights``: layer name -> loss weight per top (only layers with a
    non-zero weight). ``fuse``: make the fused steps; ``keep_blobs``: every
    blob must exist after the forward (no fusion, nothing dropped, nothing in
    place).
    """
    raw = [m for m in layers if not isinstance(m, Input)]
    # Blob versions: every top (and every input) is a new version of its name.
    versions: list[dict] = []
    cur: dict[str, int] = {}
    count: dict[str, int] = {}

    def new_version(name, producer):
        versions.append({"name": name, "producer": producer, "consumers": [], "overwritten_at": 1 << 60,
                         "ref": BlobRef(name, count.get(name, 0))})
        count[name] = count.get(name, 0) + 1
        if name in cur:
            versions[cur[name]]["overwritten_at"] = producer
        cur[name] = len(versions) - 1
        return cur[name]

    for n in inputs:
        new_version(n, -1)
    bver, tver = [], []
    for r, m in enumerate(raw):
        bv = [cur[b] for b in m.bottom_names]
        for pos, v in enumerate(bv):
            versions[v]["consumers"].append((r, pos))
        bver.append(bv)
        tver.append([new_version(t, r) for t in m.top_names])

    def sole_reader(v, r, pos):
        # read by this layer only (so not a net output either)
        return versions[v]["consumers"] == [(r, pos)]

    def current_until(v, step):
        # version v of a blob is still the current one when ``step`` reads
        return versions[v]["overwritten_at"] >= step

    def no_loss(m):
        return m.name not in loss_weights

    deconv_into_crop: dict[int, int] = {}     # crop raw index -> deconv raw index
    crop_into_sum: dict[int, tuple] = {}      # eltwise raw index -> (crop raw index, bottom position)
    absorbed: set[int] = set()
    if fuse and not keep_blobs:
        for c, m in enumerate(raw):
            if not (isinstance(m, Crop) and _fusable_crop(m)):
                continue
            v = bver[c][0]
            p = versions[v]["producer"]
            if (p >= 0 and type(raw[p]) is Deconvolution and len(raw[p].bottom_names) == 1
                    and sole_reader(v, c, 0) and no_loss(raw[p]) and bver[c][1] != v
                    and current_until(bver[p][0], c)):
                deconv_into_crop[c] = p
                absorbed.add(p)
        for e, m in enumerate(raw):
            if not (isinstance(m, Eltwise) and m.operation == "SUM" and len(m.bottom_names) == 2):
                continue
            for k in (0, 1):
                v = bver[e][k]
                p = versions[v]["producer"]
                if (p >= 0 and isinstance(raw[p], Crop) and _fusable_crop(raw[p]) and p not in deconv_into_crop
                        and p not in absorbed and sole_reader(v, e, k) and bver[e][1 - k] != v
                        and no_loss(raw[p]) and all(current_until(u, e) for u in bver[p])):
                    crop_into_sum[e] = (p, k)
                    absorbed.add(p)
                    break

    def refs(vs):
        return tuple(versions[v]["ref"] for v in vs)

    steps: list[Step] = []
    for r, m in enumerate(raw):
        if r in absorbed:
            continue
        if r in deconv_into_crop:
            d = deconv_into_crop[r]
            st = DeconvCropStep((raw[d], m), refs([bver[d][0], bver[r][1]]), refs(tver[r]))
        elif r in crop_into_sum:
            c, k = crop_into_sum[r]
            st = CropSumStep((raw[c], m), refs([bver[r][1 - k], bver[c][0], bver[c][1]]), refs(tver[r]),
                             position=k)
        else:
            st = LayerStep((m,), refs(bver[r]), refs(tver[r]))
        st.loss = [(i, w) for i, w in enumerate(loss_weights.get(m.name, [])) if w != 0]
        steps.append(st)
    _liveness(steps, inputs, keep_blobs)
    return Plan(steps, list(inputs), list(outputs))


def _liveness(steps: list, inputs: Sequence[str], keep_blobs: bool) -> None:
    """Drop lists (free each blob after its last reader) and in-place eligibility."""
    producer: dict[BlobRef, int] = {BlobRef(n, 0): -1 for n in inputs}
    readers: dict[BlobRef, list] = {}
    for s, st in enumerate(steps):
        for b in st.bottoms:
            readers.setdefault(b, []).append(s)
        for t in st.tops:
            producer[t] = s
    if keep_blobs:
        return
    # Linear in the bottoms: membership through sets (a Concat of 100k bottoms
    # would otherwise search its drop list once per bottom).
    tops = [set(st.top_names) for st in steps]
    dropped = [set(st.drop) for st in steps]
    for ref, rs in readers.items():
        last = max(rs)
        if ref.name not in tops[last] and ref.name not in dropped[last]:
            dropped[last].add(ref.name)
            steps[last].drop.append(ref.name)
    for s, st in enumerate(steps):
        if not isinstance(st, LayerStep) or not st.layer.inplace_capable or len(st.bottoms) != 1:
            continue
        b = st.bottoms[0]
        p = producer.get(b, -1)
        st.inplace_ok = p >= 0 and steps[p].fresh and readers.get(b) == [s]
