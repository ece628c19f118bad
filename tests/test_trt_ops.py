"""The TensorRT ONNX-parser op-support check (fit_export/trt_ops.py, `fit-export trt-check`), no GPU: on a real
exported graph and on graphs with deliberately unsupported ops, attributes and dtypes, version-aware."""
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from cli.trt import trt_check
from fit_export.trt_ops import SUPPORTED, UNSUPPORTED, UnsupportedByTensorRT, assert_supported, check_model
from tests.runtime_helpers import tiny_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


# ----------------------------------------------------------------------------------------------------------
# Op support: the real exported graph
# ----------------------------------------------------------------------------------------------------------

def test_exported_graph_is_supported(package):
    report = assert_supported(package / "transformer.onnx")
    assert report.ok and report.opset == 18
    assert report.op_counts.get("MatMul", 0) + report.op_counts.get("Gemm", 0) > 0
    assert not [f for f in report.findings if "not checked" in f.message]     # every tensor had a dtype
    result = CliRunner().invoke(trt_check, [str(package)])
    assert result.exit_code == 0 and "0 error(s)" in result.output


def test_fp16_export_is_supported(tmp_path):
    from fit_export import export_package
    from tests.runtime_helpers import tiny_model

    path = export_package(tiny_model(), None, tmp_path / "fp16", precision="fp16")
    report = check_model(path / "transformer.onnx")
    assert report.ok, report.format()
    assert report.op_counts["Cast"] > 1                              # the fp32 islands are there and accepted


def test_a_plugin_op_injected_into_the_exported_graph_is_caught(package, tmp_path):
    model = onnx.load(str(package / "transformer.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Softmax")
    node.domain = "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedByTensorRT, match="domain 'com.microsoft'.*plugin named 'Softmax'"):
        assert_supported(model)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    result = CliRunner().invoke(trt_check, [str(bad)])
    assert result.exit_code == 1 and "1 error(s)" in result.output


# ----------------------------------------------------------------------------------------------------------
# Op support: small graphs with deliberately unsupported ops, attributes and dtypes
# ----------------------------------------------------------------------------------------------------------

def make(nodes, inputs, outputs, initializers=(), opset=18, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def vi(name, dtype=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def errors(model):
    return [f"{f.op}: {f.message}" for f in check_model(model).errors]


def test_matrix_is_consistent():
    assert not set(SUPPORTED) & UNSUPPORTED
    assert {"LayerNormalization", "Attention", "RotaryEmbedding", "RMSNormalization", "MatMul"} <= set(SUPPORTED)


def test_clean_small_graph_passes():
    model = make([helper.make_node("Add", ["a", "b"], ["c"])], [vi("a"), vi("b")], [vi("c")])
    assert errors(model) == [] and check_model(model).ok


def test_unsupported_and_unknown_ops():
    model = make([helper.make_node("Unique", ["a"], ["u"]),
                  helper.make_node("BitwiseAnd", ["i", "i"], ["j"])],
                 [vi("a"), vi("i", TensorProto.INT32)], [vi("u", shape=(None,)), vi("j", TensorProto.INT32)])
    found = errors(model)
    assert "Unique: not supported by the TensorRT ONNX parser" in found
    assert "BitwiseAnd: not supported by the TensorRT ONNX parser" in found
    made_up = make([helper.make_node("FancyOp", ["a"], ["b"], domain="my.ops")], [vi("a")], [vi("b")])
    made_up.opset_import.append(helper.make_opsetid("my.ops", 1))
    assert any("plugin named 'FancyOp'" in e for e in errors(made_up))


def test_dtypes_outside_the_matrix():
    int8_add = make([helper.make_node("Add", ["a", "b"], ["c"])], [vi("a", TensorProto.INT8), vi("b", TensorProto.INT8)],
                    [vi("c", TensorProto.INT8)])
    assert any("Add: input 0 ('a') has dtype INT8" in e for e in errors(int8_add))
    int_matmul = make([helper.make_node("MatMul", ["a", "b"], ["c"])],
                      [vi("a", TensorProto.INT32, (2, 3)), vi("b", TensorProto.INT32, (3, 2))],
                      [vi("c", TensorProto.INT32, (2, 2))])
    assert any("MatMul: output 0 ('c') has dtype INT32; supported: BFLOAT16, FLOAT, FLOAT16" in e
               for e in errors(int_matmul))
    # DOUBLE inside the graph is cast down (a warning); as a network input it has no TensorRT binding.
    double = make([helper.make_node("Cast", ["a"], ["d"], to=TensorProto.DOUBLE), helper.make_node("Relu", ["d"], ["e"]),
                   helper.make_node("Cast", ["e"], ["b"], to=TensorProto.FLOAT)], [vi("a")], [vi("b")])
    report = check_model(double)
    assert report.ok and any("Relu" == f.op and "DOUBLE" in f.message and f.severity == "warning"
                             for f in report.findings)
    double_io = make([helper.make_node("Relu", ["a"], ["b"])], [vi("a", TensorProto.DOUBLE)], [vi("b")])
    assert any("io: network input/output dtype DOUBLE" in e for e in errors(double_io))
    # Index inputs are not the data type: Gather with int64 indices on float data is fine.
    gather = make([helper.make_node("Gather", ["a", "i"], ["b"])], [vi("a"), vi("i", TensorProto.INT64, (2,))],
                  [vi("b", shape=(2, 3))])
    assert errors(gather) == []
    # RotaryEmbedding position_ids must be INT64.
    rope = make([helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], ["y"])],
                [vi("x", shape=(1, 2, 4, 8)), vi("c", shape=(4, 4)), vi("s", shape=(4, 4)),
                 vi("p", TensorProto.INT32, (1, 4))], [vi("y", shape=(1, 2, 4, 8))], opset=23)
    assert any("RotaryEmbedding: input 3 ('p') has dtype INT32" in e for e in errors(rope))


def test_attribute_and_structure_restrictions():
    nodes = [
        helper.make_node("Resize", ["a", "", "scales"], ["r"], mode="cubic"),
        helper.make_node("Resize", ["a", "", "scales"], ["r2"], antialias=1, mode="linear"),
        helper.make_node("TopK", ["v", "k"], ["tv", "ti"], sorted=0),
        helper.make_node("MaxPool", ["img"], ["mp", "mpi"], kernel_shape=[2, 2]),
        helper.make_node("AveragePool", ["img"], ["ap"], kernel_shape=[2, 2], dilations=[2, 2]),
        helper.make_node("ScatterND", ["a", "idx", "upd"], ["sc"], reduction="add"),
        helper.make_node("LayerNormalization", ["a", "scale"], ["ln", "mean"]),
        helper.make_node("ReduceSum", ["a", "axes_in"], ["rs"]),
        helper.make_node("Constant", [], ["str"], value_strings=["hi"]),
        helper.make_node("Dropout", ["a", "ratio", "train"], ["do"]),
    ]
    inits = [helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, 2.0]),
             helper.make_tensor("k", TensorProto.INT64, [1], [2]), helper.make_tensor("scale", TensorProto.FLOAT, [3], [1] * 3),
             helper.make_tensor("idx", TensorProto.INT64, [1, 1], [0]), helper.make_tensor("upd", TensorProto.FLOAT, [1, 3], [1] * 3),
             helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("train", TensorProto.BOOL, [], [True])]
    model = make(nodes, [vi("a"), vi("v", shape=(5,)), vi("img", shape=(1, 1, 4, 4)), vi("axes_in", TensorProto.INT64, (1,))],
                 [vi(n, shape=None) for n in ("r", "r2", "tv", "mp", "ap", "sc", "ln", "rs", "do")] +
                 [vi("ti", TensorProto.INT64, None), vi("mpi", TensorProto.INT64, None), vi("mean", shape=None)],
                 inits)
    found = "\n".join(errors(model))
    for expected in ("Resize: mode='cubic' is not supported", "Resize: antialiasing is not supported",
                     "TopK: sorted must be 1", "MaxPool: the Indices output is not supported",
                     "AveragePool: dilations must be empty or all ones", "ScatterND: reduction 'add'",
                     "LayerNormalization: only the first output Y is supported",
                     "ReduceSum: input 1 ('axes_in', axes) must be a build-time constant",
                     "Constant: attribute 'value_strings' is not supported",
                     "Dropout: training_mode is True"):
        assert expected in found, found


def test_constant_axes_from_a_constant_node_are_accepted():
    nodes = [helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
             helper.make_node("Unsqueeze", ["a", "axes"], ["b"])]
    assert errors(make(nodes, [vi("a")], [vi("b", shape=(1, 2, 3))])) == []


def test_function_bodies_and_subgraphs_are_checked():
    body = [helper.make_node("Unique", ["x"], ["u"]), helper.make_node("MatMul", ["u", "u"], ["out"])]
    function = helper.make_function("my.fns", "Bad", ["x"], ["out"], body,
                                    [helper.make_opsetid("", 18)])
    model = make([helper.make_node("Bad", ["a"], ["b"], domain="my.fns")],
                 [vi("a", TensorProto.INT32, (3,))], [vi("b", TensorProto.INT32, None)], functions=[function])
    report = check_model(model)
    wheres = {(f.where, f.op) for f in report.errors}
    assert ("function my.fns::Bad", "Unique") in wheres                  # the body's op, by function name
    assert not any(f.op == "Bad" for f in report.errors)                 # the call itself is fine
    assert any(f.op == "MatMul" and "INT32" in f.message for f in report.errors)   # dtype inside the body

    then_branch = helper.make_graph([helper.make_node("Det", ["m"], ["d"])], "then", [], [vi("d", shape=())])
    else_branch = helper.make_graph([helper.make_node("Identity", ["m"], ["e"])], "else", [], [vi("e", shape=())])
    cond = make([helper.make_node("If", ["c"], ["o"], then_branch=then_branch, else_branch=else_branch)],
                [vi("c", TensorProto.BOOL, ()), vi("m", shape=(2, 2))], [vi("o", shape=None)])
    report = check_model(cond)
    assert [(f.where, f.op) for f in report.errors] == [("graph/If 'o'/then_branch", "Det")]


def test_opset_outside_the_parser_range():
    model = make([helper.make_node("Relu", ["a"], ["b"])], [vi("a")], [vi("b")], opset=8)
    assert any(e.startswith("opset: ai.onnx opset 8 is outside") for e in errors(model))


# ----------------------------------------------------------------------------------------------------------
# What older TensorRT versions parse; constant folding
# ----------------------------------------------------------------------------------------------------------

def test_op_check_knows_what_older_tensorrt_parses():
    attention = make([helper.make_node("Attention", ["q", "k", "v"], ["o"])],
                     [vi(n, shape=(1, 2, 4, 8)) for n in "qkv"], [vi("o", shape=(1, 2, 4, 8))], opset=23)
    assert check_model(attention, trt_version="10.15.0").ok
    assert check_model(attention, trt_version="11.4.0").ok
    assert any("TensorRT 10.13's parser does not have it (added in 10.14)" in e
               for e in [f.message for f in check_model(attention, trt_version="10.13.1").errors])
    relu = make([helper.make_node("Relu", ["a"], ["b"])], [vi("a")], [vi("b")], opset=22)
    old = check_model(relu, trt_version="10.0.1")
    assert old.ok and any("opset 22 is newer than TensorRT 10.0 is known to parse (up to 20)" in f.message
                          for f in old.findings)
    assert not check_model(relu, trt_version="10.16.0").findings


def test_squeeze_axes_that_fold_to_a_constant_are_accepted():
    nodes = [helper.make_node("Constant", [], ["a0"], value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
             helper.make_node("Neg", ["a0"], ["a1"]),
             helper.make_node("Add", ["a1", "a0"], ["axes"]),                  # folds: constants only
             helper.make_node("Unsqueeze", ["a", "axes"], ["b"]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Slice", ["s", "st", "en"], ["dyn"]),            # depends on the input: no fold
             helper.make_node("Unsqueeze", ["a", "dyn"], ["c"])]
    inits = [helper.make_tensor("st", TensorProto.INT64, [1], [0]), helper.make_tensor("en", TensorProto.INT64, [1], [1])]
    found = errors(make(nodes, [vi("a")], [vi("b", shape=None), vi("c", shape=None)], inits))
    assert found == ["Unsqueeze: input 1 ('dyn', axes) must be resolvable to a build-time constant"]
