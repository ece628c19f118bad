"""fit-export quantize: int8 variants (dynamic, calibrated static), the validation record, the ORT format, refusals."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

import engines  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from cli.export import main as export_cli  # noqa: E402
from engines.errors import PackageError
from engines.metrics import psnr  # noqa: E402
from engines.package import load_manifest, sha256_file
from fit_export.quantize import (INT8_FILE, QuantizeError, activation_products, quantize_package,  # noqa: E402
                                 record_calibration)
from tests.runtime_helpers import copy_package, tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def dynamic(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "int8"
    entry = quantize_package(source, out, mode="dynamic", per_channel=True, ort_format=True, accuracy=False)
    return out, entry


def test_package_lists_the_int8_variant_and_runs_it(dynamic, source):
    out, entry = dynamic
    manifest = load_manifest(out, verify=True)                          # every file hashed, the new ones too
    t = manifest.transformer
    assert t.default_variant == "int8" and t.variant("int8").file == INT8_FILE
    assert entry["quantization"]["mode"] == "dynamic" and entry["quantization"]["per_channel"]
    assert entry["quantization"]["ops"] == ["MatMul", "Gemm"] and entry["quantization"]["quantized_nodes"] > 0
    assert set(manifest.files) == set(load_manifest(source).files) | {INT8_FILE, entry["ort_format"],
                                                                      entry["operator_config"]}
    record = entry["validation"]
    assert record["reference"] == "fp32" and record["cases"] > 5 and record["evaluations"] > 0
    assert 0.9 < record["min_step_cosine"] <= 1 and float(record["image_psnr_db"]) > 20
    with engines.load(out, threads=1) as pipe:                          # the default variant is int8 now
        assert pipe.backend.variant == "int8" and pipe.backend.precision == "int8"
        int8 = pipe.generate(width=48, height=32, label=1, seed=3, steps=4, output="array")
    with engines.load(out, threads=1, precision="fp32") as pipe:
        fp32 = pipe.generate(width=48, height=32, label=1, seed=3, steps=4, output="array")
    assert 20 < psnr(int8.astype(float), fp32.astype(float), 255.0) < np.inf


def test_only_weight_products_are_quantized(source):
    import onnx

    model = onnx.load(str(source / "transformer.onnx"))
    left = activation_products(model)
    products = [n for n in model.graph.node if n.op_type == "MatMul"]
    depth = load_manifest(source).model.config["depth"]
    assert len(left) == 2 * depth and len(products) > len(left)             # q·kT and p·v of every block


def test_ort_format_model_reproduces_the_image(dynamic):
    out, entry = dynamic
    config = (out / entry["operator_config"]).read_text()
    assert "DynamicQuantizeLinear" in config or "MatMulIntegerToFloat" in config
    assert "tmp" not in config.split("\n", 2)[1]                        # names the shipped file
    images = []
    for options in ({}, {"model_path": str(out / entry["ort_format"])}):
        with engines.load(out, threads=1, **options) as pipe:
            images.append(pipe.generate(width=48, height=32, label=2, seed=4, steps=3, output="array"))
    assert psnr(images[0].astype(float), images[1].astype(float), 255.0) >= 50


@pytest.mark.slow
def test_static_calibration_sees_every_step_both_halves_and_sizes(source, tmp_path):
    recorded = record_calibration(source, images=3)
    feeds = recorded["feeds"]
    manifest = load_manifest(source)
    assert len(feeds) >= recorded["steps"]                              # every network evaluation of the loop
    labels = np.concatenate([f["y"] for f in feeds])
    assert manifest.model.null_class in labels and (labels != manifest.model.null_class).any()
    assert len({float(f["t"][0]) for f in feeds}) >= recorded["steps"]
    assert len({f["mask"].sum(axis=1).tobytes() for f in feeds}) >= 1 and feeds[0]["mask"].shape[0] == 6
    out = tmp_path / "static"
    entry = quantize_package(source, out, mode="static", calibration_images=2, accuracy=False, keep_default=True)
    assert entry["quantization"]["calibration"]["evaluations"] > 0
    assert load_manifest(out).transformer.default_variant is None           # --keep-default
    with engines.load(out, threads=1, precision="int8") as pipe:
        assert pipe.backend.variant == "int8"
        assert np.isfinite(pipe.generate(width=32, height=32, label=0, seed=0, steps=2, output="array")).all()


def test_refusals_leave_nothing_behind(dynamic, source, tmp_path, monkeypatch):
    with pytest.raises(QuantizeError, match="already holds an int8 variant"):
        quantize_package(dynamic[0], tmp_path / "again")
    fp16 = copy_package(source, tmp_path / "fp16")
    doc = json.loads((fp16 / "manifest.json").read_text())
    doc["transformer"]["precision"] = "fp16"
    (fp16 / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(QuantizeError, match="reads fp32 packages"):
        quantize_package(fp16, tmp_path / "x")
    graphless = copy_package(source, tmp_path / "graphless")
    (graphless / "transformer.onnx").unlink()
    with pytest.raises(PackageError, match="transformer.onnx is missing"):
        quantize_package(graphless, tmp_path / "x")
    existing = copy_package(source, tmp_path / "existing")
    before = sha256_file(existing / "transformer.onnx")
    from fit_export.onnx_export import ExportError
    with pytest.raises(ExportError, match="already exists"):
        quantize_package(source, existing)
    assert sha256_file(existing / "transformer.onnx") == before and load_manifest(existing, verify=True)

    from engines.backends.onnxruntime import OnnxRuntimeBackend
    real = OnnxRuntimeBackend._infer

    def nan_output(self, feed):
        out = real(self, feed)
        return {k: np.full_like(v, np.nan) for k, v in out.items()}

    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", nan_output)
    with pytest.raises(QuantizeError, match="calibration produced NaN"):
        quantize_package(source, tmp_path / "nan", mode="static", calibration_images=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "fp16", "graphless"]


def test_cli_one_line_errors(dynamic, source, tmp_path):
    runner = CliRunner()
    cases = [["quantize", str(dynamic[0]), "--out", str(tmp_path / "a")],
             ["quantize", str(source), "--out", str(dynamic[0])],
             ["quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
             ["quantize", str(source), "--out", "/proc/fit-quantized"],
             ["quantize", str(source), "--out", str(tmp_path / "c"), "--mode", "int4"]]
    for args in cases:
        result = runner.invoke(export_cli, args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, (args, result.output)
        assert result.output.startswith("fit-export: error: ")
    assert not os.listdir(tmp_path)
