"""fp32 ONNX -> typed fp16/bf16 graph (fit_export.typed): the dtype rule, the ONNX Runtime check against the fp32
graph, and the refusal of a conversion that overflows. Needs no GPU."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from fit_export.tensorrt import plan_build, validation_feeds
from fit_export.trt_ops import check_model
from fit_export.typed import FP32_OPS, MIN_COSINE, TypedGraphError, convert, emulate, save_model, typed_graph, validate
from tests.runtime_helpers import tiny_package

LOW = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_package_graph_converts_and_matches_fp32(package, tmp_path, precision):
    feeds = validation_feeds(plan_build(package, precision=precision))
    result = typed_graph(package / "transformer.onnx", precision, tmp_path / "typed.onnx", feeds)
    assert result.cosine >= MIN_COSINE and result.conversion.low_nodes > 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "typed.onnx")), full_check=True)
    model = ir.load(str(tmp_path / "typed.onnx"))
    graph = model.graph
    low = LOW[precision]
    # Bindings are those of the fp32 package.
    assert [(v.name, v.dtype) for v in graph.inputs] == [(v.name, v.dtype) for v in
                                                         ir.load(str(package / "transformer.onnx")).graph.inputs]
    assert [(v.name, v.dtype) for v in graph.outputs] == [("v", ir.DataType.FLOAT)]
    nodes = list(graph)
    assert all(n.outputs[0].dtype == ir.DataType.FLOAT for n in nodes if n.op_type in FP32_OPS)
    assert {n.outputs[0].dtype for n in nodes if n.op_type == "MatMul"} == {low}
    # The timestep embedding (sin/cos of t) and the conditioning Gemms stay fp32.
    assert {n.outputs[0].dtype for n in nodes if n.op_type in ("Sin", "Cos", "Gemm")} == {ir.DataType.FLOAT}
    # Weights of the token stream are stored low; no fp32 copy is left behind.
    matmul_weights = [i for n in nodes if n.op_type == "MatMul" for i in n.inputs if i.is_initializer()]
    assert matmul_weights and {w.dtype for w in matmul_weights} == {low}
    assert all(v.uses() for v in graph.initializers.values())
    assert check_model(tmp_path / "typed.onnx", trt_version=None).ok


def test_emulation_rounds_where_the_graph_stores_low_precision(package, tmp_path):
    import onnxruntime as ort

    feeds = validation_feeds(plan_build(package))
    model = ir.load(str(package / "transformer.onnx"))
    convert(model, "bf16")
    save_model(model, tmp_path / "typed.onnx")
    emulate(model)
    low = [v for n in model.graph for v in n.outputs if v.dtype == ir.DataType.BFLOAT16]
    assert low and all(v.producer().op_type == "Cast" and {u.op_type for u, _ in v.uses()} == {"Cast"}
                       for v in low)                                 # bf16 only as a store-and-reload round trip
    assert not [v for v in model.graph.initializers.values() if v.dtype == ir.DataType.BFLOAT16]
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(package / "transformer.onnx"), providers=["CPUExecutionProvider"])
    out, ref = session.run(None, feeds[0])[0], reference.run(None, feeds[0])[0]
    assert not np.array_equal(out, ref)                              # bf16 rounding happened
    assert validate(package / "transformer.onnx", tmp_path / "typed.onnx", feeds) >= MIN_COSINE


def rms_graph(scale: float = 1.0) -> onnx.ModelProto:
    """v = (RMSNorm((x @ W1) * scale) @ W2) * mask, the RMSNorm written as an RMSNorm config exports it
    (Pow, ReduceMean, Add eps, Sqrt, Div); no value_info, so the converter has to infer every dtype."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),
        helper.make_node("Pow", ["hs", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        helper.make_node("Div", ["hs", "rms"], ["normed"]),
        helper.make_node("MatMul", ["normed", "w2"], ["proj"]),
        helper.make_node("Unsqueeze", ["mask", "axes"], ["m3"]),
        helper.make_node("Mul", ["proj", "m3"], ["v"]),
    ]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6])] + [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name) for name in ("w1", "w2")]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n", 8]),
                                             helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["b", "n"])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["b", "n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def rms_feed():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((2, 5, 8)).astype(np.float32), "mask": np.ones((2, 5), np.float32)}


def test_rmsnorm_statistics_stay_fp32_up_to_the_matrix_product():
    model = ir.from_proto(rms_graph())
    convert(model, "fp16")
    dtypes = {n.outputs[0].name: n.outputs[0].dtype for n in model.graph}
    for name in ("sq", "ms", "mse", "rms"):                         # x², its mean, +eps, sqrt: fp32
        assert dtypes[name] == ir.DataType.FLOAT, name
    for name in ("h", "hs", "normed", "proj"):                      # the token stream: fp16
        assert dtypes[name] == ir.DataType.FLOAT16, name
    pow_input = next(n for n in model.graph if n.op_type == "Pow").inputs[0]
    assert pow_input.producer().op_type == "Cast"                   # x² of the fp16 stream, cast up first
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT


def test_an_overflowing_conversion_is_refused(tmp_path):
    source = tmp_path / "big.onnx"
    onnx.save(rms_graph(scale=1e5), str(source))
    # (x @ W1) * 1e5 is fine in fp32 and in bf16 (same exponent range), not in fp16 (max 65504).
    with pytest.raises(TypedGraphError, match="fp16 conversion of big.onnx is off on ONNX Runtime"):
        typed_graph(source, "fp16", tmp_path / "big.fp16.onnx", [rms_feed()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]           # nothing left behind
    assert typed_graph(source, "bf16", tmp_path / "big.bf16.onnx", [rms_feed()]).cosine >= MIN_COSINE


def test_only_fp32_flat_standard_graphs_are_converted(package):
    with pytest.raises(TypedGraphError, match="unknown precision"):
        convert(ir.load(str(package / "transformer.onnx")), "int8")
    model = ir.from_proto(rms_graph())
    convert(model, "fp16")
    with pytest.raises(TypedGraphError, match="not an fp32 graph"):
        convert(model, "bf16")
    foreign = rms_graph()
    foreign.graph.node[4].domain = "com.microsoft"
    foreign.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(TypedGraphError, match="non-standard ops"):
        convert(ir.from_proto(foreign), "fp16")
