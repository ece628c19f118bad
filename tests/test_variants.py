"""Transformer variants in one package: the manifest lists them, every runtime picks the same default, as
docs/package-format.md#variants says."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.run import main as run_main
from engines.errors import PackageError
from engines.manifest import Manifest
from engines.package import load_manifest
from engines.pipeline import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


def doc_with(variants, default=None):
    doc = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    doc["transformer"]["variants"] = variants
    if default:
        doc["transformer"]["default_variant"] = default
    for v in variants:
        doc["files"][v["file"]] = {"sha256": "0" * 64, "bytes": 1}
    return doc


ORT = {"name": "ort", "file": "transformer.ort.onnx", "precision": "fp32", "runtime": "onnxruntime",
       "weights_from": "transformer.onnx"}
INT8_ORT = {"name": "int8", "file": "transformer.int8.onnx", "precision": "int8", "runtime": "onnxruntime"}
INT8_ANY = {"name": "int8-any", "file": "transformer.int8-any.onnx", "precision": "int8"}
OV = {"name": "ov", "file": "transformer.ov.onnx", "precision": "fp32", "runtime": "openvino",
      "weights_from": "transformer.onnx"}


def test_selection_rules():
    t = Manifest.from_dict(doc_with([ORT, INT8_ORT, INT8_ANY])).transformer
    assert [v.name for v in t.all_variants()] == ["fp32", "ort", "int8", "int8-any"]
    assert t.select("onnxruntime").name == "ort"                  # the default precision, tuned for this runtime
    assert t.select("onnxruntime", tuned=False).name == "fp32"
    assert t.select("openvino").name == "fp32" and t.select("tensorrt", "fp32").name == "fp32"
    assert t.select("onnxruntime", "int8").name == "int8"         # made for ONNX Runtime first
    assert t.select("openvino", "int8").name == "int8-any"        # never a variant made for another runtime
    assert t.select("openvino", "int8-any").name == "int8-any"
    with pytest.raises(PackageError, match="runs on onnxruntime only"):
        t.select("openvino", "ort")
    with pytest.raises(PackageError, match="no fp16 transformer"):
        t.select("onnxruntime", "fp16")


def test_a_device_with_float16_prefers_an_fp16_variant_only_when_nothing_is_asked_for():
    fp16 = {"name": "fp16", "file": "transformer.fp16.onnx", "precision": "fp16"}
    t = Manifest.from_dict(doc_with([ORT, INT8_ORT, fp16])).transformer
    assert t.select("onnxruntime", fp16=True).name == "fp16"
    assert t.select("onnxruntime").name == "ort"                   # no float16 on the device: the fp32 default
    assert t.select("onnxruntime", "fp32", fp16=True).name == "ort"  # asked for: what was asked for
    assert t.select("onnxruntime", "int8", fp16=True).name == "int8"
    int8_default = Manifest.from_dict(doc_with([ORT, INT8_ORT, fp16], default="int8")).transformer
    assert int8_default.select("onnxruntime", fp16=True).name == "int8"     # only an fp32 default gives way
    openvino_only = Manifest.from_dict(doc_with([ORT, dict(fp16, runtime="openvino")])).transformer
    assert openvino_only.select("onnxruntime", fp16=True).name == "ort"     # never one made for another runtime
    assert Manifest.from_dict(doc_with([ORT])).transformer.select("onnxruntime", fp16=True).name == "ort"


def test_default_variant_is_honoured_by_every_runtime():
    t = Manifest.from_dict(doc_with([ORT, INT8_ORT, INT8_ANY], default="int8")).transformer
    assert t.select("onnxruntime").name == "int8"
    assert t.select("openvino").name == "int8-any"                 # same precision where the default cannot run
    t = Manifest.from_dict(doc_with([ORT], default="ort")).transformer
    assert t.select("tensorrt").name == "fp32" and t.select("onnxruntime").name == "ort"


def documented_choices() -> list[list[tuple]]:
    """The tables "what runs" of docs/package-format.md#variants: per table, (requested, tuned, backend, variant
    name or None for refused) for every cell."""
    text = (ROOT / "docs" / "package-format.md").read_text()
    section = text[text.index("## Variants"):text.index("## Field reference")]
    tables, rows = [], None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "requested":
            backends, rows = cells[1:], []
            tables.append(rows)
        elif rows is not None and line.startswith("|") and not cells[0].startswith("---"):
            requested, _, tuned_off = cells[0].partition(", ")
            for backend, cell in zip(backends, cells[1:]):
                rows.append((None if requested == "nothing" else requested.strip("`"), tuned_off != "tuned copies off",
                             backend, None if cell == "refused" else cell.strip("`")))
        elif not line.startswith("|"):
            rows = None
    return tables


def test_the_documented_choices_are_what_select_does():
    default_model, int8_default = documented_choices()
    int8_generic = dict(INT8_ANY, name="int8")
    packages = [(default_model, load_manifest(DEFAULT_MODEL_DIR).transformer),
                (int8_default, Manifest.from_dict(doc_with([ORT, int8_generic, OV], default="int8")).transformer)]
    for table, transformer in packages:
        assert table
        for requested, tuned, backend, expected in table:
            if expected is None:
                with pytest.raises(PackageError):
                    transformer.select(backend, requested, tuned=tuned)
            else:
                assert transformer.select(backend, requested, tuned=tuned).name == expected, (requested, backend)


def test_manifest_refusals():
    with pytest.raises(PackageError, match="names must be unique"):
        Manifest.from_dict(doc_with([ORT, dict(ORT, file="b.onnx")]))
    with pytest.raises(PackageError, match="default_variant 'int4'"):
        Manifest.from_dict(doc_with([ORT], default="int4"))
    with pytest.raises(PackageError, match="unknown precision 'int4'"):
        Manifest.from_dict(doc_with([dict(ORT, precision="int4")]))
    doc = doc_with([ORT])
    del doc["files"]["transformer.ort.onnx"]
    with pytest.raises(PackageError, match="transformer.ort.onnx is referenced but not listed"):
        Manifest.from_dict(doc)


def test_fit_run_precision_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(run_main, ["--precision", "fp16", "--out", str(tmp_path / "a.png"), "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no fp16 transformer that onnxruntime can run; it holds fp32, ort, int8, ov" in result.output
    assert not list(tmp_path.iterdir())


def test_fit_run_records_the_variant(tmp_path):
    from engines.png import read_parameters

    out = tmp_path / "a.png"
    result = CliRunner().invoke(run_main, ["--precision", "fp32", "--steps", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert read_parameters(out)["variant"] == load_manifest(DEFAULT_MODEL_DIR).transformer.select("onnxruntime").name


def test_default_model_ships_fp32_default_tuned_copies_and_int8():
    import engines
    from engines.metrics import psnr

    manifest = load_manifest(DEFAULT_MODEL_DIR, verify=True)
    t = manifest.transformer
    assert t.default.precision == "fp32" and t.select("onnxruntime").name == "ort" and t.select("openvino").name == "ov"
    assert t.select("tensorrt").name == "fp32"
    int8 = t.variant("int8")
    assert int8.validation["image_psnr_db"] >= 35 and int8.quantization["mode"] == "dynamic"
    accuracy = int8.validation["shapes_accuracy"]["accuracy"]
    mean = {p: sum(v.values()) / len(v) for p, v in accuracy.items()}
    assert mean["int8"] >= mean["fp32"] - 0.01
    size = lambda name: (DEFAULT_MODEL_DIR / name).stat().st_size
    assert size(t.variant("ort").file) + size(t.variant("ov").file) + size(int8.file) < 5_000_000
    images = {}
    for precision in ("fp32", "int8"):
        with engines.load(precision=precision, threads=1) as pipe:
            images[precision] = pipe.generate(width=96, height=64, label="star", seed=2, output="array")
    assert psnr(images["int8"].astype(float), images["fp32"].astype(float), 255.0) >= 30


def test_tensorrt_honours_the_default_variant(tmp_path):
    """TensorRT engines are built from transformer.onnx (fp32/fp16/bf16): a package whose default variant is int8 is
    refused without --precision (an engine would give another image than every other runtime), with the reason."""
    from engines.errors import BackendError
    from engines.backends import create_backend

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "manifest.json").write_text(json.dumps(doc_with([INT8_ORT], default="int8")))
    with pytest.raises(BackendError, match=r"default transformer variant is 'int8' \(int8\), which TensorRT does "
                                           r"not run \(its engines are built from transformer.onnx in fp32, fp16, "
                                           r"bf16, or from a Q/DQ variant in int8, fp8\); run it on onnxruntime, or "
                                           r"choose an engine with --precision"):
        create_backend("tensorrt", package)
    with pytest.raises(BackendError, match="int8 variant 'int8' is not a Q/DQ graph for TensorRT"):
        create_backend("tensorrt", package, precision="int8")
    assert create_backend("tensorrt", package, precision="fp16").variant == "fp32"      # built on activate()
    assert create_backend("tensorrt", DEFAULT_MODEL_DIR).variant == "fp32"
