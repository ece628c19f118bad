"""TensorRT work that needs no GPU: build planning and --dry-run, engine sidecars and their matching, the
TensorRT backend's refusal paths, and the TensorRT ONNX-parser op-support check (on a real exported graph and
on graphs with deliberately unsupported ops, attributes and dtypes)."""
import dataclasses
import ctypes
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from cli.trt import build, trt_check
from engines.atomic import atomic_write
from engines.errors import BackendError
from engines.backends import create_backend
from engines.buckets import BucketProfile, parse_batch, parse_profiles, plan_profiles
from engines.package import load_manifest, sha256_file
from engines.backends.tensorrt.backend import TensorRTBackend
from engines.backends.tensorrt.store import (EngineMismatchError, Sidecar, find_sidecars, read_sidecar, rebuild_command,
                                 select_engines, sidecar_mismatches, verify_engine_file, write_sidecar)
from engines.backends.tensorrt.install import GpuInfo, tensorrt_status
from fit_export.tensorrt import BuildError, plan_build
from fit_export.trt_ops import SUPPORTED, UNSUPPORTED, UnsupportedByTensorRT, assert_supported, check_model
from tests.runtime_helpers import copy_package, tiny_package

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


@pytest.fixture
def own_package(package, tmp_path):
    return copy_package(package, tmp_path / "pkg")


# ----------------------------------------------------------------------------------------------------------
# Planning and --dry-run
# ----------------------------------------------------------------------------------------------------------

def test_dry_run_prints_exact_profiles_and_engine_names(package):
    result = CliRunner().invoke(build, [str(package), "--profiles", "64,256x256", "--batch", "1:2",
                                        "--precision", "fp16", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "engine    engines/transformer.fp16.plan  (sidecar engines/transformer.fp16.json)" in out
    assert "profile 0: bucket t64 (64 tokens; any size)" in out
    assert "profile 1: bucket t256 (256 tokens; 256x256)" in out
    lines = [line.split() for line in out.splitlines()]
    # head_dim of fitv2-tiny is 16, token_dim 16; batch 1:2 images with CFG -> 2..4 rows.
    assert ["x", "min", "(2,", "65,", "16)", "opt", "(2,", "256,", "16)", "max", "(4,", "256,", "16)"] in lines
    assert ["rope_sin", "min", "(2,", "1,", "16)", "opt", "(2,", "64,", "16)", "max", "(4,", "64,", "16)"] in lines
    assert ["mask", "min", "(2,", "65)", "opt", "(2,", "256)", "max", "(4,", "256)"] in lines
    assert "strongly typed: fp32 graph converted to fp16" in out and "0 error(s)" in out
    assert not (package / "engines").exists()                       # a dry run writes nothing


def test_dry_run_json_per_bucket_static(package):
    result = CliRunner().invoke(build, [str(package), "--profiles", "64,256", "--batch", "1", "--no-cfg",
                                        "--engine-per-bucket", "--static", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["strongly_typed"] is True and plan["precision"] == "fp32"
    assert [e["engine"] for e in plan["engines"]] == ["engines/transformer.fp32.t64.plan",
                                                      "engines/transformer.fp32.t256.plan"]
    assert [e["sidecar"] for e in plan["engines"]] == ["engines/transformer.fp32.t64.json",
                                                       "engines/transformer.fp32.t256.json"]
    shapes = plan["engines"][1]["profiles"][0]["shapes"]
    assert shapes["x"] == {"min": [1, 256, 16], "opt": [1, 256, 16], "max": [1, 256, 16]}
    assert set(shapes) == {"x", "t", "y", "rope_cos", "rope_sin", "mask"}


def test_default_profiles_come_from_the_package(package):
    plan = plan_build(package)
    manifest = load_manifest(package, verify=False)
    assert [b.tokens for b in plan.buckets] == [b.tokens for b in manifest.sizes.buckets]
    assert plan.precision == manifest.transformer.precision and not plan.converted


@pytest.mark.parametrize("args, fragment", [
    (["--profiles", "256x250"], "off the pixel grid"),
    (["--batch", "3:1"], "--batch 3:1"),
    (["--precision", "int8"], "Invalid value for '--precision'"),
    (["--optimization-level", "9"], "optimization-level must be 0..5"),
])
def test_build_rejects_bad_input_in_one_line(package, args, fragment):
    result = CliRunner().invoke(build, [str(package), "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_buckets_beyond_the_declared_sizes_are_noted(package):
    plan = plan_build(package, profiles="256,384")
    assert any("t384 go beyond the package's declared sizes (256 tokens)" in n for n in plan.notes)
    assert "note      bucket(s) t384" in plan.describe()


def test_build_rejects_missing_package(tmp_path):
    result = CliRunner().invoke(build, [str(tmp_path / "nope"), "--dry-run"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_fp16_package_cannot_be_built_fp32(package):
    manifest = load_manifest(package)
    manifest = manifest.replace(transformer=dataclasses.replace(manifest.transformer, precision="fp16"))
    with pytest.raises(BuildError, match="build --precision fp16"):
        plan_build(package, precision="fp32", manifest=manifest)
    assert not plan_build(package, precision="fp16", manifest=manifest).converted


@pytest.mark.skipif(not tensorrt_status(), reason="TensorRT and a GPU are present: the refusal path is not taken")
def test_real_build_without_tensorrt_says_what_is_missing(own_package):
    result = CliRunner().invoke(build, [str(own_package), "--profiles", "64"])
    assert result.exit_code == 2
    assert "error: building TensorRT engines needs" in result.output
    assert any(part in result.output for part in ("tensorrt", "cuda-python", "NVIDIA GPU"))
    assert not list(own_package.glob("engines/*.json"))


# ----------------------------------------------------------------------------------------------------------
# Sidecars
# ----------------------------------------------------------------------------------------------------------

def fake_engine(package: Path, precision="fp32", profiles="64,256", batch="1:2", stem=None, gpu=H100,
                version="10.15.1", onnx_sha=None, build_id="b1", created="2026-11-25T20:00:00Z") -> Path:
    """Write an engine file (random bytes) and its sidecar as build_engines would."""
    manifest = load_manifest(package, verify=False)
    stem = stem or f"transformer.{precision}"
    plan = package / "engines" / f"{stem}.plan"
    plan.parent.mkdir(exist_ok=True)
    atomic_write(plan, os.urandom(1000))
    batch_range = parse_batch(batch)
    side = Sidecar(engine=plan.name, engine_sha256=sha256_file(plan), engine_bytes=1000, onnx_file="transformer.onnx",
                   onnx_sha256=onnx_sha or manifest.files["transformer.onnx"].sha256, tensorrt_version=version,
                   gpu=gpu, precision=precision, strongly_typed=precision == "fp32",
                   profiles=list(plan_profiles(parse_profiles(profiles, 16), batch_range)),
                   batch=batch_range.to_dict(), inputs=[s.to_dict() for s in manifest.graph.inputs], build_id=build_id,
                   created=created)
    write_sidecar(plan.with_suffix(".json"), side)
    return plan.with_suffix(".json")


def test_sidecar_round_trip_records_everything(own_package):
    path = fake_engine(own_package)
    doc = json.loads(path.read_text())
    assert doc["format"] == "fit-tensorrt-engine"
    assert doc["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
    assert doc["tensorrt_version"] == "10.15.1" and doc["precision"] == "fp32"
    assert doc["onnx"]["sha256"] == load_manifest(own_package).files["transformer.onnx"].sha256
    assert doc["profiles"][1]["shapes"]["rope_cos"] == {"min": [2, 65, 16], "opt": [2, 256, 16], "max": [4, 256, 16]}
    side = read_sidecar(path)
    assert side.profiles[1] == BucketProfile.from_dict(doc["profiles"][1])
    assert side.gpu == H100
    assert sorted(p.name for p in own_package.joinpath("engines").iterdir()) == ["transformer.fp32.json",
                                                                                 "transformer.fp32.plan"]


def test_mismatches_name_every_difference(own_package):
    side = read_sidecar(fake_engine(own_package))
    sha = side.onnx_sha256
    assert sidecar_mismatches(side, onnx_sha256=sha, trt_version="10.15.1", gpu=H100, precision="fp32") == []
    # Same compute capability, other card: runs (was tuned elsewhere), not refused.
    assert sidecar_mismatches(side, onnx_sha256=sha, gpu=GpuInfo("NVIDIA H200", (9, 0))) == []
    reasons = sidecar_mismatches(side, onnx_sha256="0" * 64, trt_version="10.16.0", gpu=GpuInfo("NVIDIA A100", (8, 0)),
                                 precision="fp16")
    assert len(reasons) == 4
    assert "another transformer.onnx" in reasons[0]
    assert "TensorRT 10.15.1, this is TensorRT 10.16.0" in reasons[1]
    assert "sm_90" in reasons[2] and "sm_80" in reasons[2]
    assert "it is fp32, fp16 was asked for" in reasons[3]


def test_select_engines_refuses_with_the_rebuild_command(own_package):
    manifest = load_manifest(own_package, verify=False)
    with pytest.raises(EngineMismatchError, match="has no TensorRT engines; build them"):
        select_engines(own_package, manifest)
    fake_engine(own_package, profiles="256x256,64", batch="1:2")
    with pytest.raises(EngineMismatchError) as err:
        select_engines(own_package, manifest, trt_version="10.16.0", gpu=GpuInfo("NVIDIA A100", (8, 0)))
    message = str(err.value)
    assert "transformer.fp32.json cannot run here" in message
    assert "Rebuild it: fit-export build" in message
    assert "--profiles 64,256x256 --precision fp32 --batch 1:1:2" in message
    assert len(message.splitlines()) == 1
    selected = select_engines(own_package, manifest, trt_version="10.15.1", gpu=H100)
    assert [p.name for p, _ in selected] == ["transformer.fp32.json"]


def test_rebuild_command_is_a_valid_build_line(own_package):
    fake_engine(own_package, stem="transformer.fp32.t64", profiles="64", build_id="x")
    fake_engine(own_package, stem="transformer.fp32.t256", profiles="256x256", build_id="x")
    found = [s for _, s in find_sidecars(own_package)]
    command = rebuild_command(own_package, found)
    assert command.endswith("--engine-per-bucket")
    args = command.split()[3:]                                       # after "fit-export build PACKAGE"
    result = CliRunner().invoke(build, [str(own_package), *args, "--dry-run", "--skip-op-check"])
    assert result.exit_code == 0, result.output
    assert "engines/transformer.fp32.t256.plan" in result.output


def test_newest_matching_build_wins_and_other_onnx_is_refused(own_package):
    manifest = load_manifest(own_package, verify=False)
    fake_engine(own_package, precision="fp16", build_id="old", created="2026-01-01T00:00:00Z")
    fake_engine(own_package, precision="fp32", build_id="new", created="2026-06-01T00:00:00Z")
    assert select_engines(own_package, manifest)[0][1].precision == "fp32"
    assert select_engines(own_package, manifest, precision="fp16")[0][1].precision == "fp16"
    fake_engine(own_package, precision="fp32", onnx_sha="f" * 64, build_id="new")
    with pytest.raises(EngineMismatchError, match="built from another transformer.onnx"):
        select_engines(own_package, manifest, precision="fp32")


def test_engine_file_must_match_its_sidecar(own_package):
    path = fake_engine(own_package)
    side = read_sidecar(path)
    plan = path.with_suffix(".plan")
    verify_engine_file(plan, side)
    plan.write_bytes(plan.read_bytes()[:-1] + b"\x00")               # same size, other content
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        verify_engine_file(plan, side)
    verify_engine_file(plan, side, check_hash=False)
    plan.unlink()
    with pytest.raises(EngineMismatchError, match="is missing"):
        verify_engine_file(plan, side)


def test_corrupt_sidecar_is_refused(own_package):
    path = fake_engine(own_package)
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(EngineMismatchError, match="rebuild"):
        read_sidecar(path)
    del doc["gpu"]
    doc["format_version"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(EngineMismatchError, match="incomplete"):
        read_sidecar(path)


# ----------------------------------------------------------------------------------------------------------
# The backend without TensorRT
# ----------------------------------------------------------------------------------------------------------

def test_backend_registered_as_trt_and_refuses_cleanly(own_package):
    backend = create_backend("trt", own_package)
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    with pytest.raises(BackendError, match="precision"):
        create_backend("tensorrt", own_package, precision="int8")
    if tensorrt_status():
        with pytest.raises(BackendError, match="the TensorRT backend needs"):
            backend.activate()
        assert not backend.is_active


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


def test_build_stops_on_an_unsupported_graph(own_package):
    model = onnx.load(str(own_package / "transformer.onnx"))
    next(n for n in model.graph.node if n.op_type == "Softmax").op_type = "Hardmax"   # supported: no error
    node = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    node.output.extend(["ln_mean"])                                  # LayerNorm Mean output: rejected
    onnx.save(model, str(own_package / "transformer.onnx"))
    result = CliRunner().invoke(build, [str(own_package), "--dry-run"])
    assert result.exit_code == 2
    assert "uses operators TensorRT's parser rejects" in result.output
    assert "only the first output Y is supported" in result.output


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
# The backend's binding protocol against a simulated TensorRT + CUDA runtime (no GPU): "device" memory is host
# memory, an engine is ONNX Runtime on the package graph, and a context only sees what was bound to it by
# address, shape and profile — so padding, profile choice, slicing and CUDA-graph replay are exercised.
# ----------------------------------------------------------------------------------------------------------

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


class FakeCudart:
    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, gpu=H100, driver=12080, runtime=12080):
        self.gpu, self.memory, self.capturing, self.launches = gpu, {}, None, 0
        self.driver, self.runtime = driver, runtime

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=self.gpu.name.encode(), major=self.gpu.compute_capability[0],
                                        minor=self.gpu.compute_capability[1])

    def cudaDriverGetVersion(self):
        return 0, self.driver

    def cudaRuntimeGetVersion(self):
        return 0, self.runtime

    def cudaSetDevice(self, device):
        return (0,)

    def cudaMalloc(self, nbytes):
        buffer = np.zeros(nbytes, np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    def cudaFree(self, ptr):
        self.memory.pop(ptr)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert self.capturing is None, "copies must stay outside the captured graph"
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in graph_exec:
            op()
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)


def fake_tensorrt(cudart, version="10.15.1"):
    """A module with the slice of the TensorRT 10 API the backend uses; engines are JSON plans run by ORT."""
    import onnxruntime

    trt = types.SimpleNamespace(__version__=version, executed=[])
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(ON_PROFILE_CHANGE="per-profile")
    trt.nptype = lambda dtype: _NP[dtype]
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    class Context:
        def __init__(self, engine):
            self.engine, self.profile, self.shapes, self.addresses = engine, None, {}, {}

        def set_optimization_profile_async(self, index, stream):
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            if name == "v":
                b, n, _ = self.shapes["x"]
                return (b, n, self.engine.out_dim)
            return self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def _view(self, name, shape, dtype):
            count = int(np.prod(shape))
            raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

        def _run(self):
            feed = {n: self._view(n, self.shapes[n], _NP[d]).copy() for n, d in self.engine.dtypes.items() if n != "v"}
            out = self.engine.session.run(None, feed)[0]
            self._view("v", out.shape, out.dtype)[...] = out
            trt.executed.append((self.engine.name, self.profile, self.shapes["x"][:2]))

        def execute_async_v3(self, stream):
            if cudart.capturing is not None:
                cudart.capturing.append(self._run)
            else:
                self._run()
            return True

    class Engine:
        def __init__(self, plan):
            self.name, self.profiles, self.dtypes = plan["name"], plan["profiles"], plan["dtypes"]
            self.out_dim = plan["out_dim"]
            self.session = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.num_optimization_profiles = len(self.profiles)
            self.num_io_tensors = len(self.dtypes)

        def get_tensor_profile_shape(self, name, index):
            shapes = self.profiles[index][name]
            return shapes["min"], shapes["opt"], shapes["max"]

        def get_tensor_name(self, i):
            return list(self.dtypes)[i]

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_mode(self, name):
            return "out" if name == "v" else "in"

        def create_execution_context(self, strategy=None):
            assert strategy == "per-profile"
            return Context(self)

    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine(json.loads(data))})
    return trt


def write_fake_build(package: Path, profiles: str, batch: str, static=False, per_bucket=False, version="10.15.1"):
    """Plan with fit_export.tensorrt and write JSON 'plans' + real sidecars, as build_engines would."""
    plan = plan_build(package, profiles=profiles, batch=batch, static=static, engine_per_bucket=per_bucket)
    manifest = plan.manifest
    dtypes = {s.name: s.dtype for s in manifest.graph.inputs + manifest.graph.outputs}
    for target in plan.engines:
        path = package / target.engine_file
        path.parent.mkdir(exist_ok=True)
        doc = {"name": target.stem, "onnx": str(package / "transformer.onnx"), "dtypes": dtypes,
               "out_dim": manifest.model.out_token_dim,
               "profiles": [{n: {"min": lo, "opt": opt, "max": hi} for n, (lo, opt, hi) in p.shapes(plan.inputs).items()}
                            for p in target.profiles]}
        atomic_write(path, json.dumps(doc).encode())
        write_sidecar(package / target.sidecar_file, Sidecar(
            engine=path.name, engine_sha256=sha256_file(path), engine_bytes=path.stat().st_size,
            onnx_file="transformer.onnx", onnx_sha256=manifest.files["transformer.onnx"].sha256,
            tensorrt_version=version, gpu=H100, precision="fp32", strongly_typed=True,
            profiles=list(target.profiles), batch=plan.batch.to_dict(), inputs=[s.to_dict() for s in plan.inputs],
            build_id="fake"))


@pytest.fixture
def simulated(monkeypatch):
    import engines.backends.tensorrt.cuda as cuda_runtime

    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_runtime, "cudart", lambda: cudart)
    return trt, cudart


def graph_feed(package, grids, labels, seed=0):
    manifest = load_manifest(package, verify=False)
    rng = np.random.default_rng(seed)
    batch = manifest.graph.padded_batch(grids, manifest.rope.settings(), labels)
    x = rng.standard_normal(batch.x.shape)
    return batch.feed(rng.uniform(0.1, 0.9, len(grids)), x)


def test_simulated_backend_pads_picks_profiles_and_slices(own_package, simulated):
    trt, _ = simulated
    write_fake_build(own_package, "64,256", "1:2")                  # CFG: graph batch 2..4
    with create_backend("onnxruntime", own_package, device="cpu") as ort, create_backend("trt", own_package) as backend:
        assert backend.profile_ranges()[1][1].min == 65
        for grids, labels, expected in [([(4, 8)], [1], ("transformer.fp32", 0, (2, 32))),          # batch padded
                                        ([(8, 12), (4, 4)], [2, 10], ("transformer.fp32", 1, (2, 96))),
                                        ([(16, 16)] * 4, [1, 2, 3, 10], ("transformer.fp32", 1, (4, 256)))]:
            feed = graph_feed(own_package, grids, labels)
            out = backend.infer(feed)["v"]
            assert trt.executed[-1] == expected
            ref = ort.infer(feed)["v"]
            assert out.shape == ref.shape
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        with pytest.raises(BackendError, match="no optimization profile holds a call of batch 2 and 300 tokens"):
            backend.infer(graph_feed(own_package, [(15, 20), (15, 20)], [1, 2]))


def test_simulated_static_buckets_replay_a_cuda_graph(own_package, simulated):
    trt, cudart = simulated
    write_fake_build(own_package, "64,256", "1", static=True, per_bucket=True)   # graph batch exactly 2
    with create_backend("onnxruntime", own_package, device="cpu") as ort, create_backend("trt", own_package) as backend:
        assert len(backend.sidecars) == 2
        for seed in range(3):                                         # new inputs each call: replay must read them
            feed = graph_feed(own_package, [(4, 8), (6, 6)], [1, 10], seed)
            out = backend.infer(feed)["v"]
            np.testing.assert_allclose(out, ort.infer(feed)["v"], rtol=1e-5, atol=1e-6)
            assert out.shape == (2, 36, 16)
        assert trt.executed[0] == ("transformer.fp32.t64", 0, (2, 64))        # seq padded to the budget
        assert cudart.launches == 2                                    # eager + capture, then two replays
        backend.infer(graph_feed(own_package, [(10, 10), (10, 10)], [1, 2]))  # the 256 bucket: its own graph
        assert trt.executed[-1] == ("transformer.fp32.t256", 0, (2, 256))


def test_simulated_activation_refuses_another_tensorrt(own_package, simulated):
    write_fake_build(own_package, "64", "1", version="10.14.0")
    backend = create_backend("trt", own_package)
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.14.0, this is TensorRT 10.15.1.*Rebuild it"):
        backend.activate()
    assert not backend.is_active


# ----------------------------------------------------------------------------------------------------------
# Install probing, feed padding, version-aware op check
# ----------------------------------------------------------------------------------------------------------

def test_driver_too_old_for_the_cuda_bindings_is_a_missing_piece(monkeypatch):
    import engines.backends.tensorrt.cuda as cuda_runtime
    from engines.backends.tensorrt.install import tensorrt_status

    assert cuda_runtime.driver_problem(FakeCudart(driver=13000, runtime=13000)) is None
    assert cuda_runtime.driver_problem(FakeCudart(driver=12080, runtime=12020)) is None        # minor compat
    problem = cuda_runtime.driver_problem(FakeCudart(driver=12040, runtime=13000))
    assert problem == ("the NVIDIA driver supports CUDA 12.4 but the installed cuda-python needs CUDA 13.0: install "
                       "the CUDA 12 build (pip install 'fit-toolkit[tensorrt-cu12]') or a newer driver")
    assert cuda_runtime.driver_problem(FakeCudart(driver=0)) == "no NVIDIA driver is loaded"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.16.1"))
    monkeypatch.setattr(cuda_runtime, "cudart", lambda: FakeCudart(driver=12040, runtime=13000))
    missing = tensorrt_status()
    assert len(missing) == 1 and missing[0].startswith("a driver that runs the CUDA bindings: the NVIDIA driver")
    monkeypatch.setattr(cuda_runtime, "cudart", lambda: FakeCudart())
    assert tensorrt_status() == []


SMI = "0, GPU-aaa, NVIDIA A100-SXM4-80GB, 8.0\n1, GPU-bbb, NVIDIA H100 80GB HBM3, 9.0\n"


@pytest.mark.parametrize("env, device, expected", [
    ({}, 0, None),                                                       # fastest-first order: unknown
    ({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, 1, GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))),
    ({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,0"}, 0, GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))),
    ({"CUDA_VISIBLE_DEVICES": "GPU-bbb"}, 0, GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))),   # one visible: unambiguous
    ({"CUDA_VISIBLE_DEVICES": "0"}, 1, None),                            # only device 0 exists for CUDA
])
def test_nvidia_smi_fallback_answers_only_for_the_cuda_ordinal(monkeypatch, env, device, expected):
    import subprocess as sp

    import engines.backends.tensorrt.cuda as cuda_runtime
    from engines.backends.tensorrt.install import gpu_info

    monkeypatch.setattr(cuda_runtime, "cudart", lambda: None)
    monkeypatch.setattr(sp, "run", lambda *a, **k: types.SimpleNamespace(returncode=0, stdout=SMI))
    for name in ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert gpu_info(device) == expected


def test_pad_feed_pads_rows_tokens_and_labels():
    from engines.backends.tensorrt.backend import pad_feed

    feed = {"x": np.ones((1, 3, 2), np.float32), "t": np.array([0.5], np.float32), "y": np.array([4]),
            "mask": np.ones((1, 3), np.float32)}
    out = pad_feed(feed, 2, 5, null_class=10)
    assert out["x"].shape == (2, 5, 2) and out["x"][1].sum() == 0 and out["x"][0, 3:].sum() == 0
    assert out["t"].tolist() == [0.5, 0.0] and out["y"].tolist() == [4, 10]
    assert out["mask"].tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert pad_feed(feed, 1, 3, null_class=10)["x"] is feed["x"]


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
