"""TensorRT engine builds without a GPU: `fit-export build` planning and --dry-run (fit_export/tensorrt.py,
cli/trt.py, the bucket profiles of engines/buckets.py), bad input in one line, and the op check stopping a build."""
import dataclasses
import json

import onnx
import pytest
from click.testing import CliRunner

from cli.trt import build
from engines.backends.tensorrt.install import tensorrt_status
from engines.package import load_manifest
from fit_export.tensorrt import BuildError, plan_build
from tests.trt_helpers import own_package, package  # noqa: F401 (fixtures)


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
    (["--precision", "int4"], "Invalid value for '--precision'"),
    (["--precision", "int8"], "no int8 Q/DQ variant for TensorRT; write one with: fit-export quantize"),
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
