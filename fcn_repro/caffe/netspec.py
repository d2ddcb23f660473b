"""Write Caffe nets as Python, and compute Crop offsets from the graph.

A net is declared the way pycaffe users are used to: every layer is a Python
call whose positional arguments are its bottoms, and assigning the result to
a :class:`NetSpec` attribute names it::

    from fcn_repro.caffe.netspec import NetSpec, L

    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    n.conv1_1 = L.Convolution(n.data, num_output=64, pad=100, kernel_size=3,
                              param=[dict(lr_mult=1, decay_mult=1),
                                     dict(lr_mult=2, decay_mult=0)])
    n.relu1_1 = L.ReLU(n.conv1_1, in_place=True)   # top "conv1_1", layer "relu1_1"
    ...
    n.score = L.Crop(n.upscore, n.data)             # offset computed: 19
    text = n.to_text()                              # Caffe text format

Rules:

* Keyword arguments that are ``LayerParameter`` fields (``param``,
  ``include``, ``loss_weight``, ``*_param`` messages, ...) go to the layer;
  the others go to the layer type's own parameter message
  (``convolution_param`` for Convolution and Deconvolution, ``pooling_param``
  for Pooling, ``loss_param`` for the ``*Loss`` layers, ...). dicts become
  messages, lists repeated fields, strings quoted strings except in enum
  fields, where ``pool="MAX"`` (or ``P.Pooling.MAX``) is written bare.
  Field names are checked against caffe.proto for the messages listed in
  ``SCHEMA`` (a typo is an error, not a file Caffe rejects later), and fields
  are written in caffe.proto's declaration order, which is how Caffe's own
  text printer orders them (``stride`` before ``group``, ``dilation`` before
  ``pad_h``): a net written here is byte-identical to the one Caffe's NetSpec
  writes for the same layers.
* ``name=`` names a layer explicitly; ``ntop=`` gives a layer several tops
  (``n.data, n.label = L.Python(..., ntop=2)``: the layer takes the first
  top's name); ``in_place=True`` makes top *i* the blob of bottom *i*, as for
  ReLU and Dropout in the FCN nets. Reading a blob after an in-place layer
  has overwritten it is refused (Caffe would silently hand over the
  overwritten values).
* A ``Crop`` given no ``offset`` gets one computed from the graph (see
  below), with ``axis: 2`` unless another axis is given. Write ``offset=0``
  for Caffe's own default of 0.

Crop offsets are computed from the graph by :mod:`fcn_repro.caffe.coord_map`
(:func:`compute_crop_offsets`, also exported here).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from fcn_repro.caffe import schema as _schema
from fcn_repro.caffe.prototxt import (
    Enum, Message, format_text, write_prototxt,
)
from fcn_repro.caffe.coord_map import (AxisMap, CoordMapError, blob_coord_maps, check_crop_offsets,  # noqa: F401
                                       compute_crop_offsets)
from fcn_repro.errors import FcnReproError

__all__ = [
    "NetSpec", "L", "P", "Top", "Layer", "NetSpecError", "CoordMapError", "AxisMap",
    "SCHEMA", "to_message", "compute_crop_offsets", "check_crop_offsets",
    "blob_coord_maps",
]


class NetSpecError(FcnReproError):
    """A net declared with netspec cannot be written as a valid Caffe net."""


# --------------------------------------------------------------- the schema
#
# caffe.proto's messages, fields and enums come from caffe/schema.py (the
# parser, the binary codec and the solver reader read the same tables); the
# builder checks every field it writes against them.

#: enum name -> value names in number order (from caffe/schema.py, the one home of caffe.proto)
ENUMS: dict[str, tuple[str, ...]] = {name: tuple(sorted(vals, key=vals.get))
                                     for name, vals in _schema.ENUMS.items()}

_KINDS = {"string": "s", "bytes": "s", "int32": "i", "uint32": "i", "int64": "i", "uint64": "i",
          "float": "f", "double": "f", "bool": "b"}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a known caffe.proto message, as the builder checks it."""

    name: str
    kind: str            # "s", "i", "f", "b", "enum" or "message"
    type: str | None     # enum name or message name
    repeated: bool


def _spec(f: "_schema.Field") -> FieldSpec:
    if f.type in _KINDS:
        return FieldSpec(f.name, _KINDS[f.type], None, f.repeated)
    return FieldSpec(f.name, "enum" if f.type in _schema.ENUMS else "message", f.type, f.repeated)


#: message name -> {field name -> FieldSpec}, in caffe.proto declaration order, from
#: caffe/schema.py; the messages it keeps opaque are written as given, unchecked.
SCHEMA: dict[str, dict[str, FieldSpec]] = {
    msg: {n: _spec(f) for n, f in fields.items()}
    for msg, fields in _schema.MESSAGES.items() if msg not in _schema.OPAQUE}

# Layer type -> the parameter message that loose keyword arguments fill.
_TYPE_PARAM: dict[str, str] = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "Crop": "crop_param", "Eltwise": "eltwise_param",
    "Scale": "scale_param", "Bias": "bias_param", "Dropout": "dropout_param",
    "LRN": "lrn_param", "ReLU": "relu_param", "PReLU": "prelu_param", "ELU": "elu_param",
    "Sigmoid": "sigmoid_param", "TanH": "tanh_param", "Softmax": "softmax_param",
    "Concat": "concat_param", "Slice": "slice_param", "InnerProduct": "inner_product_param",
    "Input": "input_param", "Python": "python_param", "Data": "data_param",
    "Accuracy": "accuracy_param", "ArgMax": "argmax_param", "BatchNorm": "batch_norm_param",
    "Flatten": "flatten_param", "Reshape": "reshape_param", "Power": "power_param",
    "Exp": "exp_param", "Log": "log_param", "Threshold": "threshold_param",
    "Tile": "tile_param", "Reduction": "reduction_param", "Embed": "embed_param",
    "MVN": "mvn_param", "DummyData": "dummy_data_param", "ImageData": "image_data_param",
    "HDF5Data": "hdf5_data_param", "HDF5Output": "hdf5_output_param", "SPP": "spp_param",
    "Clip": "clip_param", "Swish": "swish_param", "Parameter": "parameter_param",
    "RNN": "recurrent_param", "LSTM": "recurrent_param", "WindowData": "window_data_param",
    "MemoryData": "memory_data_param", "InfogainLoss": "infogain_loss_param",
    "HingeLoss": "hinge_loss_param", "ContrastiveLoss": "contrastive_loss_param",
}


def _type_param(layer_type: str) -> str | None:
    if layer_type in _TYPE_PARAM:
        return _TYPE_PARAM[layer_type]
    if layer_type.endswith("Loss"):
        # SoftmaxWithLoss, EuclideanLoss, ...: ignore_label / normalize live in
        # loss_param (softmax_param's axis must be given as softmax_param=).
        return "loss_param"
    return None


class _EnumNamespace:
    def __init__(self, owner: str, values: Iterable[str]):
        self._owner = owner
        for v in values:
            setattr(self, v, Enum(v))

    def __getattr__(self, name: str) -> Enum:
        raise AttributeError(f"P.{self._owner} has no enum value {name!r}")


class _ParamEnums:
    """``P.Pooling.MAX``, ``P.Eltwise.SUM``, ``P.Phase.TRAIN``, ``P.Loss.VALID``...

    For each known ``XParameter`` message, ``P.X`` holds the values of all its
    enum fields (as :class:`Enum`, written bare).
    """

    def __init__(self) -> None:
        for msg, fields in SCHEMA.items():
            vals: list[str] = []
            for fs in fields.values():
                if fs.kind == "enum":
                    vals.extend(v for v in ENUMS[fs.type] if v not in vals)
            if vals:
                short = msg[:-len("Parameter")] if msg.endswith("Parameter") else msg
                setattr(self, short, _EnumNamespace(short, vals))
        self.Phase = _EnumNamespace("Phase", ENUMS["Phase"])


P = _ParamEnums()


def _check_scalar(fs: FieldSpec, value: Any, where: str) -> Any:
    if fs.kind == "enum":
        if isinstance(value, bool) or not isinstance(value, str):
            raise NetSpecError(f"{where}: field {fs.name!r} is the enum {fs.type} "
                               f"({', '.join(ENUMS[fs.type])}), got {value!r}")
        if value not in ENUMS[fs.type]:
            raise NetSpecError(f"{where}: {value!r} is not a value of enum {fs.type} "
                               f"for field {fs.name!r}; expected one of {', '.join(ENUMS[fs.type])}")
        return Enum(value)
    ok = {
        "s": isinstance(value, str) and not isinstance(value, Enum),
        "i": isinstance(value, int) and not isinstance(value, bool),
        "f": isinstance(value, (int, float)) and not isinstance(value, bool),
        "b": isinstance(value, bool),
    }[fs.kind]
    if not ok:
        want = {"s": "a string", "i": "an integer", "f": "a number", "b": "a bool"}[fs.kind]
        raise NetSpecError(f"{where}: field {fs.name!r} needs {want}, got {value!r}")
    return value


def to_message(type_name: str | None, value: Mapping[str, Any] | Message, where: str = "") -> Message:
    """A :class:`Message` of caffe.proto type ``type_name`` from a dict.

    Fields are checked against :data:`SCHEMA` and written in declaration
    order; sub-messages may be dicts or Messages, repeated fields lists.
    ``type_name`` None (or a message not in SCHEMA) keeps the given order
    without checks. A Message passed in is reordered and checked the same way.
    """
    where = where or (type_name or "message")
    items = list(value.fields) if isinstance(value, Message) else list(value.items())
    schema = SCHEMA.get(type_name or "")
    if schema is None:
        out = Message()
        for k, v in items:
            if isinstance(v, Mapping):
                v = to_message(None, v, f"{where}.{k}")
            out.add(k, list(v) if isinstance(v, tuple) else v)
        return out
    grouped: dict[str, list[Any]] = {}
    for k, v in items:
        if k not in schema:
            raise NetSpecError(f"{where}: {type_name} has no field {k!r}; its fields are "
                               f"{', '.join(schema)}")
        # A dict gives a repeated field as a list; a Message as repeats.
        grouped.setdefault(k, []).extend(list(v) if isinstance(v, (list, tuple)) else [v])
    out = Message()
    for name, fs in schema.items():
        if name not in grouped:
            continue
        vals = grouped[name]
        if not fs.repeated and len(vals) != 1:
            raise NetSpecError(f"{where}: {type_name}.{name} is not repeated; got {len(vals)} values")
        for v in vals:
            if fs.kind == "message":
                if not isinstance(v, (Mapping, Message)):
                    raise NetSpecError(f"{where}: {type_name}.{name} is a {fs.type} message "
                                       f"(give a dict), got {v!r}")
                out.add(name, to_message(fs.type, v, f"{where}.{name}"))
            else:
                out.add(name, _check_scalar(fs, v, f"{where} ({type_name})"))
    return out


# ------------------------------------------------------------ layers, tops

class Top:
    """One output blob of a :class:`Layer` (the ``index``-th top)."""

    __slots__ = ("layer", "index")

    def __init__(self, layer: "Layer", index: int):
        self.layer, self.index = layer, index

    def __repr__(self) -> str:
        return f"<Top {self.index} of {self.layer.type} layer>"


class Layer:
    """A layer declared with ``L.<Type>(*bottoms, **params)``.

    Not written out until a :class:`NetSpec` holding one of its tops (or the
    layer itself, for layers without tops) is turned into a net.
    """

    __slots__ = ("type", "bottoms", "kwargs", "ntop", "in_place", "name", "tops")

    def __init__(self, type_: str, bottoms: Sequence[Top], kwargs: dict[str, Any],
                 ntop: int = 1, in_place: bool = False, name: str | None = None):
        for i, b in enumerate(bottoms):
            if not isinstance(b, Top):
                raise NetSpecError(f"{type_} layer{' ' + name if name else ''}: bottom {i} must be "
                                   f"a top returned by another layer (L.X(...)), got {b!r}")
        if ntop < 0:
            raise NetSpecError(f"{type_} layer: ntop must be >= 0, got {ntop}")
        if in_place and ntop > len(bottoms):
            raise NetSpecError(f"{type_} layer: in_place needs a bottom for each of its {ntop} tops")
        self.type = type_
        self.bottoms = list(bottoms)
        self.kwargs = dict(kwargs)
        self.ntop = ntop
        self.in_place = in_place
        self.name = name
        self.tops = tuple(Top(self, i) for i in range(ntop))

    def __repr__(self) -> str:
        return f"<{self.type} layer{' ' + self.name if self.name else ''}>"

    def auto_crop(self) -> bool:
        """A Crop whose offset is to be computed (no offset given)."""
        if self.type != "Crop":
            return False
        cp = self.kwargs.get("crop_param") or {}
        given = "offset" in self.kwargs or (
            cp.has("offset") if isinstance(cp, Message) else "offset" in cp)
        return not given


class _LayerFactory:
    """``L.Convolution(bottom, num_output=..., ...)``: any Caffe layer type."""

    def __getattr__(self, type_: str):
        if type_.startswith("__"):
            raise AttributeError(type_)

        def make(*bottoms: Top, ntop: int = 1, in_place: bool = False, name: str | None = None,
                 **kwargs: Any):
            layer = Layer(type_, bottoms, kwargs, ntop=ntop, in_place=in_place, name=name)
            if ntop == 0:
                return layer
            if ntop == 1:
                return layer.tops[0]
            return layer.tops

        make.__name__ = type_
        return make


L = _LayerFactory()

_LAYER_FIELDS = SCHEMA["LayerParameter"]
_RESERVED = ("name", "type", "bottom", "top")


class NetSpec:
    """An ordered collection of named tops; ``to_proto()`` writes the net.

    Assign tops as attributes (``n.conv1 = L.Convolution(...)``) or items
    (``n["conv1" + suffix] = ...``). Layers are written in dependency order,
    visiting the assigned tops in assignment order (a layer right after the
    layers it reads), which is the order Caffe's NetSpec writes them in.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_named", {})

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self._named[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named {name!r}") from None

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, tuple):
            raise NetSpecError(f"assigning several tops to {name!r}: unpack them, "
                               f"e.g. n.data, n.label = L.Python(..., ntop=2)")
        if not isinstance(value, (Top, Layer)):
            raise NetSpecError(f"{name!r}: a NetSpec holds tops (L.X(...)), got {value!r}")
        self._named[name] = value

    def __getitem__(self, name: str) -> Any:
        return self._named[name]

    def __contains__(self, name: str) -> bool:
        return name in self._named

    def keys(self) -> list[str]:
        return list(self._named)

    # ------------------------------------------------------------ writing
    def _ordered_layers(self) -> list[Layer]:
        order: list[Layer] = []
        seen: set[int] = set()
        for value in self._named.values():
            root = value.layer if isinstance(value, Top) else value
            # Iterative depth-first post-order: a layer after all its bottoms.
            stack: list[tuple[Layer, int]] = [(root, 0)]
            onstack: set[int] = set()
            while stack:
                layer, i = stack.pop()
                if id(layer) in seen:
                    continue
                if i < len(layer.bottoms):
                    stack.append((layer, i + 1))
                    dep = layer.bottoms[i].layer
                    if id(dep) not in seen:
                        if id(dep) in onstack:
                            raise NetSpecError(f"cycle through {dep!r}")
                        onstack.add(id(dep))
                        stack.append((dep, 0))
                else:
                    seen.add(id(layer))
                    onstack.discard(id(layer))
                    order.append(layer)
        return order

    def to_proto(self, name: str | None = None) -> Message:
        """The NetParameter: ``layer`` messages (plus ``name`` when given)."""
        top_names: dict[int, str] = {}     # id(Top) -> assigned name (first wins)
        layer_names: dict[int, str] = {}   # id(Layer) -> assigned name (ntop=0 layers)
        for attr, value in self._named.items():
            if isinstance(value, Top):
                top_names.setdefault(id(value), attr)
            else:
                layer_names.setdefault(id(value), attr)
        layers = self._ordered_layers()

        taken = set(self._named) | {lay.name for lay in layers if lay.name}
        counters: dict[str, int] = {}

        def auto(type_: str) -> str:
            while True:
                counters[type_] = counters.get(type_, 0) + 1
                cand = f"{type_.lower()}{counters[type_]}"
                if cand not in taken:
                    taken.add(cand)
                    return cand

        blob_of: dict[int, str] = {}          # id(Top) -> blob name
        holder: dict[str, Top] = {}            # blob name -> Top currently holding it
        producer: dict[str, str] = {}          # blob name -> layer that wrote it last
        used_layer_names: set[str] = set()
        out = Message()
        if name:
            out.add("name", name)
        auto_crops: list[str] = []
        for layer in layers:
            lname = layer.name
            if lname is None:
                for t in layer.tops:
                    if id(t) in top_names:
                        lname = top_names[id(t)]
                        break
            if lname is None:
                lname = layer_names.get(id(layer))
            if lname is None:
                lname = auto(layer.type)
            if lname in used_layer_names:
                raise NetSpecError(f"two layers are named {lname!r}")
            used_layer_names.add(lname)
            bottoms: list[str] = []
            for i, b in enumerate(layer.bottoms):
                bname = blob_of[id(b)]
                if holder.get(bname) is not b:
                    raise NetSpecError(
                        f"layer {lname!r} ({layer.type}) reads blob {bname!r} as it was before "
                        f"in-place layer {producer[bname]!r} overwrote it; Caffe would give it the "
                        f"overwritten values. Reorder the layers or do not compute in place.")
                bottoms.append(bname)
            tops: list[str] = []
            for i, t in enumerate(layer.tops):
                if layer.in_place and i < len(bottoms):
                    tname = bottoms[i]
                else:
                    tname = top_names.get(id(t))
                    if tname is None:
                        tname = lname if layer.ntop == 1 else f"{lname}_{i}"
                    if tname in holder:
                        raise NetSpecError(f"layer {lname!r} writes blob {tname!r}, which layer "
                                           f"{producer[tname]!r} already produces (only in-place "
                                           f"layers may write an existing blob)")
                blob_of[id(t)] = tname
                holder[tname] = t
                producer[tname] = lname
                tops.append(tname)
            out.add("layer", self._layer_message(layer, lname, bottoms, tops))
            if layer.auto_crop():
                auto_crops.append(lname)
        if auto_crops:
            offsets = compute_crop_offsets(out, only=auto_crops, filename="<netspec>")
            for lay in out.getall("layer"):
                if lay.get("name") in offsets:
                    cp = lay.sub("crop_param")
                    offs = offsets[lay.get("name")]
                    vals = [offs[0]] if len(set(offs)) == 1 else list(offs)
                    # axis then offset: the field order of CropParameter.
                    new = Message([(k, v) for k, v in cp.fields if k == "axis"])
                    new.add("offset", vals)
                    lay.set("crop_param", new)
        return out

    @staticmethod
    def _layer_message(layer: Layer, name: str, bottoms: list[str], tops: list[str]) -> Message:
        where = f"layer {name!r} ({layer.type})"
        fields: dict[str, Any] = {}
        loose: dict[str, Any] = {}
        for k, v in layer.kwargs.items():
            if k in _RESERVED:
                raise NetSpecError(f"{where}: {k!r} is set by netspec itself")
            if k in _LAYER_FIELDS:
                fields[k] = v
            else:
                loose[k] = v
        if layer.type == "Crop" and layer.auto_crop():
            given = fields.get("crop_param") or {}
            cp = dict(given.fields if isinstance(given, Message) else given.items())
            axis = loose.pop("axis", None)
            if axis is not None:
                cp["axis"] = axis
            cp.setdefault("axis", 2)
            fields["crop_param"] = cp
        if loose:
            pname = _type_param(layer.type)
            if pname is None:
                raise NetSpecError(f"{where}: no parameter message is known for this type, so "
                                   f"{', '.join(loose)} cannot be placed; pass <x>_param=dict(...)")
            base = fields.get(pname) or {}
            merged = list(base.fields if isinstance(base, Message) else base.items())
            merged += list(loose.items())
            fields[pname] = Message(merged)
        msg = Message([("name", name), ("type", layer.type)]
                      + [("bottom", b) for b in bottoms] + [("top", t) for t in tops])
        rest = to_message("LayerParameter", fields, where)
        msg.fields.extend(rest.fields)
        return msg

    def to_text(self, name: str | None = None) -> str:
        """Caffe text format of :meth:`to_proto`."""
        return format_text(self.to_proto(name))

    def write(self, path: str | os.PathLike, name: str | None = None) -> None:
        """Write the net's prototxt to ``path`` (atomically)."""
        write_prototxt(path, self.to_proto(name))
