"""fit-export quantize --for tensorrt: Q/DQ variants in TensorRT's form, their quality gate on the CPU, the TensorRT
build plan and backend choosing them, and every refusal (one line, nothing written)."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

pytest.importorskip("torch")

import engines  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from cli.export import main as export_cli  # noqa: E402
from cli.run import main as run_cli  # noqa: E402
from engines.backends.tensorrt.install import GpuInfo  # noqa: E402
from engines.errors import BackendError, PackageError  # noqa: E402
from engines.metrics import QualityGate, cosine  # noqa: E402
from engines.package import load_manifest, sha256_file  # noqa: E402
from fit_export.qdq import (QualityGateError, emulated_graph, judge, quality_cases, quantize_for_tensorrt,  # noqa: E402
                            quantized_products, variant_file)
from fit_export.quantize import QuantizeError  # noqa: E402
from fit_export.trt_ops import check_model  # noqa: E402
from tests.runtime_helpers import copy_package, tiny_model  # noqa: E402

LENIENT = QualityGate(min_step_cosine=0.9, min_psnr_db=10.0)      # random weights: the test checks the plumbing
SIZES = [(256, 256), (384, 128), (320, 320), (480, 224)]           # 256-token training budget; 400 and 420 beyond


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from fit_export import export_package

    path = tmp_path_factory.mktemp("qdq") / "tiny"
    return export_package(tiny_model(), None, path, sizes=SIZES, buckets=[256, 420], default_steps=3)


@pytest.fixture(scope="module")
def quantized(source, tmp_path_factory):
    """{fmt: (package, entry)}: int8 with fp16 elsewhere, fp8 with bf16 elsewhere."""
    out = {}
    for fmt, high in (("int8", "fp16"), ("fp8", "bf16")):
        path = tmp_path_factory.mktemp("quantized") / fmt
        out[fmt] = path, quantize_for_tensorrt(source, path, fmt, high, calibration_images=4, gate=LENIENT)
    return out


def _initializers(model):
    return {i.name: i for i in model.graph.initializer}


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_graph_has_tensorrt_qdq_form(quantized, source, fmt):
    package, entry = quantized[fmt]
    model = onnx.load(str(package / variant_file(fmt)))
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    qtype = TensorProto.INT8 if fmt == "int8" else TensorProto.FLOAT8E4M3FN
    scale_type = TensorProto.FLOAT16 if fmt == "int8" else TensorProto.BFLOAT16
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    quantized_products = [n for n in model.graph.node if n.op_type == "MatMul"
                          and all(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input)]
    depth = load_manifest(source).model.config["depth"]
    assert len(quantized_products) == 5 * depth == entry["quantization"]["quantized_nodes"]   # qkv, proj, 3 MLP
    for node in quantized_products:
        data, weight = (producers[i] for i in node.input)
        # activations: Q -> DQ, one scalar scale, zero point 0 of the quantized type
        assert producers[data.input[0]].op_type == "QuantizeLinear"
        assert inits[data.input[1]].dims == [] and inits[data.input[1]].data_type == scale_type
        zero = inits[data.input[2]]
        assert zero.data_type == qtype and not np.any(numpy_helper.to_array(zero).astype(np.float32))
        # weights: pre-quantized, one positive scale per output channel (axis 1 of [K, N])
        stored, scale = inits[weight.input[0]], inits[weight.input[1]]
        assert stored.data_type == qtype and next(a.i for a in weight.attribute if a.name == "axis") == 1
        assert list(scale.dims) == [stored.dims[1]] and scale.data_type == scale_type
        assert (numpy_helper.to_array(scale).astype(np.float32) > 0).all()
    # the patch embedding, the final layer and attention's products stay unquantized; norms and softmax see no DQ
    plain = [n for n in model.graph.node if n.op_type == "MatMul" and n not in quantized_products]
    assert len(plain) == 2 * depth + 2
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                           for i in node.input)
    assert check_model(package / variant_file(fmt), trt_version="10.8").ok          # TensorRT's parser takes it


def test_manifest_variant_and_its_quality_record(quantized, source):
    package, entry = quantized["int8"]
    manifest = load_manifest(package, verify=True)
    t = manifest.transformer
    assert t.default_variant == load_manifest(source).transformer.default_variant      # never the default
    variant = t.variant("trt-int8")
    assert (variant.runtime, variant.precision, variant.file) == ("tensorrt", "int8", "transformer.trt-int8.onnx")
    q = variant.quantization
    assert q["format"] == "int8" and q["high_precision"] == "fp16" and q["per_channel"]
    assert q["calibration"]["evaluations"] > 0 and len(q["calibration"]["sizes"]) == len(SIZES)
    record = variant.validation
    kinds = {c["kind"] for c in record["cases"]}
    assert kinds == {"training", "off-square", "extrapolated", "extrapolated off-square"}
    methods = {c["method"] for c in record["cases"] if c["kind"] == "extrapolated"}
    assert methods == set(manifest.rope.methods)
    assert record["passed"] and record["thresholds"]["min_psnr_db"] == LENIENT.min_psnr_db
    for case in record["cases"]:
        assert 0.9 < case["min_step_cosine"] <= case["mean_step_cosine"] <= 1 and case["evaluations"] > 0
        assert case["finite"] and float(case["image_psnr_db"]) > 10
    assert "shapes_accuracy" not in record                               # not the procedural-shapes model


def test_quality_cases_per_bucket_and_method(source):
    cases = quality_cases(load_manifest(source))
    names = [(c.kind, c.width, c.height, c.method) for c in cases]
    assert names[:2] == [("training", 256, 256, "normal"), ("off-square", 384, 128, "normal")]
    assert names[-1] == ("extrapolated off-square", 480, 224, "normal")
    assert all(c.bucket == 420 for c in cases[2:])


def test_emulated_qdq_graph_is_close_to_fp32_and_scales_shape_quantization(quantized, source):
    import onnxruntime as ort

    package, _ = quantized["fp8"]
    manifest = load_manifest(source)
    batch = manifest.graph.padded_batch([(16, 16), (8, 24)], manifest.rope.settings(), [1, manifest.model.null_class])
    feed = batch.feed([0.4, 0.4], np.random.default_rng(0).standard_normal(batch.x.shape))
    path = emulated_graph(package / variant_file("fp8"), package.parent / "emulated.onnx")
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    out, ref = run(path), run(source / "transformer.onnx")
    real = feed["mask"] != 0
    assert 0.99 < cosine(out[real], ref[real]) < 1.0                   # quantized: close, not identical
    assert not np.any(out[~real])                                        # padding stays zero


def test_recorded_quality_is_printed_by_validate(quantized):
    package, _ = quantized["fp8"]
    result = CliRunner().invoke(export_cli, ["validate", str(package), "--recorded"])
    assert result.exit_code == 0, result.output
    assert "trt-fp8: measured on onnxruntime CPU" in result.output and "(extrapolated, bucket 420)" in result.output
    assert "PASSED" in result.output


# ----------------------------------------------------------------------------------------------------------
# The gate
# ----------------------------------------------------------------------------------------------------------

def _record(*cases):
    return {"thresholds": {}, "cases": [{"name": n, "min_step_cosine": c, "image_psnr_db": p, "finite": True}
                                        for n, c, p in cases]}


def test_gate_names_the_worst_case():
    gate = QualityGate(0.999, 35.0)
    ok = judge(_record(("a", 0.9995, 40.0), ("b", 0.9992, "inf")), gate)
    assert ok["passed"] and ok["worst"].startswith("b:")
    bad = judge(_record(("a", 0.9995, 40.0), ("b", 0.9985, 36.0), ("c", 0.9991, 20.0)), gate)
    assert not bad["passed"] and bad["worst"] == "c: image 20.0 dB < 35 dB"
    accuracy = judge({**_record(("a", 0.9995, 40.0)), "shapes_accuracy": {"accuracy": {
        "fp8": {"64x64": 0.90}, "fp32": {"64x64": 0.99}}}}, gate)
    assert not accuracy["passed"] and accuracy["worst"].startswith("64x64: shape accuracy 90.0%")


def test_below_the_gate_nothing_is_written(source, tmp_path, monkeypatch):
    import fit_export.qdq as qdq

    cases = qdq.quality_cases
    monkeypatch.setattr(qdq, "quality_cases", lambda manifest: cases(manifest)[:1])      # one real case: faster
    out = tmp_path / "refused"
    with pytest.raises(QualityGateError, match="below the quality gate.*worst: .*per-step cosine"):
        quantize_for_tensorrt(source, out, "int8", calibration_images=2, gate=QualityGate(min_step_cosine=1.5))
    result = CliRunner().invoke(export_cli, ["quantize", str(source), "--out", str(out), "--for", "tensorrt",
                                             "--calibration-images", "2", "--min-step-cosine", "1.5"])
    assert result.exit_code == 2 and sum(line.startswith("fit-export:") for line in result.output.splitlines()) == 1
    assert result.output.splitlines()[-1].startswith("fit-export: error: the int8 Q/DQ graph is below the quality")
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written, the existing package untouched
# ----------------------------------------------------------------------------------------------------------

def test_refusals_leave_nothing_behind(quantized, source, tmp_path, monkeypatch):
    import fit_export.qdq as qdq

    with pytest.raises(QuantizeError, match="already holds the fp8 Q/DQ variant 'trt-fp8'"):
        quantize_for_tensorrt(quantized["fp8"][0], tmp_path / "again", "fp8")
    fp16 = copy_package(source, tmp_path / "fp16")
    doc = json.loads((fp16 / "manifest.json").read_text())
    doc["transformer"]["precision"] = "fp16"
    (fp16 / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(QuantizeError, match="reads fp32 packages"):
        quantize_for_tensorrt(fp16, tmp_path / "x", "fp8")
    existing = copy_package(source, tmp_path / "existing")
    before = sha256_file(existing / "manifest.json")
    from fit_export.onnx_export import ExportError
    with pytest.raises(ExportError, match="already exists"):
        quantize_for_tensorrt(source, existing, "int8", calibration_images=1)
    monkeypatch.setattr(qdq, "calibrate", lambda source, names, feeds: dict.fromkeys(names, 0.0))
    with pytest.raises(QuantizeError, match="zero quantization scales"):
        quantize_for_tensorrt(source, tmp_path / "zero", "int8", calibration_images=1)
    monkeypatch.setattr(qdq, "calibrate", lambda source, names, feeds: dict.fromkeys(names, float("nan")))
    with pytest.raises(QuantizeError, match="non-finite or zero"):
        quantize_for_tensorrt(source, tmp_path / "nan", "fp8", calibration_images=1)
    assert sha256_file(existing / "manifest.json") == before and load_manifest(existing, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "fp16"]


def test_cli_one_line_errors(quantized, source, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "a")
    cases = [["quantize", str(quantized["int8"][0]), "--out", out, "--for", "tensorrt", "--format", "int8"],
             ["quantize", str(source), "--out", out, "--for", "tensorrt", "--mode", "dynamic"],
             ["quantize", str(source), "--out", out, "--for", "tensorrt", "--ort-format"],
             ["quantize", str(source), "--out", out, "--format", "fp8"],
             ["quantize", str(source), "--out", out, "--for", "tensorrt", "--format", "int4"],
             ["quantize", str(source), "--out", out, "--for", "tensorrt", "--calibration-sizes", "100x7"],
             ["quantize", str(source), "--out", str(quantized["fp8"][0]), "--for", "tensorrt"]]
    for args in cases:
        result = runner.invoke(export_cli, args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, (args, result.output)
        assert result.output.startswith("fit-export: error: ")
    assert not os.listdir(tmp_path)


def test_qdq_variant_is_refused_by_onnxruntime_and_openvino(quantized, tmp_path):
    package, _ = quantized["fp8"]
    with pytest.raises(BackendError, match="no fp8 transformer that onnxruntime can run"):
        engines.load(package, precision="fp8")
    with pytest.raises(BackendError, match="'trt-fp8' runs on tensorrt only, not onnxruntime"):
        engines.load(package, precision="trt-fp8")
    result = CliRunner().invoke(run_cli, [str(package), "--precision", "trt-fp8", "--out", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "tensorrt only" in result.output
    assert not os.listdir(tmp_path)
    with engines.load(package, threads=1) as pipe:                        # the default still runs
        assert pipe.backend.precision == "fp32"
    pytest.importorskip("openvino")
    from engines.backends import create_backend
    for precision in ("trt-fp8", "fp8"):
        with pytest.raises((BackendError, PackageError), match="tensorrt only|no fp8 transformer"):
            create_backend("openvino", package, precision=precision)


# ----------------------------------------------------------------------------------------------------------
# TensorRT: the build plan, fp8 capability, the backend's choice (no TensorRT needed)
# ----------------------------------------------------------------------------------------------------------

def test_build_plans_the_qdq_variant_and_refuses_other_int8(quantized, source, monkeypatch):
    import fit_export.tensorrt as tensorrt
    from fit_export.tensorrt import BuildError, check_gpu_precision, plan_build

    package, _ = quantized["int8"]
    plan = plan_build(package, precision="int8")
    assert plan.onnx_file == "transformer.trt-int8.onnx" and plan.variant == "trt-int8" and not plan.converted
    assert "Q/DQ variant trt-int8" in plan.describe() and plan.engines[0].stem == "transformer.int8"
    with pytest.raises(BuildError, match="no fp8 Q/DQ variant for TensorRT; write one with: fit-export quantize"):
        plan_build(package, precision="fp8")
    with pytest.raises(BuildError, match="variant 'int8' is not a Q/DQ graph for TensorRT"):
        plan_build("engines/default_model", precision="int8")                   # ONNX Runtime's MatMulInteger graph
    check_gpu_precision("fp8", GpuInfo("NVIDIA H100", (9, 0)))
    check_gpu_precision("int8", GpuInfo("NVIDIA A10", (8, 6)))
    with pytest.raises(BuildError, match="fp8 engines need a GPU of compute capability 8.9 or newer.*sm_86"):
        check_gpu_precision("fp8", GpuInfo("NVIDIA A10", (8, 6)))
    monkeypatch.setattr(tensorrt, "gpu_info", lambda device=0: GpuInfo("NVIDIA A10", (8, 6)))
    fp8 = quantized["fp8"][0]
    result = CliRunner().invoke(export_cli, ["build", str(fp8), "--precision", "fp8"])
    assert result.exit_code == 2 and result.output.splitlines()[-1].startswith(
        "fit-export: error: fp8 engines need a GPU of compute capability 8.9"), result.output
    assert not (fp8 / "engines").exists()


def test_tensorrt_backend_takes_int8_fp8_and_variant_names(quantized, tmp_path):
    from engines.backends import create_backend

    package, _ = quantized["int8"]
    backend = create_backend("tensorrt", package, precision="trt-int8")
    assert (backend.precision, backend.variant) == ("int8", "trt-int8")
    with pytest.raises(BackendError, match="no fp8 Q/DQ variant for TensorRT"):
        create_backend("tensorrt", package, precision="fp8")
    with pytest.raises(BackendError, match="TensorRT does not run the transformer variant 'ort'"):
        create_backend("tensorrt", "engines/default_model", precision="ort")
    keep = copy_package(package, tmp_path / "int8-default")
    doc = json.loads((keep / "manifest.json").read_text())
    doc["transformer"]["default_variant"] = "trt-int8"                  # a TensorRT variant as the default
    (keep / "manifest.json").write_text(json.dumps(doc))
    assert create_backend("tensorrt", keep).precision == "int8"


def test_products_skip_the_first_and_last_linear_layer(source):
    import onnx_ir as ir

    model = ir.load(str(source / "transformer.onnx"))
    chosen = quantized_products(model)
    weights = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None]
    assert chosen == weights[1:-1]
