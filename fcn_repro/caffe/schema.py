"""The part of Caffe's schema (caffe.proto) this project reads and writes.

One home for message fields (number, type, repeated or not, default), enum
values and the V1 layer-type table, read by the text parser
(:mod:`.prototxt`: typed checks), the binary codecs (:mod:`.wire`,
:mod:`.caffemodel`, :mod:`.solverstate`: field numbers) and the solver
reader (:mod:`fcn_repro.solver`). Torch-free; imports only the error module.

The schema is written below in a compact form, one field a line::

    NUMBER NAME TYPE [= DEFAULT]       TYPE: int32 uint32 int64 uint64 float
                                       double bool string, an enum or a message;
                                       a leading * marks a repeated field

A message declared ``opaque`` is known to exist (a layer may carry it) but its
fields are not checked. Fields a message does not declare are kept and not
checked (custom layers and newer Caffe versions add fields).

:func:`check` holds a parsed :class:`~.prototxt.Message` tree to these types
the way protobuf's text parser does: an integer field takes only an integer
literal in its type's range (``num_output: 4.7``, ``kernel_size: 1.5`` and a
negative ``uint32`` are refused), a bool takes ``true``/``false`` (or 0/1),
a string must be quoted, an enum takes one of its names (case as declared)
or numbers, a float takes any number, and a message field must be a
``{ ... }`` block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fcn_repro.errors import PrototxtError

__all__ = ["Field", "MESSAGES", "ENUMS", "OPAQUE", "field", "fields", "numbers", "default",
           "check", "check_value", "V1_LAYER_TYPES", "V1_ENUM_NAMES", "SCALAR_TYPES"]

SCALAR_TYPES = ("int32", "uint32", "int64", "uint64", "float", "double", "bool", "string", "bytes")

_ENUMS = """
Phase: TRAIN=0 TEST=1
DimCheckMode: STRICT=0 PERMISSIVE=1
Engine: DEFAULT=0 CAFFE=1 CUDNN=2
PoolMethod: MAX=0 AVE=1 STOCHASTIC=2
RoundMode: CEIL=0 FLOOR=1
EltwiseOp: PROD=0 SUM=1 MAX=2
NormRegion: ACROSS_CHANNELS=0 WITHIN_CHANNEL=1
NormalizationMode: FULL=0 VALID=1 BATCH_SIZE=2 NONE=3
VarianceNorm: FAN_IN=0 FAN_OUT=1 AVERAGE=2
DB: LEVELDB=0 LMDB=1
SnapshotFormat: HDF5=0 BINARYPROTO=1
SolverMode: CPU=0 GPU=1
SolverType: SGD=0 NESTEROV=1 ADAGRAD=2 RMSPROP=3 ADADELTA=4 ADAM=5
LayerType: NONE=0 ABSVAL=35 ACCURACY=1 ARGMAX=30 BNLL=2 CONCAT=3 CONTRASTIVE_LOSS=37
  CONVOLUTION=4 DATA=5 DECONVOLUTION=39 DROPOUT=6 DUMMY_DATA=32 EUCLIDEAN_LOSS=7 ELTWISE=25
  EXP=38 FLATTEN=8 HDF5_DATA=9 HDF5_OUTPUT=10 HINGE_LOSS=28 IM2COL=11 IMAGE_DATA=12
  INFOGAIN_LOSS=13 INNER_PRODUCT=14 LRN=15 MEMORY_DATA=29 MULTINOMIAL_LOGISTIC_LOSS=16 MVN=34
  POOLING=17 POWER=26 RELU=18 SIGMOID=19 SIGMOID_CROSS_ENTROPY_LOSS=27 SILENCE=36 SOFTMAX=20
  SOFTMAX_LOSS=21 SPLIT=22 SLICE=33 TANH=23 WINDOW_DATA=24 THRESHOLD=31
"""

# The *_param fields LayerParameter (V2) carries: number, name, message type.
_LAYER_PARAMS = """
100 transform_param TransformationParameter
101 loss_param LossParameter
102 accuracy_param AccuracyParameter
103 argmax_param ArgMaxParameter
139 batch_norm_param BatchNormParameter
141 bias_param BiasParameter
148 clip_param ClipParameter
104 concat_param ConcatParameter
105 contrastive_loss_param ContrastiveLossParameter
106 convolution_param ConvolutionParameter
144 crop_param CropParameter
107 data_param DataParameter
108 dropout_param DropoutParameter
109 dummy_data_param DummyDataParameter
110 eltwise_param EltwiseParameter
140 elu_param ELUParameter
137 embed_param EmbedParameter
111 exp_param ExpParameter
135 flatten_param FlattenParameter
112 hdf5_data_param HDF5DataParameter
113 hdf5_output_param HDF5OutputParameter
114 hinge_loss_param HingeLossParameter
115 image_data_param ImageDataParameter
116 infogain_loss_param InfogainLossParameter
117 inner_product_param InnerProductParameter
143 input_param InputParameter
134 log_param LogParameter
118 lrn_param LRNParameter
119 memory_data_param MemoryDataParameter
120 mvn_param MVNParameter
145 parameter_param ParameterParameter
121 pooling_param PoolingParameter
122 power_param PowerParameter
131 prelu_param PReLUParameter
130 python_param PythonParameter
146 recurrent_param RecurrentParameter
136 reduction_param ReductionParameter
123 relu_param ReLUParameter
133 reshape_param ReshapeParameter
142 scale_param ScaleParameter
124 sigmoid_param SigmoidParameter
125 softmax_param SoftmaxParameter
132 spp_param SPPParameter
126 slice_param SliceParameter
147 swish_param SwishParameter
127 tanh_param TanHParameter
128 threshold_param ThresholdParameter
138 tile_param TileParameter
129 window_data_param WindowDataParameter
"""

# The *_param fields of V1LayerParameter (other numbers, same message types).
_V1_LAYER_PARAMS = """
27 accuracy_param AccuracyParameter
23 argmax_param ArgMaxParameter
9 concat_param ConcatParameter
40 contrastive_loss_param ContrastiveLossParameter
10 convolution_param ConvolutionParameter
11 data_param DataParameter
12 dropout_param DropoutParameter
26 dummy_data_param DummyDataParameter
24 eltwise_param EltwiseParameter
41 exp_param ExpParameter
13 hdf5_data_param HDF5DataParameter
14 hdf5_output_param HDF5OutputParameter
29 hinge_loss_param HingeLossParameter
15 image_data_param ImageDataParameter
16 infogain_loss_param InfogainLossParameter
17 inner_product_param InnerProductParameter
18 lrn_param LRNParameter
22 memory_data_param MemoryDataParameter
34 mvn_param MVNParameter
19 pooling_param PoolingParameter
21 power_param PowerParameter
30 relu_param ReLUParameter
38 sigmoid_param SigmoidParameter
39 softmax_param SoftmaxParameter
31 slice_param SliceParameter
37 tanh_param TanHParameter
25 threshold_param ThresholdParameter
20 window_data_param WindowDataParameter
36 transform_param TransformationParameter
42 loss_param LossParameter
"""

_MESSAGES = """
NetParameter:
  1 name string
  3 input *string
  8 input_shape *BlobShape
  4 input_dim *int32
  5 force_backward bool = false
  6 state NetState
  7 debug_info bool = false
  100 layer *LayerParameter
  2 layers *V1LayerParameter

BlobShape:
  1 dim *int64

BlobProto:
  7 shape BlobShape
  5 data *float
  6 diff *float
  8 double_data *double
  9 double_diff *double
  1 num int32 = 0
  2 channels int32 = 0
  3 height int32 = 0
  4 width int32 = 0

NetState:
  1 phase Phase = TEST
  2 level int32 = 0
  3 stage *string

NetStateRule:
  1 phase Phase
  2 min_level int32
  3 max_level int32
  4 stage *string
  5 not_stage *string

ParamSpec:
  1 name string
  2 share_mode DimCheckMode
  3 lr_mult float = 1
  4 decay_mult float = 1

LayerParameter:
  1 name string
  2 type string
  3 bottom *string
  4 top *string
  10 phase Phase
  5 loss_weight *float
  6 param *ParamSpec
  7 blobs *BlobProto
  11 propagate_down *bool
  8 include *NetStateRule
  9 exclude *NetStateRule
  @LAYER_PARAMS

V1LayerParameter:
  2 bottom *string
  3 top *string
  4 name string
  32 include *NetStateRule
  33 exclude *NetStateRule
  5 type LayerType
  6 blobs *BlobProto
  1001 param *string
  1002 blob_share_mode *DimCheckMode
  7 blobs_lr *float
  8 weight_decay *float
  35 loss_weight *float
  1 layer V0LayerParameter
  @V1_LAYER_PARAMS

FillerParameter:
  1 type string = constant
  2 value float = 0
  3 min float = 0
  4 max float = 1
  5 mean float = 0
  6 std float = 1
  7 sparse int32 = -1
  8 variance_norm VarianceNorm = FAN_IN

ConvolutionParameter:
  1 num_output uint32
  2 bias_term bool = true
  3 pad *uint32
  4 kernel_size *uint32
  6 stride *uint32
  18 dilation *uint32
  9 pad_h uint32 = 0
  10 pad_w uint32 = 0
  11 kernel_h uint32
  12 kernel_w uint32
  13 stride_h uint32
  14 stride_w uint32
  5 group uint32 = 1
  7 weight_filler FillerParameter
  8 bias_filler FillerParameter
  15 engine Engine = DEFAULT
  16 axis int32 = 1
  17 force_nd_im2col bool = false

PoolingParameter:
  1 pool PoolMethod = MAX
  4 pad uint32 = 0
  9 pad_h uint32 = 0
  10 pad_w uint32 = 0
  2 kernel_size uint32
  5 kernel_h uint32
  6 kernel_w uint32
  3 stride uint32 = 1
  7 stride_h uint32
  8 stride_w uint32
  11 engine Engine = DEFAULT
  12 global_pooling bool = false
  13 round_mode RoundMode = CEIL

InnerProductParameter:
  1 num_output uint32
  2 bias_term bool = true
  3 weight_filler FillerParameter
  4 bias_filler FillerParameter
  5 axis int32 = 1
  6 transpose bool = false

CropParameter:
  1 axis int32 = 2
  2 offset *uint32

ConcatParameter:
  2 axis int32 = 1
  1 concat_dim uint32 = 1

DropoutParameter:
  1 dropout_ratio float = 0.5
  2 scale_train bool = true

EltwiseParameter:
  1 operation EltwiseOp = SUM
  2 coeff *float
  3 stable_prod_grad bool = true

LRNParameter:
  1 local_size uint32 = 5
  2 alpha float = 1
  3 beta float = 0.75
  4 norm_region NormRegion = ACROSS_CHANNELS
  5 k float = 1
  6 engine Engine = DEFAULT

ReLUParameter:
  1 negative_slope float = 0
  2 engine Engine = DEFAULT

SigmoidParameter:
  1 engine Engine = DEFAULT

TanHParameter:
  1 engine Engine = DEFAULT

SoftmaxParameter:
  1 engine Engine = DEFAULT
  2 axis int32 = 1

LossParameter:
  1 ignore_label int32
  3 normalization NormalizationMode = VALID
  2 normalize bool

AccuracyParameter:
  1 top_k uint32 = 1
  2 axis int32 = 1
  3 ignore_label int32

InputParameter:
  1 shape *BlobShape

ReshapeParameter:
  1 shape BlobShape
  2 axis int32 = 0
  3 num_axes int32 = -1

FlattenParameter:
  1 axis int32 = 1
  2 end_axis int32 = -1

ScaleParameter:
  1 axis int32 = 1
  2 num_axes int32 = 1
  3 filler FillerParameter
  4 bias_term bool = false
  5 bias_filler FillerParameter

BiasParameter:
  1 axis int32 = 1
  2 num_axes int32 = 1
  3 filler FillerParameter

BatchNormParameter:
  1 use_global_stats bool
  2 moving_average_fraction float = 0.999
  3 eps float = 1e-05

PowerParameter:
  1 power float = 1
  2 scale float = 1
  3 shift float = 0

ArgMaxParameter:
  1 out_max_val bool = false
  2 top_k uint32 = 1
  3 axis int32

SliceParameter:
  3 axis int32 = 1
  2 slice_point *uint32
  1 slice_dim uint32 = 1

PythonParameter:
  1 module string
  2 layer string
  3 param_str string = ""
  4 share_in_parallel bool = false

TransformationParameter:
  1 scale float = 1
  2 mirror bool = false
  3 crop_size uint32 = 0
  4 mean_file string
  5 mean_value *float
  6 force_color bool = false
  7 force_gray bool = false

DataParameter:
  1 source string
  4 batch_size uint32
  7 rand_skip uint32 = 0
  8 backend DB = LEVELDB
  2 scale float = 1
  3 mean_file string
  5 crop_size uint32 = 0
  6 mirror bool = false
  9 force_encoded_color bool = false
  10 prefetch uint32 = 4

SolverParameter:
  24 net string
  25 net_param NetParameter
  1 train_net string
  2 test_net *string
  21 train_net_param NetParameter
  22 test_net_param *NetParameter
  26 train_state NetState
  27 test_state *NetState
  3 test_iter *int32
  4 test_interval int32 = 0
  19 test_compute_loss bool = false
  32 test_initialization bool = true
  5 base_lr float
  6 display int32
  33 average_loss int32 = 1
  7 max_iter int32
  36 iter_size int32 = 1
  8 lr_policy string
  9 gamma float
  10 power float
  11 momentum float
  12 weight_decay float
  29 regularization_type string = L2
  13 stepsize int32
  34 stepvalue *int32
  35 clip_gradients float = -1
  14 snapshot int32 = 0
  15 snapshot_prefix string
  16 snapshot_diff bool = false
  37 snapshot_format SnapshotFormat = BINARYPROTO
  17 solver_mode SolverMode = GPU
  18 device_id int32 = 0
  20 random_seed int64 = -1
  40 type string = SGD
  31 delta float = 1e-08
  39 momentum2 float = 0.999
  38 rms_decay float = 0.99
  23 debug_info bool = false
  28 snapshot_after_train bool = true
  30 solver_type SolverType = SGD
  41 layer_wise_reduce bool = true
  42 weights *string

SolverState:
  1 iter int32
  2 learned_net string
  3 history *BlobProto
  4 current_step int32 = 0
"""

# Messages a layer may carry whose fields this project does not read.
OPAQUE = frozenset({
    "ClipParameter", "ContrastiveLossParameter", "DummyDataParameter", "ELUParameter",
    "EmbedParameter", "ExpParameter", "HDF5DataParameter", "HDF5OutputParameter",
    "HingeLossParameter", "ImageDataParameter", "InfogainLossParameter", "LogParameter",
    "MemoryDataParameter", "MVNParameter", "ParameterParameter", "PReLUParameter",
    "RecurrentParameter", "ReductionParameter", "SPPParameter", "SwishParameter",
    "ThresholdParameter", "TileParameter", "WindowDataParameter", "V0LayerParameter",
})

_RANGES = {"int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
           "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a message: caffe.proto's number, name, type and default."""
    number: int
    name: str
    type: str                 # a scalar type (SCALAR_TYPES), an enum name or a message name
    repeated: bool = False
    default: Any = None       # None: no default given in caffe.proto (or a message/repeated field)

    @property
    def kind(self) -> str:
        """``"scalar"``, ``"enum"`` or ``"message"``."""
        if self.type in SCALAR_TYPES:
            return "scalar"
        return "enum" if self.type in ENUMS else "message"


def _parse_enums(text: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in text.strip().splitlines():
        if ":" in line and not line.startswith(" "):
            name, line = line.split(":", 1)
            out[name] = {}
        for item in line.split():
            k, v = item.split("=")
            out[name][k] = int(v)  # type: ignore[index]
    return out


ENUMS: dict[str, dict[str, int]] = _parse_enums(_ENUMS)


def _default(type_: str, text: str) -> Any:
    if type_ == "bool":
        return text == "true"
    if type_ in _RANGES:
        return int(text)
    if type_ in ("float", "double"):
        return float(text)
    return text.strip('"')  # string, or an enum value name


def _parse_messages(text: str) -> dict[str, dict[str, Field]]:
    out: dict[str, dict[str, Field]] = {}
    cur: dict[str, Field] = {}
    subst = {"@LAYER_PARAMS": _LAYER_PARAMS, "@V1_LAYER_PARAMS": _V1_LAYER_PARAMS}
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.endswith(":") and not raw.startswith(" "):
            cur = out.setdefault(line[:-1], {})
            continue
        for row in (subst[line].strip().splitlines() if line in subst else [line]):
            spec, eq, dflt = row.partition(" = ")
            num, name, type_ = spec.split()
            repeated = type_.startswith("*")
            type_ = type_.lstrip("*")
            cur[name] = Field(int(num), name, type_, repeated, _default(type_, dflt) if eq else None)
    return out


MESSAGES: dict[str, dict[str, Field]] = _parse_messages(_MESSAGES)
for _t in OPAQUE:
    MESSAGES.setdefault(_t, {})

# V1LayerParameter.LayerType number -> V2 type string; the enum names as
# written in V1 prototxt (CONVOLUTION, SOFTMAX_LOSS, ...) -> number.
V1_ENUM_NAMES: dict[str, int] = dict(ENUMS["LayerType"])
V1_LAYER_TYPES: dict[int, str] = {
    0: "None", 35: "AbsVal", 1: "Accuracy", 30: "ArgMax", 2: "BNLL",
    3: "Concat", 37: "ContrastiveLoss", 4: "Convolution", 5: "Data",
    39: "Deconvolution", 6: "Dropout", 32: "DummyData", 7: "EuclideanLoss",
    25: "Eltwise", 38: "Exp", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    28: "HingeLoss", 11: "Im2col", 12: "ImageData", 13: "InfogainLoss",
    14: "InnerProduct", 15: "LRN", 29: "MemoryData",
    16: "MultinomialLogisticLoss", 34: "MVN", 17: "Pooling", 26: "Power",
    18: "ReLU", 19: "Sigmoid", 27: "SigmoidCrossEntropyLoss", 36: "Silence",
    20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 33: "Slice", 23: "TanH",
    24: "WindowData", 31: "Threshold",
}


def fields(message: str) -> dict[str, Field]:
    """The declared fields of ``message`` by name (KeyError for an unknown message)."""
    return MESSAGES[message]


def field(message: str, name: str) -> Field:
    """One declared field (KeyError when not declared)."""
    return MESSAGES[message][name]


def numbers(message: str) -> dict[str, int]:
    """Field name -> field number of ``message`` (what the binary codecs use)."""
    return {f.name: f.number for f in MESSAGES[message].values()}


def default(message: str, name: str) -> Any:
    """caffe.proto's default of a singular field (None where it gives none)."""
    return MESSAGES[message][name].default


# ------------------------------------------------------------------ checking

def check_value(f: Field, v: Any) -> str | None:
    """Why ``v`` can not be the value of field ``f`` (None when it can).

    Text-format rules: see the module docstring. ``v`` is what the text
    parser gives: bool, int, float, str, ``Enum`` (a bare word) or Message.
    """
    from_msg = hasattr(v, "fields") and hasattr(v, "getall")   # a Message, without importing prototxt
    kind = f.kind
    if kind == "message":
        return None if from_msg else f"expected a message {{ ... }} ({f.type}), got {v!r}"
    if from_msg:
        return f"expected a {f.type} value, got a message {{ ... }}"
    bare = type(v).__name__ == "Enum"
    t = f.type
    if kind == "enum":
        names = ENUMS[t]
        listed = ", ".join(list(names)[:8]) + (f", ... ({len(names)} names)" if len(names) > 8 else "")
        if isinstance(v, bool) or isinstance(v, float) or (isinstance(v, str) and not bare):
            return f"expected one of {listed} ({t}, written bare), got {v!r}"
        if isinstance(v, int):
            return None if v in names.values() else f"enum number {v} is not a {t} value ({listed})"
        return None if v in names else f"expected one of {listed} ({t}), got {str(v)!r}"
    if t in _RANGES:
        lo, hi = _RANGES[t]
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer ({t}), got {v!r}"
        if not lo <= v <= hi:
            return f"{v} is out of range for {t} ({lo}..{hi})"
        return None
    if t in ("float", "double"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number ({t}), got {v!r}"
        return None
    if t == "bool":
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            return None
        return f"expected true or false (bool), got {v!r}"
    # string / bytes: a quoted string
    if isinstance(v, str) and not bare:
        return None
    return f"expected a quoted string ({t}), got {str(v) if bare else repr(v)}"


_LAYER_MESSAGES = ("LayerParameter", "V1LayerParameter")


def check(msg: Any, message: str, filename: str = "<text>",
          position: Callable[[Any, int], tuple[int, int] | None] | None = None) -> None:
    """Raise :class:`PrototxtError` at the first field of ``msg`` (a Message of
    type ``message``), in file order, whose value Caffe's typed text parser
    would refuse.

    The error names the file, the line and column (``position(message_obj,
    field_index)`` gives them when the caller knows them), the layer (its
    name, else ``#index``) and the field as a dotted path
    (``convolution_param.num_output``). Recursion follows the schema's
    message types, whose nesting is bounded (at most ~6 deep), not the input's.
    """
    _check(msg, message, filename, position, None, "")


def _check(m: Any, mtype: str, filename: str, position: Any, layer: str | None, prefix: str) -> None:
    decl = MESSAGES.get(mtype)
    if not decl:
        return
    layer_index = 0
    for i, (k, v) in enumerate(m.fields):
        f = decl.get(k)
        if f is None:
            continue
        if f.type in _LAYER_MESSAGES:
            name = v.get("name") if hasattr(v, "fields") else None
            sub_layer, sub_prefix = (name if isinstance(name, str) else f"#{layer_index}"), ""
            layer_index += 1
        else:
            sub_layer, sub_prefix = layer, prefix + k + "."
        why = check_value(f, v)
        if why is not None:
            pos = position(m, i) if position else None
            line, col = pos if pos else (None, None)
            if f.type in _LAYER_MESSAGES:
                raise PrototxtError(why, filename, line, col, field=prefix + k)
            raise PrototxtError(why, filename, line, col, layer=layer, field=prefix + k)
        if f.kind == "message" and MESSAGES.get(f.type):
            _check(v, f.type, filename, position, sub_layer, sub_prefix)
