"""The OpenVINO backend: same graph contract and images as ONNX Runtime in f32, bf16 where the CPU has it, refusals,
compiled-model cache, fit-run and fit-export validate."""
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli.run import main as run_main
from engines.backends import create_backend
from engines.errors import BackendError
from engines.metrics import cosine, psnr
from engines.pipeline import DEFAULT_MODEL_DIR
from engines.png import read_parameters

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from engines.backends import openvino as openvino_backend


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The default compiled-model cache goes under a temporary XDG_CACHE_HOME, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def feed(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 25), np.float32)
    mask[0], mask[1, :12] = 1, 1
    angles = np.repeat(rng.uniform(0, 6.3, (2, 25, 32)), 2, axis=-1).astype(np.float32) * mask[..., None]
    x = rng.standard_normal((2, 25, 16)).astype(np.float32)
    x[mask == 0] = 40.0
    return {"x": x, "t": np.array([0.2, 0.7], np.float32), "y": np.array([3, 8]), "rope_cos": np.cos(angles),
            "rope_sin": np.sin(angles), "mask": mask}


def test_f32_matches_onnx_runtime(tmp_path):
    with create_backend("openvino", DEFAULT_MODEL_DIR, precision="f32", cache_dir=str(tmp_path)) as ov, \
            create_backend("onnxruntime", DEFAULT_MODEL_DIR, threads=1, ort_optimized=False) as ort:
        assert ov.precision == "fp32" and ov.variant == "ov"          # the copy tuned for OpenVINO (ov-optimize)
        out, ref = ov.infer(feed())["v"], ort.infer(feed())["v"]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.all(out[feed()["mask"] == 0] == 0)
    assert any(tmp_path.iterdir())                          # the compiled model went into the cache


def test_bf16_where_the_cpu_has_it(monkeypatch):
    supported, capabilities = openvino_backend.bf16_support()
    if supported:
        with create_backend("openvino", DEFAULT_MODEL_DIR, precision="bf16") as ov, \
                create_backend("openvino", DEFAULT_MODEL_DIR, precision="f32") as f32:
            assert ov.precision == "bf16"
            assert cosine(ov.infer(feed())["v"], f32.infer(feed())["v"]) >= 0.9999
    monkeypatch.setattr(openvino_backend, "bf16_support", lambda core, device: (False, "FP32, INT8"))
    with pytest.raises(BackendError, match="bf16 needs a CPU with native bfloat16.*FP32, INT8"):
        create_backend("openvino", DEFAULT_MODEL_DIR, precision="bf16").activate()


def test_refusals(monkeypatch):
    with pytest.raises(BackendError, match="no int8 transformer that openvino can run"):
        create_backend("openvino", DEFAULT_MODEL_DIR, precision="int8")
    with pytest.raises(BackendError, match="no device 'NPU9'"):
        create_backend("openvino", DEFAULT_MODEL_DIR, device="npu9").activate()
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match="OpenVINO is not installed"):
        create_backend("openvino", DEFAULT_MODEL_DIR).activate()


def test_fit_run_on_openvino_matches_onnx_runtime(tmp_path):
    runner = CliRunner()
    common = ["--width", "64", "--height", "48", "--class", "star", "--steps", "4", "-q"]
    assert runner.invoke(run_main, common + ["--out", str(tmp_path / "ort.png")]).exit_code == 0
    result = runner.invoke(run_main, common + ["--backend", "openvino", "--out", str(tmp_path / "ov.png")])
    assert result.exit_code == 0, result.output
    from PIL import Image
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png"), float) for n in ("ort", "ov"))
    assert psnr(a, b, 255.0) >= 50
    assert read_parameters(tmp_path / "ov.png")["backend"] == "openvino"
    result = runner.invoke(run_main, common + ["--backend", "openvino", "--precision", "ort",
                                               "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_fit_export_validate_runs_the_same_cases(tmp_path_factory):
    pytest.importorskip("torch")
    from fit_export.validate import validate_package
    from tests.runtime_helpers import tiny_package

    package, model = tiny_package(tmp_path_factory)
    report = validate_package(package, model=model, backend="openvino", precision="f32", e2e_steps=3)
    assert report.passed and report.providers == ["openvino"] and len(report.cases) > 10
    assert report.to_dict()["tolerances"]["max_abs_relative_to_scale"] == 1e-4


def test_int8_from_the_standard_graph_runs_on_openvino(tmp_path_factory):
    pytest.importorskip("torch")
    from fit_export.quantize import quantize_package
    from tests.runtime_helpers import tiny_package

    package, _ = tiny_package(tmp_path_factory)
    out = tmp_path_factory.mktemp("ov-int8") / "int8"
    entry = quantize_package(package, out, source="fp32", validate=False)
    assert entry["runtime"] is None and entry["source"] == "fp32"
    rng = np.random.default_rng(0)
    tiny_feed = {"x": rng.standard_normal((2, 6, 16)).astype(np.float32), "t": np.array([0.3, 0.6], np.float32),
                 "y": np.array([1, 2]), "rope_cos": np.ones((2, 6, 16), np.float32),
                 "rope_sin": np.zeros((2, 6, 16), np.float32), "mask": np.ones((2, 6), np.float32)}
    with create_backend("openvino", out, precision="int8") as ov, \
            create_backend("onnxruntime", out, precision="int8", threads=1) as ort:
        assert ov.variant == ort.variant == "int8"
        assert cosine(ov.infer(tiny_feed)["v"], ort.infer(tiny_feed)["v"]) >= 0.99
