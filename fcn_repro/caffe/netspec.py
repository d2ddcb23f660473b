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

Crop offsets (what Caffe's Python ``coord_map`` did for the FCN nets; this is
our own derivation). Along one spatial axis a Convolution or Pooling with
kernel k, stride s, pad p and dilation d centres output position o on input
position ``s*o + (d*(k-1)/2 - p)``: an affine map of coordinates. A
Deconvolution is the adjoint of such a convolution, so its output position o
maps to input position ``(o - (d*(k-1)/2 - p)) / s``. Elementwise layers
(ReLU, Dropout, LRN, Scale, Eltwise, Concat along channels, ...) keep
coordinates; a Crop shifts them by its offset. Composing these maps from
every data blob (a layer with no bottoms, or a layer whose output has no
coordinate relation to its input: InnerProduct, global pooling, ...) gives
each blob ``x_root = a*x + b`` per root and axis, computed exactly with
fractions. ``Crop(A, B)`` must place A's position ``y + offset`` on B's
position ``y``, so ``a_A*(y + offset) + b_A = a_B*y + b_B`` for all y: the
scales must be equal and ``offset = (b_B - b_A) / a_A``, which must be a
non-negative integer. Every root the two bottoms share must give the same
offset; bottoms sharing no root, different scales, or a fractional or
negative offset are errors that name the file, the layer and the blobs.
For FCN-32s this gives 19, for FCN-16s 5 and 27, for FCN-8s 5, 9 and 31,
and for FCN-AlexNet 18.

:func:`compute_crop_offsets`, :func:`check_crop_offsets` and
:func:`blob_coord_maps` run the same analysis over any parsed prototxt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from fcn_repro.caffe.prototxt import (
    Enum, Message, format_text, is_v1_net, upgrade_net, write_prototxt,
)
from fcn_repro.caffe.shapes import conv_window, layer_included, pool_window

__all__ = [
    "NetSpec", "L", "P", "Top", "Layer", "NetSpecError", "CoordMapError", "AxisMap",
    "SCHEMA", "to_message", "compute_crop_offsets", "check_crop_offsets",
    "blob_coord_maps",
]


class NetSpecError(ValueError):
    """A net declared with netspec cannot be written as a valid Caffe net."""


class CoordMapError(ValueError):
    """Crop offsets cannot be derived from the graph (names file, layer, blobs)."""


# --------------------------------------------------------------- the schema
#
# caffe.proto (BVLC master) messages, fields in declaration order. Notation:
# ``field:t`` with t one of s (string), i (integer), f (float), b (bool);
# ``field:E.Name`` an enum (values in ENUMS); ``field:MessageName`` a
# sub-message; a trailing ``*`` marks a repeated field. Messages not listed
# here (rare layer parameters) are written as given, without checks.

ENUMS: dict[str, tuple[str, ...]] = {
    "Phase": ("TRAIN", "TEST"),
    "DimCheckMode": ("STRICT", "PERMISSIVE"),
    "VarianceNorm": ("FAN_IN", "FAN_OUT", "AVERAGE"),
    "NormalizationMode": ("FULL", "VALID", "BATCH_SIZE", "NONE"),
    "Engine": ("DEFAULT", "CAFFE", "CUDNN"),
    "DB": ("LEVELDB", "LMDB"),
    "EltwiseOp": ("PROD", "SUM", "MAX"),
    "NormRegion": ("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
    "PoolMethod": ("MAX", "AVE", "STOCHASTIC"),
    "RoundMode": ("CEIL", "FLOOR"),
    "ReductionOp": ("SUM", "ASUM", "SUMSQ", "MEAN"),
    "SnapshotFormat": ("HDF5", "BINARYPROTO"),
    "SolverMode": ("CPU", "GPU"),
    "SolverType": ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"),
}

_F = "FillerParameter"
_SCHEMA_TEXT: dict[str, str] = {
    "NetParameter": "name:s input:s* input_shape:BlobShape* input_dim:i* force_backward:b "
                    "state:NetState debug_info:b layer:LayerParameter*",
    "NetState": "phase:E.Phase level:i stage:s*",
    "NetStateRule": "phase:E.Phase min_level:i max_level:i stage:s* not_stage:s*",
    "ParamSpec": "name:s share_mode:E.DimCheckMode lr_mult:f decay_mult:f",
    "BlobShape": "dim:i*",
    "FillerParameter": "type:s value:f min:f max:f mean:f std:f sparse:i variance_norm:E.VarianceNorm",
    "LayerParameter": (
        "name:s type:s bottom:s* top:s* phase:E.Phase loss_weight:f* param:ParamSpec* "
        "blobs:BlobProto* propagate_down:b* include:NetStateRule* exclude:NetStateRule* "
        "transform_param:TransformationParameter loss_param:LossParameter "
        "accuracy_param:AccuracyParameter argmax_param:ArgMaxParameter "
        "batch_norm_param:BatchNormParameter bias_param:BiasParameter clip_param:ClipParameter "
        "concat_param:ConcatParameter contrastive_loss_param:ContrastiveLossParameter "
        "convolution_param:ConvolutionParameter crop_param:CropParameter "
        "data_param:DataParameter dropout_param:DropoutParameter "
        "dummy_data_param:DummyDataParameter eltwise_param:EltwiseParameter "
        "elu_param:ELUParameter embed_param:EmbedParameter exp_param:ExpParameter "
        "flatten_param:FlattenParameter hdf5_data_param:HDF5DataParameter "
        "hdf5_output_param:HDF5OutputParameter hinge_loss_param:HingeLossParameter "
        "image_data_param:ImageDataParameter infogain_loss_param:InfogainLossParameter "
        "inner_product_param:InnerProductParameter input_param:InputParameter "
        "log_param:LogParameter lrn_param:LRNParameter memory_data_param:MemoryDataParameter "
        "mvn_param:MVNParameter parameter_param:ParameterParameter "
        "pooling_param:PoolingParameter power_param:PowerParameter prelu_param:PReLUParameter "
        "python_param:PythonParameter recurrent_param:RecurrentParameter "
        "reduction_param:ReductionParameter relu_param:ReLUParameter "
        "reshape_param:ReshapeParameter scale_param:ScaleParameter "
        "sigmoid_param:SigmoidParameter softmax_param:SoftmaxParameter spp_param:SPPParameter "
        "slice_param:SliceParameter swish_param:SwishParameter tanh_param:TanHParameter "
        "threshold_param:ThresholdParameter tile_param:TileParameter "
        "window_data_param:WindowDataParameter"),
    "TransformationParameter": "scale:f mirror:b crop_size:i mean_file:s mean_value:f* "
                               "force_color:b force_gray:b",
    "LossParameter": "ignore_label:i normalization:E.NormalizationMode normalize:b",
    "AccuracyParameter": "top_k:i axis:i ignore_label:i",
    "ArgMaxParameter": "out_max_val:b top_k:i axis:i",
    "BatchNormParameter": "use_global_stats:b moving_average_fraction:f eps:f",
    "BiasParameter": f"axis:i num_axes:i filler:{_F}",
    "ClipParameter": "min:f max:f",
    "ConcatParameter": "axis:i concat_dim:i",
    "ConvolutionParameter": (
        "num_output:i bias_term:b pad:i* kernel_size:i* stride:i* dilation:i* pad_h:i pad_w:i "
        f"kernel_h:i kernel_w:i stride_h:i stride_w:i group:i weight_filler:{_F} "
        f"bias_filler:{_F} engine:E.Engine axis:i force_nd_im2col:b"),
    "CropParameter": "axis:i offset:i*",
    "DataParameter": "source:s batch_size:i rand_skip:i backend:E.DB scale:f mean_file:s "
                     "crop_size:i mirror:b force_encoded_color:b prefetch:i",
    "DropoutParameter": "dropout_ratio:f",
    "DummyDataParameter": f"data_filler:{_F}* shape:BlobShape* num:i* channels:i* height:i* width:i*",
    "EltwiseParameter": "operation:E.EltwiseOp coeff:f* stable_prod_grad:b",
    "ELUParameter": "alpha:f",
    "ExpParameter": "base:f scale:f shift:f",
    "FlattenParameter": "axis:i end_axis:i",
    "InnerProductParameter": f"num_output:i bias_term:b weight_filler:{_F} bias_filler:{_F} "
                             "axis:i transpose:b",
    "InputParameter": "shape:BlobShape*",
    "LogParameter": "base:f scale:f shift:f",
    "LRNParameter": "local_size:i alpha:f beta:f norm_region:E.NormRegion k:f engine:E.Engine",
    "PoolingParameter": "pool:E.PoolMethod pad:i pad_h:i pad_w:i kernel_size:i kernel_h:i "
                        "kernel_w:i stride:i stride_h:i stride_w:i engine:E.Engine "
                        "global_pooling:b round_mode:E.RoundMode",
    "PowerParameter": "power:f scale:f shift:f",
    "PReLUParameter": f"filler:{_F} channel_shared:b",
    "PythonParameter": "module:s layer:s param_str:s share_in_parallel:b",
    "ReductionParameter": "operation:E.ReductionOp axis:i coeff:f",
    "ReLUParameter": "negative_slope:f engine:E.Engine",
    "ReshapeParameter": "shape:BlobShape axis:i num_axes:i",
    "ScaleParameter": f"axis:i num_axes:i filler:{_F} bias_term:b bias_filler:{_F}",
    "SigmoidParameter": "engine:E.Engine",
    "SoftmaxParameter": "engine:E.Engine axis:i",
    "SliceParameter": "axis:i slice_point:i* slice_dim:i",
    "SPPParameter": "pyramid_height:i pool:E.PoolMethod engine:E.Engine",
    "TanHParameter": "engine:E.Engine",
    "ThresholdParameter": "threshold:f",
    "TileParameter": "axis:i tiles:i",
    "SolverParameter": (
        "net:s net_param:NetParameter train_net:s test_net:s* train_net_param:NetParameter "
        "test_net_param:NetParameter* train_state:NetState test_state:NetState* test_iter:i* "
        "test_interval:i test_compute_loss:b test_initialization:b base_lr:f display:i "
        "average_loss:i max_iter:i iter_size:i lr_policy:s gamma:f power:f momentum:f "
        "weight_decay:f regularization_type:s stepsize:i stepvalue:i* clip_gradients:f "
        "snapshot:i snapshot_prefix:s snapshot_diff:b snapshot_format:E.SnapshotFormat "
        "solver_mode:E.SolverMode device_id:i random_seed:i type:s delta:f momentum2:f "
        "rms_decay:f debug_info:b snapshot_after_train:b solver_type:E.SolverType "
        "layer_wise_reduce:b weights:s*"),
}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a known caffe.proto message."""

    name: str
    kind: str            # "s", "i", "f", "b", "enum" or "message"
    type: str | None     # enum name or message name
    repeated: bool


def _parse_schema(text: Mapping[str, str]) -> dict[str, dict[str, FieldSpec]]:
    out: dict[str, dict[str, FieldSpec]] = {}
    for msg, spec in text.items():
        fields: dict[str, FieldSpec] = {}
        for tok in spec.split():
            name, t = tok.split(":")
            repeated = t.endswith("*")
            t = t.rstrip("*")
            if t in ("s", "i", "f", "b"):
                fs = FieldSpec(name, t, None, repeated)
            elif t.startswith("E."):
                fs = FieldSpec(name, "enum", t[2:], repeated)
            else:
                fs = FieldSpec(name, "message", t, repeated)
            fields[name] = fs
        out[msg] = fields
    return out


#: message name -> {field name -> FieldSpec}, in caffe.proto declaration order.
SCHEMA: dict[str, dict[str, FieldSpec]] = _parse_schema(_SCHEMA_TEXT)

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


# --------------------------------------------------------- coordinate maps

@dataclass(frozen=True)
class AxisMap:
    """Along one axis, a blob position x lies at ``scale*x + shift`` of its root."""

    scale: Fraction
    shift: Fraction

    def through_conv(self, k: int, s: int, p: int, d: int) -> "AxisMap":
        # output o is centred on input s*o + (d*(k-1)/2 - p)
        c = Fraction(d * (k - 1), 2) - p
        return AxisMap(self.scale * s, self.scale * c + self.shift)

    def through_deconv(self, k: int, s: int, p: int, d: int) -> "AxisMap":
        # the adjoint: output o corresponds to input (o - c) / s
        c = Fraction(d * (k - 1), 2) - p
        return AxisMap(self.scale / s, self.shift - self.scale * c / s)

    def shifted(self, off: int) -> "AxisMap":
        return AxisMap(self.scale, self.shift + self.scale * off)

    def __str__(self) -> str:
        return f"input = {self.scale}*x {'+' if self.shift >= 0 else '-'} {abs(self.shift)}"


@dataclass(frozen=True)
class _Root:
    blob: str
    layer: str
    reason: str | None   # None for data; else why coordinates restart here


@dataclass(frozen=True)
class _Conflict:
    layer: str
    maps: tuple


_IDENTITY = {
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
    "Dropout", "LRN", "BatchNorm", "MVN", "Eltwise", "Split", "Threshold", "Clip", "Swish",
    "Bias", "Scale",
}
_FIRST_BOTTOM_ONLY = {"Scale", "Bias"}  # a second bottom supplies the factor, not the image


def _spatial_geometry(layer: Message, ltype: str, where: str):
    """((k, s, p, d) per spatial axis) or a reason string when unmappable.

    The window comes from :mod:`fcn_repro.caffe.shapes` (the one parser of
    kernel/stride/pad/dilation, both spellings)."""
    def err(msg: str) -> CoordMapError:
        return CoordMapError(f"{where}: {msg}")

    if ltype == "Pooling":
        pp = layer.sub("pooling_param")
        if pp.get("global_pooling", False):
            return "global pooling collapses the spatial axes"
        win = pool_window(pp, err)
    else:
        cp = layer.sub("convolution_param")
        if int(cp.get("axis", 1)) != 1:
            return "convolution over a non-default axis"
        if max(len(cp.getall(f)) for f in ("kernel_size", "stride", "pad", "dilation")) > 2:
            return "not a 2-D spatial layer"
        win = conv_window(cp, err)
    return tuple(zip(win.kernel, win.stride, win.pad, win.dilation))


def _explicit_offsets(layer: Message) -> tuple[int, tuple[int, int]]:
    """(axis, (offset_y, offset_x)) that a Crop applies to the spatial axes."""
    cp = layer.sub("crop_param")
    axis = int(cp.get("axis", 2))
    axis = axis + 4 if axis < 0 else axis
    offs = [int(v) for v in cp.getall("offset")]
    naxes = 4 - axis
    if not offs:
        per = [0] * naxes
    elif len(offs) == 1:
        per = offs * naxes
    else:
        per = offs
    full = [0] * axis + per  # offsets for axes 0..3
    return axis, (full[2] if axis <= 2 else 0, full[3])


class _Analysis:
    """One pass over the layers, in order, tracking every blob's coordinate maps."""

    def __init__(self, net: Message, only: Iterable[str] | None, phase: str | None, filename: str):
        if is_v1_net(net) or net.has("input"):
            net = upgrade_net(net)
        self.filename = filename
        self.only = None if only is None else set(only)
        self.offsets: dict[str, tuple[int, ...]] = {}
        self.maps: dict[str, dict[_Root, Any]] = {}
        for layer in net.getall("layer"):
            if phase is None or layer_included(layer, phase, error=lambda m: CoordMapError(f"{filename}: {m}")):
                self.step(layer)
        if self.only is not None:
            missing = self.only - set(self.offsets)
            if missing:
                raise CoordMapError(f"{filename}: no Crop layer named {', '.join(sorted(missing))}")

    def blob(self, name: str, layer: str) -> dict[_Root, Any]:
        if name not in self.maps:
            raise CoordMapError(f"{self.filename}: layer {layer!r} reads blob {name!r}, which no "
                                f"earlier layer produces")
        return self.maps[name]

    def restart(self, layer: str, tops: list[str], reason: str | None) -> None:
        for t in tops:
            self.maps[t] = {_Root(t, layer, reason): (AxisMap(Fraction(1), Fraction(0)),) * 2}

    def step(self, layer: Message) -> None:
        name, ltype = str(layer.get("name", "")), str(layer.get("type", ""))
        bottoms = [str(b) for b in layer.getall("bottom")]
        tops = [str(t) for t in layer.getall("top")]
        where = f"{self.filename}: layer {name!r} ({ltype})"
        if not bottoms:
            self.restart(name, tops, None)
            return
        if ltype in ("Convolution", "Deconvolution", "Pooling"):
            geo = _spatial_geometry(layer, ltype, where)
            if isinstance(geo, str):
                self.restart(name, tops, f"layer {name!r} ({ltype}): {geo}")
                return
            src = self.blob(bottoms[0], name)
            res: dict[_Root, Any] = {}
            for root, m in src.items():
                if isinstance(m, _Conflict):
                    res[root] = m
                elif ltype == "Deconvolution":
                    res[root] = tuple(a.through_deconv(*g) for a, g in zip(m, geo))
                else:
                    res[root] = tuple(a.through_conv(*g) for a, g in zip(m, geo))
            for t in tops:
                self.maps[t] = res
            return
        if ltype == "Crop":
            self.crop(layer, name, bottoms, tops, where)
            return
        identity = ltype in _IDENTITY
        if ltype == "Softmax":
            identity = int(layer.sub("softmax_param").get("axis", 1)) == 1
        if ltype == "Concat":
            cp = layer.sub("concat_param")
            identity = int(cp.get("axis", cp.get("concat_dim", 1))) == 1
        if ltype == "Silence":
            return
        if not identity:
            self.restart(name, tops, f"layer {name!r} ({ltype}) has no coordinate map")
            return
        srcs = bottoms[:1] if ltype in _FIRST_BOTTOM_ONLY else bottoms
        res = {}
        for b in srcs:
            for root, m in self.blob(b, name).items():
                if root not in res:
                    res[root] = m
                elif res[root] != m and not isinstance(res[root], _Conflict):
                    res[root] = _Conflict(name, (res[root], m))
        for t in tops:
            self.maps[t] = res

    def crop(self, layer: Message, name: str, bottoms: list[str], tops: list[str], where: str) -> None:
        if len(bottoms) != 2:
            raise CoordMapError(f"{where}: Crop needs 2 bottoms, got {len(bottoms)}")
        a_name, b_name = bottoms
        A, B = self.blob(a_name, name), self.blob(b_name, name)
        compute = self.only is None or name in self.only
        if compute:
            cp = layer.sub("crop_param")
            axis = int(cp.get("axis", 2))
            axis = axis + 4 if axis < 0 else axis
            if axis not in (2, 3):
                raise CoordMapError(f"{where}: crop axis {axis} includes the batch or channel axis, "
                                    f"which has no coordinate map; give the offsets explicitly")
            offs = self.solve(A, B, axis, a_name, b_name, where)
            self.offsets[name] = offs
            spatial = (offs[0], offs[1]) if axis == 2 else (0, offs[0])
        else:
            axis, spatial = _explicit_offsets(layer)
        res: dict[_Root, Any] = {}
        for root, m in A.items():
            res[root] = m if isinstance(m, _Conflict) else (m[0].shifted(spatial[0]), m[1].shifted(spatial[1]))
        for t in tops:
            self.maps[t] = res

    def solve(self, A: dict, B: dict, axis: int, a_name: str, b_name: str, where: str) -> tuple[int, ...]:
        def roots(maps: dict) -> str:
            parts = []
            for r in maps:
                parts.append(f"{r.blob!r}" + (f" (coordinates restart at {r.reason})" if r.reason else ""))
            return ", ".join(parts)

        common = [r for r in A if r in B]
        if not common:
            raise CoordMapError(
                f"{where}: bottoms {a_name!r} and {b_name!r} share no input, so their alignment is "
                f"undefined: {a_name!r} derives from {roots(A)}; {b_name!r} from {roots(B)}")
        result: tuple[int, ...] | None = None
        first_root = None
        axes = (0, 1) if axis == 2 else (1,)
        for r in common:
            ma, mb = A[r], B[r]
            for m, bn in ((ma, a_name), (mb, b_name)):
                if isinstance(m, _Conflict):
                    raise CoordMapError(
                        f"{where}: blob {bn!r} is ambiguous with respect to {r.blob!r}: layer "
                        f"{m.layer!r} combines bottoms with different coordinate maps "
                        f"({', '.join('(' + ', '.join(map(str, x)) + ')' for x in m.maps)})")
            offs = []
            for ax in axes:
                a, b = ma[ax], mb[ax]
                axname = "yx"[ax]
                if a.scale != b.scale:
                    raise CoordMapError(
                        f"{where}: bottoms {a_name!r} and {b_name!r} have different scales along "
                        f"{axname} with respect to {r.blob!r} (one step is {a.scale} vs {b.scale} "
                        f"input pixels); a Crop cannot align them")
                off = (b.shift - a.shift) / a.scale
                if off.denominator != 1:
                    raise CoordMapError(
                        f"{where}: aligning {b_name!r} ({b}) inside {a_name!r} ({a}) along {axname} "
                        f"needs a fractional offset {off} (with respect to {r.blob!r})")
                if off < 0:
                    raise CoordMapError(
                        f"{where}: {b_name!r} starts {-off} positions before {a_name!r} along "
                        f"{axname} (with respect to {r.blob!r}); a Crop offset cannot be negative")
                offs.append(int(off))
            t = tuple(offs)
            if result is None:
                result, first_root = t, r
            elif t != result:
                raise CoordMapError(
                    f"{where}: the offset depends on the input: {result} with respect to "
                    f"{first_root.blob!r} but {t} with respect to {r.blob!r}")
        assert result is not None
        return result


def _load(net: Message | str | os.PathLike) -> tuple[Message, str]:
    if isinstance(net, Message):
        return net, "<net>"
    from fcn_repro.caffe.prototxt import parse_prototxt
    return parse_prototxt(net), os.fspath(net) if not isinstance(net, str) or "\n" not in net else "<text>"


def compute_crop_offsets(net: Message | str | os.PathLike, *, only: Iterable[str] | None = None,
                         phase: str | None = None, filename: str | None = None) -> dict[str, tuple[int, ...]]:
    """Crop layer name -> offsets (one per cropped spatial axis) derived from the graph.

    ``only`` restricts the computation to the named Crop layers; the other
    Crops are taken at their written offsets. ``phase`` ("TRAIN"/"TEST")
    applies Caffe's include/exclude rules first. For a crop along axis 2 the
    tuple is ``(offset_y, offset_x)``; along axis 3 ``(offset_x,)``.
    """
    msg, fname = _load(net)
    return _Analysis(msg, only, phase, filename or fname).offsets


def check_crop_offsets(net: Message | str | os.PathLike, *, phase: str | None = None,
                       filename: str | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Crop layers whose written offsets differ from the computed ones.

    Returns ``{layer: (written, computed)}``, both per cropped spatial axis;
    empty when every Crop is aligned.
    """
    msg, fname = _load(net)
    if is_v1_net(msg) or msg.has("input"):
        msg = upgrade_net(msg)
    computed = _Analysis(msg, None, phase, filename or fname).offsets
    bad = {}
    for layer in msg.getall("layer"):
        nm = layer.get("name")
        if nm in computed:
            axis, (oy, ox) = _explicit_offsets(layer)
            written = (oy, ox) if axis <= 2 else (ox,)
            if written != computed[nm]:
                bad[nm] = (written, computed[nm])
    return bad


def blob_coord_maps(net: Message | str | os.PathLike, *, phase: str | None = None,
                    filename: str | None = None) -> dict[str, dict[str, tuple[AxisMap, AxisMap]]]:
    """Every blob's coordinate maps: ``{blob: {root blob: (map_y, map_x)}}``.

    After in-place layers a blob holds its last writer's map. Crops are taken
    at their written offsets. Ambiguous maps (an Eltwise of misaligned
    bottoms) are left out.
    """
    msg, fname = _load(net)
    an = _Analysis(msg, [], phase, filename or fname)
    return {b: {r.blob: m for r, m in roots.items() if not isinstance(m, _Conflict)}
            for b, roots in an.maps.items()}
