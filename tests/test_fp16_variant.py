"""fit-export fp16: the fp16 variant converted from a package's fp32 graph — recorded, runs, measured against fp32,
refused with one line and nothing written on bad input."""
import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

import engines  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from cli.export import main as export_cli  # noqa: E402
from engines.metrics import psnr  # noqa: E402
from engines.package import load_manifest, sha256_file  # noqa: E402
from engines.pipeline import DEFAULT_MODEL_DIR  # noqa: E402
from fit_export import fp16_variant  # noqa: E402
from fit_export.fp16_variant import FP16_FILE, Fp16VariantError, add_fp16_variant, quality_sizes  # noqa: E402
from fit_export.typed import FP32_OPS  # noqa: E402
from tests.runtime_helpers import copy_package, tiny_model  # noqa: E402


STEPS = 4                          # of the quality images: enough for float16 to show, quick


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The tiny model (fp32) exported with a size beyond its training budget (320x320: 400 tokens, 256 in
    training)."""
    from fit_export import export_package

    return export_package(tiny_model(), None, tmp_path_factory.mktemp("fp32") / "tiny",
                          sizes=[(256, 256), (512, 128), (320, 320)])


@pytest.fixture(scope="module")
def converted(plain, tmp_path_factory):
    """A copy of ``plain`` with its fp16 variant added, and the variant's manifest entry."""
    package = copy_package(plain, tmp_path_factory.mktemp("fp16") / "tiny")
    return package, add_fp16_variant(package, steps=STEPS)


def snapshot(folder):
    """name -> sha256 of every file in ``folder``, and the names in its parent (drafts would show there)."""
    return ({p.name: sha256_file(p) for p in sorted(folder.iterdir())}, sorted(p.name for p in folder.parent.iterdir()))


def test_variant_is_listed_with_float32_io_and_float16_weights(converted):
    package, entry = converted
    manifest = load_manifest(package, verify=True)                        # the new file is hashed too
    variant = manifest.transformer.variant("fp16")
    assert (variant.file, variant.precision, variant.runtime, variant.source) == (FP16_FILE, "fp16", None, "fp32")
    assert manifest.transformer.default.name == "fp32"                    # the default stays
    assert entry["check"]["fp32_ops"] == list(FP32_OPS) and entry["check"]["validation_cosine"] >= 0.999
    graph = onnx.load(str(package / FP16_FILE))
    io = {v.name: v.type.tensor_type.elem_type for v in list(graph.graph.input) + list(graph.graph.output)}
    assert io["x"] == io["v"] == onnx.TensorProto.FLOAT                   # the fp32 package's contract
    halves = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    singles = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert len(halves) == entry["check"]["converted_weights"] > 0
    size = lambda tensors: sum(int(np.prod(t.dims)) for t in tensors)
    assert size(halves) > size(singles)          # the token stream's weights; the conditioning paths stay float32
    norms = [n for n in graph.graph.node if n.op_type in FP32_OPS]
    assert norms                                                          # kept: fed by casts up to float32
    assert manifest.transformer.select("onnxruntime", fp16=True).name == "fp16"
    assert manifest.transformer.select("onnxruntime").name == "fp32"


def test_validation_record_covers_three_sizes_and_matches_what_runs(converted):
    package, entry = converted
    record = entry["validation"]
    manifest = load_manifest(package)
    g, budget = manifest.latent.pixel_granularity, manifest.sizes.train_token_budget
    kinds = {r["kind"]: tuple(r["size"]) for r in record["images"]}
    assert list(kinds) == ["training", "off-square", "extrapolated"]
    tokens = lambda wh: (wh[0] // g) * (wh[1] // g)
    assert tokens(kinds["training"]) <= budget and tokens(kinds["off-square"]) <= budget
    assert kinds["off-square"][0] != kinds["off-square"][1] and tokens(kinds["extrapolated"]) > budget
    assert record["steps"] == STEPS and record["passed"] and all(float(r["psnr_db"]) >= record["min_psnr_db"] for r in record["images"])
    w, h = kinds["extrapolated"]
    images = {}
    for precision in ("fp32", "fp16"):
        with engines.load(package, precision=precision, device="cpu", ort_optimized=False) as pipe:
            assert pipe.backend.variant == precision
            job = pipe.prepare(w, h, record["label"], record["seed"], steps=record["steps"])[0]
            images[precision] = pipe.generate_many([job])[0]
    value = psnr(images["fp16"], images["fp32"], 255.0)
    assert value == pytest.approx(float(record["images"][2]["psnr_db"]), abs=0.01)
    assert value < np.inf                                                 # float16 storage shows


def test_quality_sizes_of_the_default_model_and_without_declared_large_sizes():
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    assert quality_sizes(manifest) == [("training", 80, 80), ("off-square", 112, 48), ("extrapolated", 128, 128)]
    small = manifest.replace(sizes=dataclasses.replace(manifest.sizes, buckets=(
        dataclasses.replace(manifest.sizes.buckets[0], sizes=((80, 80),)),)))
    assert quality_sizes(small) == [("training", 80, 80), ("off-square", 80, 32), ("extrapolated", 112, 112)]
    closed = small.replace(sizes=dataclasses.replace(small.sizes, max_tokens=25))
    assert [kind for kind, _, _ in quality_sizes(closed)] == ["training", "off-square"]


def with_variant(package, name, precision, runtime=None):
    """List a copy of transformer.onnx as the variant ``name`` (hashes as the manifest needs them)."""
    shutil.copy(package / "transformer.onnx", package / f"transformer.{name}.onnx")
    doc = json.loads((package / "manifest.json").read_text())
    doc["transformer"].setdefault("variants", []).append(
        {"name": name, "file": f"transformer.{name}.onnx", "precision": precision, "runtime": runtime})
    doc["files"][f"transformer.{name}.onnx"] = doc["files"]["transformer.onnx"]
    (package / "manifest.json").write_text(json.dumps(doc))
    return package


def test_refusals_change_nothing(plain, converted, tmp_path, monkeypatch):
    source = plain
    fp16_package = copy_package(source, tmp_path / "half" / "tiny")
    doc = json.loads((fp16_package / "manifest.json").read_text())
    doc["transformer"]["precision"] = "fp16"
    (fp16_package / "manifest.json").write_text(json.dumps(doc))
    int8 = with_variant(copy_package(source, tmp_path / "int8" / "tiny"), "int8", "int8")
    tuned = with_variant(copy_package(source, tmp_path / "tuned" / "tiny"), "ort", "fp32", "onnxruntime")
    cases = [(converted[0], {}, "already holds an fp16 variant"), (fp16_package, {}, "converts fp32 packages"),
             (int8, {"source": "int8"}, "not int8"), (tuned, {"source": "ort"}, "made for onnxruntime only"),
             (int8, {"source": "int4"}, "no transformer variant 'int4'")]
    for package, options, message in cases:
        before = snapshot(package)
        with pytest.raises((Fp16VariantError, engines.errors.PackageError), match=message):
            add_fp16_variant(package, **options)
        assert snapshot(package) == before, message
    monkeypatch.setattr(fp16_variant, "MIN_PSNR_DB", 1000.0)             # the image gate
    gated = copy_package(source, tmp_path / "gated" / "tiny")
    before = snapshot(gated)
    with pytest.raises(Fp16VariantError, match="below 1000 dB against fp32"):
        add_fp16_variant(gated, steps=1)
    assert snapshot(gated) == before


def test_cli_writes_one_summary_line_and_refuses_in_one_line(plain, tmp_path):
    package = copy_package(plain, tmp_path / "tiny")
    runner = CliRunner()
    result = runner.invoke(export_cli, ["fp16", str(package), "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "graph cosine" in result.stdout and "extrapolated" in result.stdout
    for args in (["fp16", str(package)], ["fp16", str(tmp_path / "missing")],
                 ["fp16", str(copy_package(plain, tmp_path / "b")), "--from", "nothing"]):
        result = runner.invoke(export_cli, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (args, result.output)
        assert result.stderr.startswith("fit-export: error: ") and not result.stdout
