"""The net builder: a Caffe prototxt as a PyTorch module, with Caffe's semantics.

``Net(prototxt, weights=None, phase="TEST")`` builds one layer module per
Caffe layer (see :mod:`fcn_repro.caffe.layers`), in prototxt order, after
Caffe's phase filtering, and runs them as Caffe's ``Net::Forward`` does,
blob by blob, by Caffe blob name:

* Input layers (and legacy ``input:`` fields, and data layers such as FCN's
  ``Python`` data layers) become the net's named inputs: ``net.inputs``.
* ``net.outputs`` are the blobs produced and never consumed, sorted by name
  as Caffe's ``std::set`` lists them.
* In-place layers (top == bottom) overwrite their bottom blob: with
  ``keep_blobs`` the name then holds the newest value (``conv1_1`` holds the
  ReLU output after a forward), as in Caffe.
* Losses: a top with a loss weight (``loss_weight``, or 1 on the first top of
  a loss layer) adds ``weight * sum(top)`` to ``net.loss``; backward through
  autograd then gives Caffe's gradients. Parameters whose ``lr_mult`` is 0
  get ``requires_grad = False``: Caffe computes no gradient for them.

The forward runs the net's execution plan, ``net.plan`` (typed steps with
blob versions, made by :func:`fcn_repro.caffe.plan.make_plan`; the fast path
and the exporters run the same plan). Weights are matched to layers by
:mod:`fcn_repro.caffe.match` (Caffe's shape rule). Speed and memory (the
forward path is what the benchmarks time):

* A blob is dropped as soon as its last consumer has run, unless it is an
  output or ``keep_blobs`` is set.
* Layers that Caffe runs in place (ReLU) run in place when no gradient is
  being recorded and nothing else reads the bottom.
* With ``fuse`` (default) two patterns of the FCN skip architecture become
  single ops of :mod:`fcn_repro.ops`: Deconvolution -> Crop becomes
  ``deconv2d_crop`` (only the kept window is computed) and Crop -> Eltwise
  SUM becomes ``crop_sum`` (no cropped copy). Fusion applies only where the
  intermediate blob has no other reader; ``keep_blobs=True`` turns it off so
  that every blob exists.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fcn_repro import limits

from fcn_repro.caffe.caffemodel import WeightsError  # the package's one weights error (file, layer, blob)
from fcn_repro.caffe.match import MatchReport, blob_fits, match_weights
from fcn_repro.caffe.weights import load_weights as read_weights
from fcn_repro.caffe.prototxt import Message, parse_prototxt, upgrade_net
from fcn_repro.caffe.plan import Plan, make_plan
from fcn_repro.caffe.shapes import layer_included, phase_name
from fcn_repro.caffe.layers import LAYER_TYPES, Layer, LayerError, NetError
from fcn_repro.caffe.layers.base import BlobLimitError
from fcn_repro.caffe.fillers import fill_params
from fcn_repro.caffe.layers.input import Input

__all__ = ["Net", "NetError", "LayerError", "BlobLimitError", "WeightsError", "WeightsReport", "transplant", "copy_matched",
           "layer_included", "blob_fits"]

log = logging.getLogger("fcn_repro.caffe.net")

# -------------------------------------------------------------------- weights

WeightsReport = MatchReport  # what a load or a transplant did (see fcn_repro.caffe.match)


def _weights_dict(weights: Any) -> tuple[dict[str, list], str]:
    """(layer -> list of arrays, description) from a path or a mapping."""
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.exists(path):
            raise WeightsError("weights file does not exist", path)
        return dict(read_weights(path)), path
    if isinstance(weights, Mapping):
        out = {}
        for k, v in weights.items():
            if isinstance(v, (np.ndarray, torch.Tensor)):
                raise WeightsError("must be a list of blobs (Caffe order), got one array", "<weights dict>",
                                   layer=str(k))
            out[str(k)] = list(v)
        return out, "<weights dict>"
    raise TypeError(f"weights must be a path or a dict layer -> list of arrays, got {type(weights).__name__}")


def copy_matched(report: MatchReport, src: Mapping[str, list], params: Mapping[str, list]) -> None:
    """Copy the blobs the matcher accepted (``report.copies``) into the parameters, reshaped.

    ``src``: layer -> blobs (arrays, or tensors on any device: another net's
    ``params``); ``params``: layer -> parameters (``net.params``).
    """
    with torch.no_grad():
        for name, i in report.copies:
            p, a = params[name][i], src[name][i]
            if isinstance(a, torch.Tensor):
                p.copy_(a.detach().reshape(p.shape))
            else:
                p.copy_(torch.from_numpy(np.ascontiguousarray(a)).reshape(p.shape).to(p.dtype))


class Net(nn.Module):
    """A Caffe net as an ``nn.Module``.

    Args:
        prototxt: path, prototxt text, or a parsed :class:`Message` (V1 and
            legacy-input nets are upgraded as Caffe does).
        weights: optional ``.caffemodel`` (V1/V2), ``.caffemodel.h5``, our
            ``.h5``, or a dict layer name -> list of arrays (Caffe order).
            Layers without weights keep their fillers' values (Caffe's
            ``weight_filler`` etc.; the protobuf default is constant 0).
        phase: "TEST" (default) or "TRAIN": filters layers by their
            include/exclude rules and sets Dropout's behaviour.
        fuse: fuse Deconvolution->Crop and Crop->Eltwise(SUM) into single ops.
        keep_blobs: keep every blob of the last forward in ``net.blobs``
            (implies no fusion and no in-place layers, so every blob exists).
        stages, level: the rest of Caffe's NetState, for stage/level rules.
        input_shapes: {blob: shape} for inputs whose shape the prototxt does
            not declare (data layers), used to size parameters.
        strict: with weights, missing or extra layers are errors.
        max_blob_elements: refuse any parameter or top blob with more elements
            (default: ``fcn_repro.limits``' ``blob_elements``, 2**31, or the
            FCN_REPRO_MAX_BLOB_ELEMENTS environment variable); the error
            (:class:`~fcn_repro.caffe.layers.base.BlobLimitError`, a
            ``NetError``) names the file, layer, type and shape.

    Attributes: ``inputs``, ``outputs`` (blob names), ``layer_names``,
    ``layer_types``, ``params`` (layer -> list of ``nn.Parameter`` in Caffe
    order and shapes; shared ParamSpec names give the same object),
    ``param_specs`` (layer -> list of (lr_mult, decay_mult)), ``blobs`` (dict
    blob -> tensor after a forward with ``keep_blobs``), ``layer_tops`` (layer
    -> its tops, with ``keep_blobs``), ``loss`` (the weighted loss of the last
    forward, or None), ``weights_report``.
    """

    def __init__(self, prototxt: Any, weights: Any = None, phase: str = "TEST", fuse: bool = True,
                 keep_blobs: bool = False, *, stages: Iterable[str] = (), level: int = 0,
                 input_shapes: Optional[Mapping[str, Sequence[int]]] = None, strict: bool = False,
                 seed: Optional[int] = None, max_blob_elements: Optional[int] = None):
        super().__init__()
        self.netparam, self.filename = self._parse(prototxt)
        self.name = str(self.netparam.get("name", ""))
        self.phase = phase_name(phase, "phase", NetError)
        self.stages = tuple(str(s) for s in stages)
        self.level = int(level)
        self._fuse = bool(fuse)
        self._keep_blobs = bool(keep_blobs)
        self._plan: Optional[Plan] = None
        self.blobs: dict[str, torch.Tensor] = {}
        self.layer_tops: dict[str, tuple] = {}
        self.loss: Optional[torch.Tensor] = None
        self.weights_report: Optional[WeightsReport] = None
        caps = {} if max_blob_elements is None else {"blob_elements": int(max_blob_elements)}
        with limits.override(**caps):
            self._build(dict(input_shapes or {}))

        loaded: set[str] = set()
        if weights is not None:
            self.weights_report = self.load_weights(weights, strict=strict)
            loaded = {n for n in self.params if n not in self.weights_report.missing}
        self._fill([n for n in self.params if n not in loaded], seed)

    # ------------------------------------------------------------ building
    @staticmethod
    def _parse(prototxt: Any) -> tuple[Message, str]:
        if isinstance(prototxt, Message):
            msg = prototxt
            if msg.has("layers") or msg.has("input"):
                msg = upgrade_net(msg)
            return msg, str(msg.get("name", "<message>")) or "<message>"
        if isinstance(prototxt, (str, os.PathLike)):
            is_text = isinstance(prototxt, str) and ("\n" in prototxt or "{" in prototxt)
            if not is_text and not os.path.exists(os.fspath(prototxt)):
                raise NetError(f"prototxt {os.fspath(prototxt)!r} does not exist")
            msg = parse_prototxt(prototxt)
            return msg, "<text>" if is_text else os.fspath(prototxt)
        raise TypeError(f"prototxt must be a path, text or Message, got {type(prototxt).__name__}")

    def _build(self, input_shapes: dict) -> None:
        self.layers = nn.ModuleDict()
        self._layer_list: list[Layer] = []
        self.layer_names: list[str] = []
        self.layer_types: list[str] = []
        self.inputs: list[str] = []
        self.params: dict[str, list[nn.Parameter]] = {}
        self.param_specs: dict[str, list[tuple[float, float]]] = {}
        self._loss_weights: dict[str, list[float]] = {}
        shared: dict[str, tuple[str, int, nn.Parameter, float]] = {}
        lr_uses: dict[int, list[float]] = {}
        self._by_name: dict[str, Layer] = {}
        shapes: dict[str, tuple] = {}           # current shape of each blob
        unconsumed: dict[str, None] = {}        # ordered set
        used_keys: set[str] = set()
        input_set: set[str] = set()             # self.inputs, for membership in O(1)

        for idx, lp in enumerate(self.netparam.getall("layer")):
            if not isinstance(lp, Message):
                raise NetError(f"{self.filename}: layer #{idx} is not a message")
            if not layer_included(lp, self.phase, self.level, self.stages, self._error):
                continue
            ltype = str(lp.get("type", ""))
            name = str(lp.get("name", "")) or f"{ltype or 'layer'}{idx}"
            if name in self._by_name:
                raise NetError(f"{self.filename}: two layers are named {name!r}; layer names must be unique "
                               "(weights are matched by name)")
            bottoms = [str(b) for b in lp.getall("bottom")]
            tops = [str(t) for t in lp.getall("top")]
            cls = LAYER_TYPES.get(ltype)
            if cls is None:
                raise NetError(f"{self.filename}: layer {name!r} has unknown type {ltype!r}; supported types: "
                               f"{', '.join(sorted(LAYER_TYPES))}")
            for b in bottoms:
                if b not in shapes:
                    raise NetError(f"{self.filename}: layer {name!r} ({ltype}): bottom blob {b!r} is not "
                                   "produced by any earlier layer (nor is it a net input)")
            for j, t in enumerate(tops):
                if t in shapes and not (j < len(bottoms) and bottoms[j] == t):
                    raise NetError(f"{self.filename}: layer {name!r} ({ltype}): top blob {t!r} is produced by "
                                   "multiple sources (only in-place layers, top j == bottom j, may reuse a name)")
            if len(set(tops)) != len(tops):
                raise NetError(f"{self.filename}: layer {name!r} ({ltype}): duplicate top names {tops}")
            module = cls(lp, name=name, phase=self.phase, bottom_names=bottoms, top_names=tops,
                         filename=self.filename, type_name=ltype)
            top_shapes = module.setup([shapes[b] for b in bottoms])
            if isinstance(module, Input):
                top_shapes = [tuple(input_shapes[t]) if t in input_shapes else
                              (s if s is not None else (None,) * 4) for t, s in zip(tops, top_shapes)]
                for t in tops:
                    if t in input_set:
                        raise NetError(f"{self.filename}: input blob {t!r} declared twice")
                    input_set.add(t)
                    self.inputs.append(t)
            for t, s in zip(tops, top_shapes):
                module.check_blob_size(s, f"top blob {t!r}")
            self._register_params(module, lp, shared, lr_uses)
            lw = [float(v) for v in lp.getall("loss_weight")]
            if lw and len(lw) != len(tops):
                raise NetError(f"{self.filename}: layer {name!r}: loss_weight must be given once per top "
                               f"({len(tops)}) or not at all, got {len(lw)}")
            if not lw and module.is_loss:
                lw = [1.0] + [0.0] * (len(tops) - 1)
            if any(w != 0 for w in lw):
                self._loss_weights[name] = lw
            for b in bottoms:
                unconsumed.pop(b, None)
            for t, s in zip(tops, top_shapes):
                shapes[t] = tuple(s)
                unconsumed[t] = None
            key = name.replace(".", "_")
            if key in used_keys or key in ("", ):
                key = f"{key}_{idx}"
            used_keys.add(key)
            self.layers[key] = module
            self._layer_list.append(module)
            self._by_name[name] = module
            self.layer_names.append(name)
            self.layer_types.append(ltype)

        # Caffe: a parameter gets no gradient when its lr_mult is 0 (everywhere it is used).
        for plist in self.params.values():
            for p in plist:
                if all(lr == 0 for lr in lr_uses.get(id(p), [1.0])):
                    p.requires_grad_(False)
        # Caffe lists the net outputs from a std::set: sorted by name.
        self.outputs: list[str] = sorted(unconsumed)
        self.blob_shapes = shapes  # shapes at build time (from the declared input shapes)

    def _register_params(self, module: Layer, lp: Message, shared: dict, lr_uses: dict) -> None:
        specs_msgs = lp.getall("param")
        n = len(module.blobs)
        if len(specs_msgs) > n:
            raise NetError(f"{self.filename}: layer {module.name!r} ({module.type_name}) has {len(specs_msgs)} "
                           f"param specs but only {n} parameter blobs")
        specs = []
        for i in range(n):
            sm = specs_msgs[i] if i < len(specs_msgs) else Message()
            lr, decay = float(sm.get("lr_mult", 1.0)), float(sm.get("decay_mult", 1.0))
            specs.append((lr, decay))
            pname = str(sm.get("name", ""))
            if pname:
                if pname in shared:
                    owner, oi, op, _ = shared[pname]
                    mode = str(sm.get("share_mode", "STRICT")).upper()
                    mine = tuple(module.blobs[i].shape)
                    if tuple(op.shape) != mine:
                        raise NetError(
                            f"{self.filename}: layer {module.name!r} blob {i} shares parameter {pname!r} with "
                            f"layer {owner!r} blob {oi}, but their shapes differ: {tuple(op.shape)} vs {mine}"
                            + (" (PERMISSIVE sharing of differently shaped blobs is not supported)"
                               if mode in ("PERMISSIVE", "1") else ""))
                    module.blobs[i] = op
                else:
                    shared[pname] = (module.name, i, module.blobs[i], lr)
            lr_uses.setdefault(id(module.blobs[i]), []).append(lr)
        if n:
            self.params[module.name] = list(module.blobs)
            self.param_specs[module.name] = specs

    def _fill(self, layers: list[str], seed: Optional[int]) -> None:
        """Caffe's fillers for parameters that no weights were loaded into."""
        if not layers:
            return
        fill_params(self.params, self._included_netparam(), rng=seed, layers=layers)

    def _included_netparam(self) -> Message:
        """The phase-filtered NetParameter, as the fillers must see it."""
        out = Message([(k, v) for k, v in self.netparam.fields if k != "layer"])
        for lp in self.netparam.getall("layer"):
            if not layer_included(lp, self.phase, self.level, self.stages, self._error):
                continue
            out.add("layer", lp)
        return out

    def _error(self, msg: str) -> NetError:
        return NetError(f"{self.filename}: {msg}")

    def layer(self, name: str) -> Layer:
        """The layer module called ``name`` (Caffe's layer name)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.filename}: no layer named {name!r}") from None

    # ------------------------------------------------------------ switches
    @property
    def fuse(self) -> bool:
        return self._fuse

    @fuse.setter
    def fuse(self, v: bool) -> None:
        self._fuse = bool(v)
        self._plan = None

    @property
    def keep_blobs(self) -> bool:
        return self._keep_blobs

    @keep_blobs.setter
    def keep_blobs(self, v: bool) -> None:
        self._keep_blobs = bool(v)
        self._plan = None
        if not v:
            self.blobs, self.layer_tops = {}, {}

    # ------------------------------------------------------------ the plan
    @property
    def plan(self) -> Plan:
        """The execution plan (:mod:`fcn_repro.caffe.plan`) for the current ``fuse``/``keep_blobs``."""
        if self._plan is None:
            self._plan = make_plan(self._layer_list, self.inputs, self.outputs, self._loss_weights,
                                   fuse=self._fuse, keep_blobs=self._keep_blobs)
        return self._plan

    # ------------------------------------------------------------ forward
    def forward(self, *args: Any, **inputs: Any) -> dict[str, torch.Tensor]:
        """Run the net. Inputs by blob name, (N, C, H, W) tensors of any spatial size.

        ``net(data=x)``, or positionally in ``net.inputs`` order: ``net(x)``
        for a single-input net. Returns {output blob: tensor} for
        ``net.outputs``. Sets ``net.loss`` (sum of loss-weighted tops, or
        None) and, with ``keep_blobs``, ``net.blobs`` / ``net.layer_tops``.
        """
        if args:
            if len(args) > len(self.inputs) or any(n in inputs for n in self.inputs[:len(args)]):
                raise NetError(f"{self.filename}: forward() takes the inputs {self.inputs} in this order "
                               f"(or by name); got {len(args)} positional and {sorted(inputs)} by name")
            inputs = {**dict(zip(self.inputs, args)), **inputs}
        if torch.jit.is_tracing():
            # The Crop offsets/sizes and pooled sizes are Python ints computed
            # from the input size: a trace would bake in the example's size
            # and silently return that size for every other input.
            raise NetError(f"{self.filename}: torch.jit.trace cannot record this net (its Crop and Pooling "
                           "sizes depend on the input size and would be frozen at the example's); use "
                           "torch.export.export with dynamic shapes, or fcn_repro.export.to_onnx")
        missing = [n for n in self.inputs if n not in inputs]
        known = set(self.inputs)   # a set: a net of 100k inputs is checked in linear time
        unknown = [n for n in inputs if n not in known]
        if missing or unknown:
            raise NetError(f"{self.filename}: forward() needs the inputs {self.inputs}; "
                           + (f"missing {missing}" if missing else "")
                           + ("; " if missing and unknown else "")
                           + (f"unknown {unknown}" if unknown else ""))
        plan = self.plan
        keep = self._keep_blobs
        env: dict[str, torch.Tensor] = {}
        for n in self.inputs:
            x = inputs[n]
            env[n] = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if keep:
            blobs = dict(env)
            tops_rec = {}
            for m in self._layer_list:
                if isinstance(m, Input):
                    tops_rec[m.name] = tuple(env[t] for t in m.top_names)
        grad_on = torch.is_grad_enabled()
        loss = None
        for st in plan:
            inplace = st.inplace_ok and not (grad_on and env[st.bottoms[0].name].requires_grad)
            ys = st.apply(env, inplace, filename=self.filename)
            for i, w in st.loss:
                term = ys[i].sum() if w == 1.0 else ys[i].sum() * w
                loss = term if loss is None else loss + term
            if keep:
                for t, y in zip(st.tops, ys):
                    blobs[t.name] = y
                tops_rec[st.layers[-1].name] = tuple(ys)
            for n in st.drop:
                del env[n]
        self.loss = loss
        if keep:
            self.blobs, self.layer_tops = blobs, tops_rec
        return {n: env[n] for n in self.outputs}

    @property
    def loss_weights(self) -> dict[str, float]:
        """Top blob -> loss weight, the nonzero ones (Caffe's rule, applied once when the net is built:
        ``loss_weight`` per top where given, else a loss layer's (:attr:`Layer.is_loss`) first top
        weighs 1, LossLayer::LayerSetUp). The forward sums these into :attr:`loss`; training uses them."""
        out: dict[str, float] = {}
        for name, lw in self._loss_weights.items():
            for top, w in zip(self._by_name[name].top_names, lw):
                if w != 0:
                    out[top] = out.get(top, 0.0) + w
        return out

    # ------------------------------------------------------------ weights
    def load_weights(self, weights: Any, strict: bool = False) -> WeightsReport:
        """Copy weights into the net by layer name (Caffe's CopyTrainedLayersFrom).

        ``weights``: a path (.caffemodel V1/V2, .caffemodel.h5, .h5) or a dict
        layer -> list of arrays. Blob counts and shapes must match (Caffe's
        legacy 4-D shapes are accepted where Caffe accepts them); otherwise
        :class:`WeightsError` naming the layer, blob index and both shapes.
        Net layers absent from the source and source layers absent from the
        net are reported (errors with ``strict``). Nothing is copied unless
        every blob fits.
        """
        src, desc = _weights_dict(weights)
        report = match_weights(src, self.params, source=desc, target=self.filename, layers=self.layer_names)
        report.check(strict)
        copy_matched(report, src, self.params)
        _log_report(report)
        return report

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, phase={self.phase}, inputs={self.inputs}, outputs={self.outputs}, "
                f"fuse={self._fuse}, keep_blobs={self._keep_blobs}")


def _log_report(report: WeightsReport) -> None:
    log.info("%s", report)
    if report.missing:
        log.warning("%s: net layers without weights (left as initialised): %s", report.source, report.missing)
    if report.unused:
        log.info("%s: layers not in the net, ignored: %s", report.source, report.unused)


# ---------------------------------------------------------------- transplant

def transplant(net: Net, weights: Any) -> WeightsReport:
    """FCN surgery: copy weights by layer name, coercing shapes where counts agree.

    For every net layer with parameters that the source also has, each blob
    is copied when its shape fits (equal, or Caffe's legacy 4-D form), and
    otherwise *coerced* when the element counts agree: this is how a
    classifier's fully connected layers become the equivalent convolutions
    (VGG fc6 (4096, 25088) -> (4096, 512, 7, 7), fc7 (4096, 4096) ->
    (4096, 4096, 1, 1); the flattening order of InnerProduct is C, H, W, so a
    plain reshape is exact). Blobs whose counts differ are skipped and
    reported, as are layers missing on either side. Returns the report.
    """
    src, desc = _weights_dict(weights)
    report = match_weights(src, net.params, source=desc, target=net.filename, surgery=True,
                           layers=net.layer_names)
    copy_matched(report, src, net.params)
    _log_report(report)
    return report
