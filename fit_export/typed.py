"""fp32 ONNX graph -> typed fp16/bf16 graph, so every TensorRT build is strongly typed (TensorRT 10 and 11).

TensorRT 11 removed weak typing (builder precision flags, per-layer precision), so an fp16 or bf16 engine from
an fp32 package needs an ONNX graph whose tensors already carry those dtypes. :func:`convert` rewrites the graph
with onnx-ir (the IR the exporter itself produces) by one rule, with the fp16 export's :data:`FP32_OPS`:

* graph inputs and outputs keep their dtypes (``x``/``v`` float32; casts inside the graph), so the engine's
  bindings are those of the fp32 package;
* :data:`FP32_OPS` (LayerNormalization, RMSNormalization, Softmax, Pow, the summing reductions) compute in
  float32: their low-precision inputs are cast up;
* matrix products (:data:`MATRIX_OPS`) whose data derives from ``x`` compute in the low precision, their
  weights converted once;
* every other op computes in the low precision when any of its float inputs is low precision, else in
  float32. So the conditioning paths (``t`` embedding, labels, RoPE tables, mask) stay float32 until they
  meet the token stream, and the elementwise chain after a float32 op (RMSNorm's ``+eps``, ``sqrt``; the
  LayerNorm modulation) stays float32 up to the next matrix product.

:func:`validate` runs the typed graph's numerics on ONNX Runtime against the fp32 graph: ONNX Runtime's CPU
provider has no bf16 (and few fp16) kernels, so it runs an :func:`emulate`-d copy: the typed graph with every
low-precision tensor stored through its dtype (Cast to fp16/bf16 and back) and computed in float32. That
checks the dtype assignment (overflow, lost precision) of exactly the graph TensorRT builds; the matrix
accumulation itself is TensorRT's (float32 accumulate for fp16/bf16 inputs).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir

FP32_OPS = ("LayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax", "Pow", "ReduceMean", "ReduceSum",
            "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd")
MATRIX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention")
TOKEN_INPUT = "x"
EXTERNAL_DATA_LIMIT = 2 * 1024 ** 3 - 64 * 1024 ** 2     # protobuf's 2 GiB cap, minus room for the graph itself
MIN_COSINE = 0.999
LOW_DTYPES = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
_NUMPY = {ir.DataType.FLOAT16: np.float16, ir.DataType.BFLOAT16: ml_dtypes.bfloat16}
_F32 = ir.DataType.FLOAT


class TypedGraphError(ValueError):
    """The graph cannot be converted, or the converted graph is numerically off; the message says which."""


@dataclass(frozen=True)
class Conversion:
    precision: str
    low_nodes: int           # nodes computing in fp16/bf16
    fp32_nodes: int          # nodes computing in float32
    casts: int               # Cast nodes added
    converted_weights: int   # initializers stored in fp16/bf16

    def to_dict(self) -> dict:
        return {"precision": self.precision, "low_nodes": self.low_nodes, "fp32_nodes": self.fp32_nodes,
                "casts": self.casts, "converted_weights": self.converted_weights}


def constant_array(value: ir.Value):
    """The float32 array of an initializer or Constant-node output, else None."""
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].value.numpy()
    return None


def convert(model: ir.Model, precision: str) -> Conversion:
    """Rewrite ``model`` (an fp32 graph) in place to compute in ``precision`` (fp16/bf16) by the module's rule."""
    if precision not in LOW_DTYPES:
        raise TypedGraphError(f"unknown precision {precision!r}; choose one of {', '.join(LOW_DTYPES)}")
    low = LOW_DTYPES[precision]
    graph = model.graph
    if model.functions or any(graph.subgraphs()):
        raise TypedGraphError("the graph has local functions or control flow; only flat graphs are converted")
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in graph if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise TypedGraphError(f"the graph uses non-standard ops ({', '.join(foreign)}); cannot convert it")
    if any(v.dtype in LOW_DTYPES.values() for v in list(graph.inputs) + list(graph.initializers.values())):
        raise TypedGraphError("the graph is not an fp32 graph (it already has fp16/bf16 tensors)")

    if any(out.dtype is None for node in graph for out in node.outputs):
        from onnx_ir.passes.common import ShapeInferencePass

        ShapeInferencePass(strict_mode=False, data_prop=False)(model)         # in place: types of every value
        untyped = [out.name for node in graph for out in node.outputs if out.dtype is None]
        if untyped:
            raise TypedGraphError(f"ONNX type inference left {len(untyped)} tensors untyped ({untyped[0]}, ...)")
    dtype: dict[ir.Value, ir.DataType] = {v: _F32 for v in list(graph.inputs) + list(graph.initializers.values())
                                          if v.dtype == _F32}
    tainted = {v for v in graph.inputs if v.name == TOKEN_INPUT}
    converted: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
    counts = {"low": 0, "fp32": 0, "casts": 0, "weights": 0}

    def as_dtype(value: ir.Value, target: ir.DataType, before: ir.Node) -> ir.Value:
        key = (value, target)
        if key not in converted:
            array = constant_array(value)
            if array is not None:
                with np.errstate(over="ignore"):                # an overflow is caught by validate()
                    data = array.astype(_NUMPY.get(target, np.float32))
                new = ir.Value(name=f"{value.name}.{target.name.lower()}", type=ir.TensorType(target),
                               shape=ir.Shape(array.shape), const_value=ir.tensor(data, dtype=target))
                graph.register_initializer(new)
                counts["weights"] += 1
            else:
                cast = ir.node("Cast", [value], {"to": target})
                new = cast.outputs[0]
                new.dtype, new.shape = target, value.shape
                graph.insert_before(before, cast)
                counts["casts"] += 1
            converted[key] = new
        return converted[key]

    for node in list(graph):
        floats = [(i, v) for i, v in enumerate(node.inputs) if v is not None and v in dtype]
        is_tainted = any(v in tainted for _, v in floats)
        if node.op_type in FP32_OPS:
            compute = _F32
        elif node.op_type in MATRIX_OPS:
            compute = low if is_tainted else _F32
        else:
            compute = low if any(dtype[v] == low for _, v in floats) else _F32
        if node.op_type == "Cast":
            if node.attributes["to"].value == _F32:          # float -> float keeps the input's dtype
                node.attributes["to"] = ir.AttrInt64("to", compute)
        else:
            for index, value in floats:
                if dtype[value] != compute:
                    node.replace_input_with(index, as_dtype(value, compute, node))
        for out in node.outputs:
            if out.dtype == _F32:
                dtype[out] = out.dtype = compute
                if is_tainted:
                    tainted.add(out)
        counts["low" if compute == low else "fp32"] += bool(floats) or node.op_type == "Cast"

    for index, out in enumerate(list(graph.outputs)):
        if dtype.get(out) == low:
            name, out.name = out.name, f"{out.name}.{precision}"
            cast = ir.node("Cast", [out], {"to": _F32})
            restored = cast.outputs[0]
            restored.name, restored.dtype, restored.shape = name, _F32, out.shape
            graph.append(cast)
            graph.outputs[index] = restored
            counts["casts"] += 1
    drop_unused(graph)
    return Conversion(precision, counts["low"], counts["fp32"], counts["casts"], counts["weights"])


def save_model(onnx_model: ir.Model, path) -> Optional[str]:
    """Save; weights go to ``<file>.data`` next to it when the model exceeds protobuf's 2 GB limit."""
    path = Path(path)
    weight_bytes = sum(v.const_value.nbytes for v in onnx_model.graph.initializers.values()
                       if v.const_value is not None)
    data_name = path.name + ".data" if weight_bytes > EXTERNAL_DATA_LIMIT else None
    ir.save(onnx_model, path, external_data=data_name)
    return data_name


def drop_unused(graph: ir.Graph) -> None:
    """Remove the Constant nodes and initializers nothing reads."""
    for node in reversed(list(graph)):
        if node.op_type == "Constant" and not any(out.uses() or out.is_graph_output() for out in node.outputs):
            graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]


def emulate(model: ir.Model) -> ir.Model:
    """Rewrite a typed graph in place into float32 with every fp16/bf16 tensor rounded through its dtype (stored
    low, computed in float32): runs on any ONNX Runtime, rounding exactly where the typed graph stores low
    precision. Returns ``model``."""
    graph = model.graph
    for value in graph.initializers.values():
        if value.dtype in _NUMPY:
            array = value.const_value.numpy().astype(np.float32)
            value.const_value = ir.tensor(array, dtype=_F32)
            value.dtype = _F32
    for node in list(graph):
        if node.op_type == "Cast" and node.attributes["to"].value in _NUMPY:
            node.attributes["to"] = ir.AttrInt64("to", _F32)      # its output gets the round trip below
        for out in node.outputs:
            if out.dtype not in _NUMPY:
                continue
            stored, out.dtype = out.dtype, _F32
            down = ir.node("Cast", [out], {"to": stored})
            up = ir.node("Cast", [down.outputs[0]], {"to": _F32})
            down.outputs[0].dtype, up.outputs[0].dtype = stored, _F32
            down.outputs[0].shape = up.outputs[0].shape = out.shape
            for user, index in list(out.uses()):
                if user is not down:
                    user.replace_input_with(index, up.outputs[0])
            if out.is_graph_output():
                raise TypedGraphError(f"graph output {out.name} is {stored.name}; typed graphs keep float32 outputs")
            graph.insert_after(node, [down, up])
    return model


def validate(reference: Path, typed: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Smallest cosine, over ``feeds``, between the typed graph saved at ``typed`` (run :func:`emulate`-d) and
    the fp32 graph at ``reference`` on ONNX Runtime's CPU provider, over the real (mask != 0) tokens; non-finite
    output counts as 0. The emulated graph goes to a temporary folder next to ``typed`` (weights past 2 GB as
    external data)."""
    import onnxruntime as ort

    from engines.metrics import cosine

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    fp32 = ort.InferenceSession(str(reference), options, providers=providers)
    worst = 1.0
    with tempfile.TemporaryDirectory(prefix=".emulated-", dir=Path(typed).parent) as tmp:
        path = Path(tmp) / "emulated.onnx"
        save_model(emulate(ir.load(str(typed))), path)
        low = ort.InferenceSession(str(path), options, providers=providers)
        for feed in feeds:
            ref = fp32.run(None, dict(feed))[0]
            out = low.run(None, dict(feed))[0]
            real = np.asarray(feed["mask"]) != 0
            worst = min(worst, cosine(out[real], ref[real]) if np.isfinite(out).all() else 0.0)
        del low
    return worst


def check_feeds(manifest, grid: tuple[int, int], seed: int = 0) -> list[dict]:
    """Graph feeds a conversion is checked on (:func:`validate`): one padded batch of the grid ``grid`` (h, w) and of
    one half as high and wide (cond and null label), with the package's RoPE tables (``manifest``: an
    engines.manifest.Manifest); every token random, padding too (the graph ignores it)."""
    grids = [grid, (max(1, grid[0] // 2), max(1, grid[1] // 2))]
    batch = manifest.graph.padded_batch(grids, manifest.rope.settings(),
                                        [1 % manifest.model.num_classes, manifest.model.null_class])
    return [batch.feed([0.3, 0.7], np.random.default_rng(seed).standard_normal(batch.x.shape))]


@dataclass(frozen=True)
class TypedGraph:
    path: Path
    conversion: Conversion
    cosine: float

    def to_dict(self) -> dict:
        return {**self.conversion.to_dict(), "validation_cosine": round(self.cosine, 7)}


def typed_graph(source: Path, precision: str, dest: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> TypedGraph:
    """Convert the fp32 graph ``source`` to ``precision``, save it to ``dest`` (weights to ``dest.data`` past
    2 GB) and check the saved graph against ``source`` on ONNX Runtime (cosine >= MIN_COSINE on every feed);
    when the check fails ``dest`` is removed again."""
    dest = Path(dest)
    model = ir.load(str(source))
    conversion = convert(model, precision)
    data = save_model(model, dest)
    del model
    try:
        worst = validate(source, dest, feeds)
        if not worst >= MIN_COSINE:
            raise TypedGraphError(f"the {precision} conversion of {Path(source).name} is off on ONNX Runtime "
                                  f"(cosine {worst:.6f} < {MIN_COSINE} against fp32); export an fp16 package instead")
    except BaseException:
        dest.unlink(missing_ok=True)
        if data:
            (dest.parent / data).unlink(missing_ok=True)
        raise
    return TypedGraph(dest, conversion, worst)
