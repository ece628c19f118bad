"""Will TensorRT's ONNX parser accept this graph? A check that needs neither TensorRT nor a GPU.

TensorRT's published operator support matrix (onnx-tensorrt ``docs/operators.md``, TensorRT 10.15: opsets
9-24) is encoded below as data: for every operator whether it is supported, the data types it supports and
the restrictions that can be read off a graph (attributes, optional inputs/outputs, inputs that must be
build-time constants). :func:`check_model` walks every node of a model — the main graph, control-flow
subgraphs and the bodies of model-local functions — and reports each operator, attribute and tensor dtype the
parser would reject, so an export TensorRT cannot build fails in CI first.

The matrix is TensorRT 10.15's. For an older TensorRT (the installed one, or ``trt_version``) operators it
does not parse yet (:data:`MIN_VERSION`) are errors and opsets past what it parses (:data:`MAX_OPSET_BY_VERSION`)
are warnings; TensorRT 11 is checked against the 10.15 matrix.

Dtypes come from ONNX shape inference on a copy with local functions inlined (so types inside function bodies
are checked too). Restrictions that depend on runtime values (e.g. "Loop scan output length cannot be
dynamic") are not checkable statically and are left to the real parser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
from onnx import TensorProto, numpy_helper

MATRIX_VERSION = "TensorRT 10.15 (onnx-tensorrt docs/operators.md)"
MIN_OPSET, MAX_OPSET = 9, 24
# The first TensorRT release whose ONNX parser has an operator (older releases reject it).
MIN_VERSION: dict[str, tuple[int, int]] = {"Attention": (10, 14), "RotaryEmbedding": (10, 15)}
# Newest opset a TensorRT release parses, for the releases it is known for (a release uses the entry at or below it).
MAX_OPSET_BY_VERSION: tuple[tuple[tuple[int, int], int], ...] = (((10, 0), 20), ((10, 15), MAX_OPSET))

# Short dtype names of the matrix -> ONNX element types.
DTYPES = {
    "FP32": (TensorProto.FLOAT,), "FP16": (TensorProto.FLOAT16,), "BF16": (TensorProto.BFLOAT16,),
    "INT32": (TensorProto.INT32,), "INT64": (TensorProto.INT64,), "INT8": (TensorProto.INT8,),
    "UINT8": (TensorProto.UINT8,), "BOOL": (TensorProto.BOOL,), "INT4": (TensorProto.INT4,),
    "FP8": (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2), "FP4": (getattr(TensorProto, "FLOAT4E2M1", -1),),
}
_F = "FP32 FP16 BF16"
_FI = "FP32 FP16 BF16 INT32 INT64"
_FIB = "FP32 FP16 BF16 INT32 INT64 BOOL"

# ----------------------------------------------------------------------------------------------------------
# The support matrix: operator -> supported dtypes (space separated). Operators the matrix marks as not
# supported are in UNSUPPORTED; an operator in neither is unknown to the parser.
# ----------------------------------------------------------------------------------------------------------
SUPPORTED: dict[str, str] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": "BOOL", "ArgMax": _FI, "ArgMin": _FI,
    "Asin": _F, "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": _F + " INT8 FP8", "AveragePool": _F,
    "BatchNormalization": _F, "BlackmanWindow": "FP32 FP16", "Cast": _FIB + " UINT8", "CastLike": _FIB + " UINT8",
    "Ceil": _F, "Celu": _F, "Clip": _F, "Concat": _FIB, "Constant": _FIB + " FP8 FP4 INT4",
    "ConstantOfShape": _FIB + " FP8 FP4 INT4", "Conv": _F, "ConvTranspose": _F, "Cos": _F, "Cosh": _F,
    "CumSum": _F, "DeformConv": "FP32 FP16", "DepthToSpace": _FI, "DequantizeLinear": "INT8 FP8 FP4 INT4",
    "Div": _FI, "Dropout": _F, "Einsum": _F, "Elu": _F, "Equal": _FI, "Erf": _F, "Exp": _F, "Expand": _FIB,
    "EyeLike": _FIB, "Flatten": _FIB, "Floor": _F, "Gather": _FIB, "GatherElements": _FIB, "GatherND": _FIB,
    "Gelu": _FI + " INT8", "Gemm": _F, "GlobalAveragePool": _F, "GlobalLpPool": _F, "GlobalMaxPool": _F,
    "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": "FP32 FP16", "GroupNormalization": _F, "GRU": _F,
    "HammingWindow": "FP32 FP16", "HannWindow": "FP32 FP16", "HardSigmoid": _F, "HardSwish": _F, "Hardmax": _F,
    "Identity": _FIB, "If": _FIB, "ImageScaler": _F, "InstanceNormalization": _F, "IsInf": _F, "IsNaN": _FI,
    "LayerNormalization": _F, "LeakyRelu": _F, "Less": _FI, "LessOrEqual": _FI, "Log": _F, "LogSoftmax": _F,
    "Loop": _FIB, "LRN": _F, "LSTM": _F, "LpNormalization": _F, "LpPool": _F, "MatMul": _F, "Max": _FI,
    "MaxPool": _F, "Mean": _FI + " FP8", "MeanVarianceNormalization": _F, "Min": _FI, "Mish": "FP32 FP16",
    "Mod": _FI, "Mul": _FI, "Neg": _FI, "NonMaxSuppression": "FP32 FP16", "NonZero": "FP32 FP16", "Not": "BOOL",
    "OneHot": _FIB, "Or": "BOOL", "Pad": _FI, "ParametricSoftplus": _F, "Pow": _FI, "PRelu": _F,
    "QuantizeLinear": _F, "RandomNormal": _F, "RandomNormalLike": _F, "RandomUniform": _F,
    "RandomUniformLike": _F, "Range": _FI, "Reciprocal": _F, "ReduceL1": _FI, "ReduceL2": _FI,
    "ReduceLogSum": _FI, "ReduceLogSumExp": _FI, "ReduceMax": _FI, "ReduceMean": _FI, "ReduceMin": _FI,
    "ReduceProd": _FI, "ReduceSum": _FI, "ReduceSumSquare": _FI, "Relu": _FI, "Reshape": _FIB, "Resize": _F,
    "ReverseSequence": _FIB, "RMSNormalization": _F, "RNN": _F, "RoiAlign": "FP32 FP16", "RotaryEmbedding": _F,
    "Round": _F, "STFT": "FP32", "ScaledTanh": _F, "Scan": _F, "Scatter": _FI, "ScatterElements": _FI,
    "ScatterND": _FI, "Selu": _F, "Shape": _FIB, "Shrink": _FI, "Sigmoid": _F, "Sign": _FI, "Sin": _F,
    "Sinh": _F, "Size": _FIB, "Slice": _FIB, "Softmax": _F, "Softplus": _F, "Softsign": _F, "SpaceToDepth": _FI,
    "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB, "Sub": _FI, "Sum": _FI, "Tan": _F, "Tanh": _F,
    "TensorScatter": "FP32 FP16 BF16 INT32", "ThresholdedRelu": _F, "Tile": _FIB, "TopK": _FI, "Transpose": _FIB,
    "Trilu": _FIB, "Unsqueeze": _FIB, "Upsample": _F, "Where": _FIB, "Xor": "BOOL",
}
UNSUPPORTED = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
# Network inputs/outputs may also be UINT8 (only there).
IO_DTYPES = "FP32 FP16 BF16 INT32 INT64 BOOL UINT8 INT8 FP8"

# Inputs/outputs that are not the operator's data type T: index/shape/flag slots, with the dtypes allowed
# there. Slots not listed must have one of the operator's matrix dtypes.
_IDX = "INT32 INT64"
_AUX_SLOTS: dict[str, dict[str, dict[int, str]]] = {
    **{op: {"in": {1: _IDX}} for op in ("Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Gather",
                                        "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Scatter",
                                        "Split", "CumSum", "Trilu")},
    **{op: {"in": {1: _IDX}} for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                        "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
    **{op: {"out": {0: "BOOL"}} for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN",
                                           "IsInf")},
    **{op: {"out": {0: "INT64"}} for op in ("ArgMax", "ArgMin", "Shape", "Size", "NonZero")},
    "Slice": {"in": {1: _IDX, 2: _IDX, 3: _IDX, 4: _IDX}},
    "Pad": {"in": {1: _IDX, 3: _IDX}},
    "TopK": {"in": {1: _IDX}, "out": {1: _IDX}},
    "ConstantOfShape": {"in": {0: _IDX}},
    "OneHot": {"in": {0: _FI, 1: _FI}},
    "Resize": {"in": {1: "FP32 FP16", 2: "FP32", 3: "INT64"}},
    "Upsample": {"in": {1: "FP32"}},
    "Where": {"in": {0: "BOOL"}},
    "Dropout": {"in": {1: _F, 2: "BOOL"}, "out": {1: "BOOL"}},
    "LayerNormalization": {"out": {1: "FP32", 2: "FP32"}},
    "RotaryEmbedding": {"in": {3: "INT64"}},
    "Attention": {"in": {3: _F + " BOOL"}},
    "QuantizeLinear": {"in": {1: _F, 2: "INT8 FP8 FP4 INT4"}, "out": {0: "INT8 FP8 FP4 INT4"}},
    "DequantizeLinear": {"in": {1: _F}, "out": {0: _F}},
    "Range": {},
    "EyeLike": {"in": {0: _FIB + " INT8 UINT8"}},
    "RandomNormalLike": {"in": {0: _FIB}}, "RandomUniformLike": {"in": {0: _FIB}},
    "NonMaxSuppression": {"in": {2: _IDX}, "out": {0: "INT64"}},
    "RoiAlign": {"in": {2: _IDX}},
    "ReverseSequence": {"in": {1: _IDX}},
    "GridSample": {},
    "Pow": {"in": {1: _FI}},
    "Mod": {},
    "Einsum": {},
    "GroupNormalization": {},
    "TensorScatter": {"in": {2: _IDX}},
    "STFT": {"in": {1: _IDX, 3: _IDX}},
    **{op: {"in": {0: "INT32 INT64"}} for op in ("HannWindow", "HammingWindow", "BlackmanWindow")},
}
# Control flow: their own inputs/outputs carry whatever the bodies do (the bodies are checked node by node).
_NO_DTYPE_CHECK = frozenset({"If", "Loop", "Scan"})


def _types(names: str) -> frozenset[int]:
    return frozenset(t for n in names.split() for t in DTYPES[n])


_SUPPORTED_TYPES = {op: _types(names) for op, names in SUPPORTED.items()}
_IO_TYPES = _types(IO_DTYPES)


# ----------------------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    severity: str          # "error": the parser rejects it; "warning": accepted with a caveat
    where: str             # "graph", "function pkg.fit::Attention", "graph/If 'n'/then_branch"
    node: str              # node name (or tensor name for graph inputs/outputs)
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.op} {self.node!r}: {self.message}"


@dataclass
class OpSupportReport:
    findings: list[Finding] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    opset: Optional[int] = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        ops = ", ".join(f"{op}×{n}" for op, n in sorted(self.op_counts.items()))
        head = (f"TensorRT op support ({MATRIX_VERSION}): opset {self.opset}, {sum(self.op_counts.values())} "
                f"nodes [{ops}]: {len(self.errors)} error(s), {len(self.findings) - len(self.errors)} warning(s)")
        return "\n".join([head] + [f"  {f}" for f in self.findings])


class UnsupportedByTensorRT(ValueError):
    """The graph uses something TensorRT's ONNX parser rejects; the message lists every finding."""


# ----------------------------------------------------------------------------------------------------------
# Structural and attribute restrictions
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Scope:
    """Names known in one graph or function body: constants (initializers, Constant outputs) and ranks."""

    constants: dict[str, Optional[np.ndarray]]     # name -> value (None when not loaded, e.g. external data)
    ranks: dict[str, int]
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    _foldable: dict[str, bool] = field(default_factory=dict)

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def is_foldable(self, name: str) -> bool:
        """Resolvable to a constant at build time: a constant, or computed by deterministic ops from constants
        only (the parser folds such subgraphs)."""
        if name in self._foldable:
            return self._foldable[name]
        self._foldable[name] = False                                 # cycles (malformed graphs) are not foldable
        node = self.producers.get(name)
        result = self.is_constant(name) or (
            node is not None and not node.op_type.startswith("Random") and node.op_type != "Multinomial"
            and not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for attr in node.attribute)
            and all(self.is_foldable(i) for i in node.input if i))
        self._foldable[name] = result
        return result

    def value(self, name: str) -> Optional[np.ndarray]:
        return self.constants.get(name)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _present(names, index: int) -> bool:
    return len(names) > index and names[index] != ""


def _const_input(what: str, *indices: int) -> Callable:
    def rule(node, scope):
        return [f"input {i} ({node.input[i]!r}, {what}) must be a build-time constant (initializer or Constant)"
                for i in indices if _present(node.input, i) and not scope.is_constant(node.input[i])]
    return rule


def _foldable_input(what: str, index: int) -> Callable:
    def rule(node, scope):
        if _present(node.input, index) and not scope.is_foldable(node.input[index]):
            return [f"input {index} ({node.input[index]!r}, {what}) must be resolvable to a build-time constant"]
        return []
    return rule


def _pool(node, scope):
    out = []
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        out.append(f"dilations must be empty or all ones, got {list(dilations)}")
    kernel = _attr(node, "kernel_shape")
    if node.op_type in ("AveragePool", "MaxPool") and kernel is not None and len(kernel) not in (2, 3):
        out.append(f"only 2D or 3D pooling is supported, kernel_shape is {list(kernel)}")
    if node.op_type == "MaxPool" and _present(node.output, 1):
        out.append("the Indices output is not supported")
    return out


def _constant(node, scope):
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [f"attribute {name!r} is not supported" for name in bad]


def _dropout(node, scope):
    if not _present(node.input, 2):
        return []
    name = node.input[2]
    if not scope.is_constant(name):
        return ["training_mode must be an initializer that evaluates to False"]
    value = scope.value(name)
    return ["training_mode is True; export in eval mode"] if value is not None and bool(np.any(value)) else []


def _extra_outputs(first_unsupported: int, what: str):
    def rule(node, scope):
        return [f"{what}: output {i} ({node.output[i]!r}) is not supported"
                for i in range(first_unsupported, len(node.output)) if node.output[i]]
    return rule


def _rnn(node, scope):
    out = []
    if node.op_type == "LSTM":
        if _attr(node, "input_forget", 0) != 0:
            out.append("input_forget must be 0")
        if _attr(node, "layout", 0) != 0:
            out.append("layout must be 0")
    if _s(_attr(node, "direction", b"forward")) == "bidirectional":
        acts = [_s(a) for a in (_attr(node, "activations") or [])]
        half = len(acts) // 2
        if acts and acts[:half] != acts[half:]:
            out.append("bidirectional: forward and reverse activations must be the same")
    return out


def _topk(node, scope):
    out = []
    if _attr(node, "sorted", 1) != 1:
        out.append("sorted must be 1")
    if len(node.input) > 1:
        k = scope.value(node.input[1])
        if k is not None and int(np.max(k)) >= 3840:
            out.append(f"K must be less than 3840, got {int(np.max(k))}")
    return out


def _scatternd(node, scope):
    reduction = _s(_attr(node, "reduction", b"none"))
    return [] if reduction == "none" else [f"reduction {reduction!r} is not supported (only 'none')"]


_RESIZE = {
    "coordinate_transformation_mode": ({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                        "align_corners"}, "half_pixel"),
    "mode": ({"nearest", "linear"}, "nearest"),
    "nearest_mode": ({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}, "round_prefer_floor"),
    "keep_aspect_ratio_policy": ({"stretch"}, "stretch"),
}


def _resize(node, scope):
    out = []
    for name, (allowed, default) in _RESIZE.items():
        value = _s(_attr(node, name, default))
        if value not in allowed:
            out.append(f"{name}={value!r} is not supported (supported: {', '.join(sorted(allowed))})")
    if _attr(node, "antialias", 0):
        out.append("antialiasing is not supported")
    return out


def _attention(node, scope):
    out = [f"input {i} ({label}) is not supported" for i, label in
           ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")) if _present(node.input, i)]
    out += _extra_outputs(1, "present_key/present_value/qk_matmul_output")(node, scope)
    for name in ("qk_matmul_output_mode", "softcap"):
        if _attr(node, name, 0):
            out.append(f"attribute {name} is not supported")
    for i, label in ((0, "Q"), (1, "K"), (2, "V"), (3, "attn_mask")):
        if _present(node.input, i) and scope.ranks.get(node.input[i], 4) != 4:
            out.append(f"{label} must be 4D, is {scope.ranks[node.input[i]]}D")
    return out


def _zero_point(index: int, label: str):
    def rule(node, scope):
        if not _present(node.input, index):
            return []
        value = scope.value(node.input[index])
        return [f"{label} must be zero"] if value is not None and np.any(value.astype(np.float64) != 0) else []
    return rule


def _rank(index: int, rank: int, label: str):
    def rule(node, scope):
        actual = scope.ranks.get(node.input[index]) if _present(node.input, index) else None
        return [f"{label} must be {rank}D, is {actual}D"] if actual is not None and actual != rank else []
    return rule


def _tensor_scatter(node, scope):
    axis = _attr(node, "axis", -2)
    return [] if axis == -2 else [f"axis must be -2, got {axis}"]


_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
RESTRICTIONS: dict[str, list[Callable]] = {
    "AveragePool": [_pool], "MaxPool": [_pool], "LpPool": [_pool],
    "Constant": [_constant],
    "Dropout": [_dropout],
    "LayerNormalization": [_extra_outputs(1, "only the first output Y is supported")],
    "LSTM": [_rnn], "GRU": [_rnn], "RNN": [_rnn],
    "TopK": [_topk],
    "ScatterND": [_scatternd],
    "Resize": [_resize],
    "Attention": [_attention],
    "CumSum": [_const_input("axis", 1)],
    "OneHot": [_const_input("depth", 1)],
    "Squeeze": [_foldable_input("axes", 1)], "Unsqueeze": [_foldable_input("axes", 1)],
    "STFT": [_const_input("frame_step / window", 1, 2)],
    "QuantizeLinear": [_zero_point(2, "y_zero_point")], "DequantizeLinear": [_zero_point(2, "x_zero_point")],
    "GridSample": [_rank(0, 4, "input")],
    "TensorScatter": [_tensor_scatter, _rank(0, 4, "past_cache"), _rank(1, 4, "update")],
    **{op: [_const_input("axes", 1)] for op in _REDUCE},
}


# ----------------------------------------------------------------------------------------------------------
# Walking the model
# ----------------------------------------------------------------------------------------------------------

def _tensor_value(tensor: onnx.TensorProto) -> Optional[np.ndarray]:
    if tensor.data_location == TensorProto.EXTERNAL:
        return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:                                   # exotic dtypes numpy cannot hold: value unknown
        return None


def _constants(nodes, initializers=(), outer: Optional[dict] = None) -> dict:
    constants = dict(outer or {})
    constants.update({t.name: _tensor_value(t) for t in initializers})
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = _attr(node, "value")
            constants[node.output[0]] = _tensor_value(value) if isinstance(value, TensorProto) else None
    return constants


def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
    ranks = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    for t in graph.initializer:
        ranks[t.name] = len(t.dims)
    return ranks


def _producers(nodes, outer: Optional[dict] = None) -> dict:
    found = dict(outer or {})
    found.update({out: node for node in nodes for out in node.output if out})
    return found


def _walk(nodes, where: str, scope: _Scope, functions: set, report: OpSupportReport, ranks: dict,
          version: Optional[tuple[int, int]] = None) -> None:
    for node in nodes:
        name = node.name or (node.output[0] if node.output else "")
        report.op_counts[node.op_type] = report.op_counts.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) not in functions:
                report.findings.append(Finding(
                    "error", where, name, node.op_type,
                    f"operator of domain {node.domain!r} is not an ONNX operator; TensorRT would need a plugin "
                    f"named {node.op_type!r}"))
        elif node.op_type in UNSUPPORTED:
            report.findings.append(Finding("error", where, name, node.op_type,
                                           "not supported by the TensorRT ONNX parser"))
        elif node.op_type not in SUPPORTED:
            report.findings.append(Finding("error", where, name, node.op_type,
                                           f"not in TensorRT's operator support matrix ({MATRIX_VERSION})"))
        else:
            first = MIN_VERSION.get(node.op_type)
            if version is not None and first is not None and version < first:
                report.findings.append(Finding("error", where, name, node.op_type,
                                               f"TensorRT {version[0]}.{version[1]}'s parser does not have it "
                                               f"(added in {first[0]}.{first[1]})"))
            for rule in RESTRICTIONS.get(node.op_type, ()):
                for message in rule(node, scope):
                    report.findings.append(Finding("error", where, name, node.op_type, message))
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
            for sub in subgraphs:
                sub_ranks = {**ranks, **_ranks(sub)}
                sub_scope = _Scope(_constants(sub.node, sub.initializer, scope.constants), sub_ranks,
                                   _producers(sub.node, scope.producers))
                _walk(sub.node, f"{where}/{node.op_type} {name!r}/{attr.name}", sub_scope, functions, report,
                      sub_ranks, version)


def _check_dtypes(model: onnx.ModelProto, report: OpSupportReport) -> None:
    """Dtype of every tensor each node reads and writes, on an inlined, shape-inferred copy of the model."""
    inlined = onnx.inliner.inline_local_functions(model) if model.functions else model
    try:
        inferred = onnx.shape_inference.infer_shapes(inlined, strict_mode=False, data_prop=False)
    except Exception as err:                           # malformed models are the ONNX checker's job
        report.findings.append(Finding("warning", "graph", "", "-", f"shape inference failed ({err}); "
                                                                     "tensor dtypes were not checked"))
        return
    graph = inferred.graph
    types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}

    def collect(g):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            types[t.name] = t.data_type
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                value = _attr(node, "value")
                if isinstance(value, TensorProto):
                    types[node.output[0]] = value.data_type
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    collect(sub)

    collect(graph)
    for vi in list(graph.input) + list(graph.output):
        dtype = types.get(vi.name)
        if dtype is not None and dtype not in _IO_TYPES:
            report.findings.append(Finding("error", "graph", vi.name, "io",
                                           f"network input/output dtype {_dtype_name(dtype)} is not supported"))
    untyped = 0
    for where, node in _nodes_recursive(graph, "graph"):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _SUPPORTED_TYPES:
            continue
        if node.op_type in _NO_DTYPE_CHECK:
            continue
        allowed_main = _SUPPORTED_TYPES[node.op_type]
        aux = _AUX_SLOTS.get(node.op_type, {})
        for kind, names in (("in", node.input), ("out", node.output)):
            for index, tensor in enumerate(names):
                if not tensor:
                    continue
                dtype = types.get(tensor)
                if dtype is None:
                    untyped += 1
                    continue
                allowed = _types(aux[kind][index]) if index in aux.get(kind, {}) else allowed_main
                if dtype in allowed:
                    continue
                name = node.name or (node.output[0] if node.output else "")
                label = f"{'input' if kind == 'in' else 'output'} {index} ({tensor!r})"
                if dtype == TensorProto.DOUBLE and TensorProto.FLOAT in allowed:
                    report.findings.append(Finding("warning", where, name, node.op_type,
                                                   f"{label} is DOUBLE: TensorRT casts it to FLOAT, clamping to "
                                                   f"±FLT_MAX"))
                else:
                    report.findings.append(Finding(
                        "error", where, name, node.op_type,
                        f"{label} has dtype {_dtype_name(dtype)}; supported: "
                        f"{', '.join(sorted(_dtype_name(t) for t in allowed))}"))
    if untyped:
        report.findings.append(Finding("warning", "graph", "", "-", f"{untyped} tensor uses have no inferred "
                                                                    f"dtype and were not checked"))


def _nodes_recursive(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.NodeProto]]:
    for node in graph.node:
        yield where, node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _nodes_recursive(sub, f"{where}/{node.op_type} {node.name!r}/{attr.name}")


def _dtype_name(dtype: int) -> str:
    return TensorProto.DataType.Name(dtype)


def installed_tensorrt_version() -> Optional[str]:
    """The installed TensorRT's version, or None (no import of TensorRT when it is absent)."""
    from engines.backends.tensorrt.install import tensorrt_version

    return tensorrt_version()


def _version_tuple(version: str) -> tuple[int, int]:
    major, _, rest = str(version).partition(".")
    minor = rest.split(".")[0]
    return int(major), int(minor) if minor.isdigit() else 0


def max_opset_for(version: Optional[tuple[int, int]]) -> int:
    """Newest opset the parser of TensorRT ``version`` is known to parse (the matrix's when version is None)."""
    if version is None:
        return MAX_OPSET
    known = [opset for first, opset in MAX_OPSET_BY_VERSION if first <= version]
    return known[-1] if known else MAX_OPSET_BY_VERSION[0][1]


def check_model(model, max_opset: int = MAX_OPSET, trt_version: Optional[str] = "installed") -> OpSupportReport:
    """Check an ONNX model (ModelProto or path; external weights are not loaded) against the matrix.

    trt_version: the TensorRT release to check for ("10.8.0"); "installed" (default) uses the installed one,
    None (or no TensorRT installed) checks against the matrix alone.
    """
    if not isinstance(model, onnx.ModelProto):
        from fit_export.onnx_export import read_onnx
        model = read_onnx(model)
    if trt_version == "installed":
        trt_version = installed_tensorrt_version()
    version = _version_tuple(trt_version) if trt_version else None
    report = OpSupportReport()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    report.opset = opset
    if opset is None or not MIN_OPSET <= opset <= max_opset:
        report.findings.append(Finding("error", "model", "", "opset",
                                       f"ai.onnx opset {opset} is outside the parser's range "
                                       f"{MIN_OPSET}..{max_opset}"))
    elif opset > max_opset_for(version):
        report.findings.append(Finding("warning", "model", "", "opset",
                                       f"ai.onnx opset {opset} is newer than TensorRT {version[0]}.{version[1]} is "
                                       f"known to parse (up to {max_opset_for(version)})"))
    functions = {(f.domain, f.name) for f in model.functions}
    graph = model.graph
    ranks = _ranks(graph)
    _walk(graph.node, "graph", _Scope(_constants(graph.node, graph.initializer), ranks, _producers(graph.node)),
          functions, report, ranks, version)
    for function in model.functions:
        _walk(function.node, f"function {function.domain}::{function.name}",
              _Scope(_constants(function.node), {}, _producers(function.node)), functions, report, {}, version)
    _check_dtypes(model, report)
    return report


def assert_supported(model, max_opset: int = MAX_OPSET, trt_version: Optional[str] = "installed") -> OpSupportReport:
    """:func:`check_model`, raising :class:`UnsupportedByTensorRT` (listing every error) when any is found."""
    report = check_model(model, max_opset, trt_version)
    if not report.ok:
        raise UnsupportedByTensorRT(report.format())
    return report
