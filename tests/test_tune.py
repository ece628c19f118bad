"""fit-export ort-optimize: the ONNX Runtime-tuned transformer copy (fused attention and RoPE) matches the package graph."""
import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

import engines  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from cli.export import main as export_cli  # noqa: E402
from engines.backends import create_backend
from engines.contract import GraphContract
from engines.metrics import cosine  # noqa: E402
from engines.package import load_manifest, sha256_file
from engines.rope import RopeSettings  # noqa: E402
from fit_export import tune  # noqa: E402
from fit_export.onnx_export import check_graph  # noqa: E402
from fit_export.tune import ORT_FILE, TuneError, fuse_attention, optimize_package  # noqa: E402
from tests.runtime_helpers import copy_package, tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """A copy of the tiny package with its ORT copy written, and the transformer.onnx hash from before."""
    source, _ = tiny_package(tmp_path_factory)
    package = copy_package(source, tmp_path_factory.mktemp("ortopt") / "tiny")
    before = sha256_file(package / "transformer.onnx")
    entry = optimize_package(package)
    return package, entry, before


def padded_feed(seed=0):
    """Batch 3 of grids 1x37, 4x5 and 3x3 padded to 37 tokens (padding filled with large values), with the
    runtime's RoPE tables."""
    rng = np.random.default_rng(seed)
    batch = GraphContract(16, 16, 16).padded_batch([(1, 37), (4, 5), (3, 3)], RopeSettings(16), [1, 4, 10])
    feed = batch.feed([0.1, 0.5, 0.9], rng.standard_normal(batch.x.shape))
    feed["x"][feed["mask"] == 0] = -3e4
    return feed


def test_copy_is_recorded_and_package_graph_untouched(optimized):
    package, entry, before = optimized
    doc = load_manifest(package, verify=True).to_dict()           # every hash, the new file's included
    (variant,) = doc["transformer"]["variants"]
    assert variant["name"] == "ort" and variant["file"] == ORT_FILE and ORT_FILE in doc["files"]
    assert variant["runtime"] == "onnxruntime" and variant["weights_from"] == "transformer.onnx"
    depth = doc["model"]["config"]["depth"]
    assert entry["fused_attention"] == depth and entry["fused_rotary"] == 2 * depth and entry["opset"] == 23
    assert sha256_file(package / "transformer.onnx") == before
    check_graph(__import__("onnx_ir").load(package / "transformer.onnx"))          # still standard-op
    copy = onnx.load(str(package / ORT_FILE))
    ops = {n.op_type for n in copy.graph.node}
    assert {"Attention", "RotaryEmbedding"} <= ops and not ops & {"Softmax", "IsNaN", "Neg"}
    assert {(o.domain, o.version) for o in copy.opset_import} == {("", 23)}


def test_backend_runs_the_copy_and_it_matches_the_standard_graph(optimized):
    package, _, _ = optimized
    feed = padded_feed()
    with create_backend("onnxruntime", package, threads=1) as fused, \
            create_backend("onnxruntime", package, threads=1, ort_optimized=False) as plain:
        assert fused.model_path.name == ORT_FILE and plain.model_path.name == "transformer.onnx"
        out, ref = fused.infer(feed)["v"], plain.infer(feed)["v"]
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-4 * scale
    assert cosine(out, ref) >= 0.9999
    assert np.all(out[feed["mask"] == 0] == 0) and np.isfinite(out).all()


def test_images_agree_through_the_pipeline(optimized):
    package, _, _ = optimized
    images = []
    for flag in (True, False):
        with engines.load(package, threads=1, ort_optimized=flag) as pipe:
            images.append(pipe.generate(width=48, height=32, label=3, seed=5, steps=4, cfg=1.5,
                                        output="array").astype(int))
    assert np.abs(images[0] - images[1]).max() <= 1


def without_copy(source, target):
    """A copy of the optimized package with its ORT copy removed again; returns (package, manifest dict)."""
    package = copy_package(source, target)
    (package / ORT_FILE).unlink()
    doc = json.loads((package / "manifest.json").read_text())
    doc["transformer"]["variants"] = []
    del doc["files"][ORT_FILE]
    (package / "manifest.json").write_text(json.dumps(doc))
    return package, doc


def test_a_wrong_fusion_is_caught_and_nothing_is_written(optimized, tmp_path, monkeypatch):
    package, doc = without_copy(optimized[0], tmp_path / "pkg")
    real = tune.fuse_attention

    def off_by_a_bit(model, base_dir):                        # the scale of one block 1% off
        count = real(model, base_dir)
        node = next(n for n in model.graph.node if n.op_type == "Attention")
        next(a for a in node.attribute if a.name == "scale").f *= 1.01
        return count

    monkeypatch.setattr(tune, "fuse_attention", off_by_a_bit)
    with pytest.raises(TuneError, match="differs"):
        optimize_package(package)
    assert not (package / ORT_FILE).exists() and not list(package.glob(".*tmp"))
    assert load_manifest(package).transformer.variants == () and [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_external_weights_stay_shared(optimized, tmp_path):
    """A graph with external weights (XL and larger): the copy refers to the same data file."""
    package = copy_package(optimized[0], tmp_path / "pkg")
    model = onnx.load(str(package / "transformer.onnx"))
    onnx.save(model, str(package / "transformer.onnx"), save_as_external_data=True,
              location="transformer.onnx.data")
    doc = json.loads((package / "manifest.json").read_text())
    doc["transformer"]["external_data"] = "transformer.onnx.data"
    doc["transformer"]["variants"] = []                     # rewritten by optimize_package below
    doc["files"] = {name: {"sha256": sha256_file(package / name), "bytes": (package / name).stat().st_size}
                    for name in ("transformer.onnx", "transformer.onnx.data")}
    (package / "manifest.json").write_text(json.dumps(doc))
    optimize_package(package)
    size = lambda name: (package / name).stat().st_size
    assert size(ORT_FILE) <= size("transformer.onnx") < size("transformer.onnx.data")
    assert load_manifest(package).transformer.variant("ort").weights_from == "transformer.onnx.data"
    assert not list(package.glob("*.ort.onnx.data"))
    feed = padded_feed(1)
    with create_backend("onnxruntime", package, threads=1) as fused, \
            create_backend("onnxruntime", package, threads=1, ort_optimized=False) as plain:
        np.testing.assert_allclose(fused.infer(feed)["v"], plain.infer(feed)["v"], atol=1e-5)


def test_refusals(optimized, tmp_path):
    package = copy_package(optimized[0], tmp_path / "pkg")
    doc = json.loads((package / "manifest.json").read_text())
    doc["transformer"]["precision"] = "fp16"
    (package / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(TuneError, match="fp32"):
        optimize_package(package)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["a"], ["b"])], "g",
                                   [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2, 2])],
                                   [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2, 2])])
    assert fuse_attention(onnx.helper.make_model(graph)) == 0
    result = CliRunner().invoke(export_cli, ["ort-optimize", str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "does not exist" in result.output


def test_a_wrong_rotary_fusion_is_caught(optimized, tmp_path, monkeypatch):
    """Half-split instead of interleaved pairs: the check against the package graph refuses the copy."""
    package = copy_package(optimized[0], tmp_path / "pkg")
    real = tune.fuse_rotary

    def half_split(model, **kwargs):
        count = real(model, **kwargs)
        for node in model.graph.node:
            if node.op_type == "RotaryEmbedding":
                next(a for a in node.attribute if a.name == "interleaved").i = 0
        return count

    monkeypatch.setattr(tune, "fuse_rotary", half_split)
    with pytest.raises(TuneError, match="differs"):
        tune.optimize_graph(package / "transformer.onnx", package / "copy.onnx", 16, 16)
    assert not (package / "copy.onnx").exists()


def test_backend_falls_back_when_the_copy_cannot_be_loaded(optimized, monkeypatch):
    """An ONNX Runtime without the opset-23 kernels: the standard graph runs, with a warning."""
    import onnxruntime

    package, _, _ = optimized
    real = onnxruntime.InferenceSession

    def no_opset_23(path, *args, **kwargs):
        if str(path).endswith(ORT_FILE):
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation "
                               "for Attention(23) node")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_opset_23)
    with pytest.warns(RuntimeWarning, match="cannot load transformer.ort.onnx"):
        with create_backend("onnxruntime", package, threads=1) as backend:
            out = backend.infer(padded_feed())["v"]
    assert backend.model_path.name == "transformer.onnx" and np.isfinite(out).all()


def test_cli_writes_the_copy_and_reports_what_it_fused(optimized, tmp_path):
    package, doc = without_copy(optimized[0], tmp_path / "pkg")
    result = CliRunner().invoke(export_cli, ["ort-optimize", str(package)])
    depth = doc["model"]["config"]["depth"]
    assert result.exit_code == 0, result.output
    assert f"{depth} attention blocks and {2 * depth} RoPE rotations fused" in result.output
    assert load_manifest(package).transformer.variant("ort").file == ORT_FILE


def test_the_copy_shares_the_graph_weights(optimized, tmp_path):
    """Weights stored inside transformer.onnx: the copy reads them from there (external data with offsets), so it
    is a few percent of the graph's size and a damaged graph file is caught by its hash."""
    package, _, _ = optimized
    size = lambda name: (package / name).stat().st_size
    assert size(ORT_FILE) < 0.2 * size("transformer.onnx")
    copy = onnx.load(str(package / ORT_FILE), load_external_data=False)
    external = [t for t in copy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == \
        {"transformer.onnx"}
    loaded = onnx.load(str(package / ORT_FILE))                          # the referenced bytes are the tensors
    plain = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(package / "transformer.onnx")).graph.initializer}
    for tensor in loaded.graph.initializer:
        if tensor.name in plain:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), plain[tensor.name])
    damaged = copy_package(package, tmp_path / "pkg")
    data = bytearray((damaged / "transformer.onnx").read_bytes())
    data[-100] ^= 1
    (damaged / "transformer.onnx").write_bytes(bytes(data))
    from engines.errors import PackageError
    with pytest.raises(PackageError, match="sha256 of transformer.onnx"):
        create_backend("onnxruntime", damaged, threads=1).activate()


def test_legacy_manifest_entry_is_read_as_the_ort_variant(optimized):
    from engines.manifest import Manifest

    package, entry, _ = optimized
    doc = json.loads((package / "manifest.json").read_text())
    legacy = {k: v for k, v in entry.items() if k in ("file", "opset", "runtime", "fused_attention", "check")}
    doc["transformer"]["variants"] = []
    doc["transformer"]["ort_optimized"] = legacy
    transformer = Manifest.from_dict(doc).transformer
    assert transformer.variant("ort").file == ORT_FILE and "ort_optimized" not in transformer.to_dict()
    assert transformer.select("onnxruntime").name == "ort" and transformer.select("tensorrt").name == "fp32"


#################################################################################
#                          The OpenVINO-tuned copy (ov)                         #
#################################################################################

def test_rotation_as_matmul_is_exact():
    from fit.model import rotate_half
    import torch

    head_dim = 12
    graph = onnx.helper.make_graph([], "g", [], [])
    model = onnx.helper.make_model(graph)
    assert tune.rotation_as_matmul(model, head_dim) == 0 and not model.graph.initializer
    x = torch.randn(3, 5, head_dim)
    matrix = np.zeros((head_dim, head_dim), np.float32)
    pairs = np.arange(0, head_dim, 2)
    matrix[pairs, pairs + 1], matrix[pairs + 1, pairs] = 1.0, -1.0
    assert torch.equal(x @ torch.from_numpy(matrix), rotate_half(x))


@pytest.fixture(scope="module")
def ov_optimized(tmp_path_factory):
    source, _ = tiny_package(tmp_path_factory)
    package = copy_package(source, tmp_path_factory.mktemp("ovopt") / "tiny")
    before = sha256_file(package / "transformer.onnx")
    result = CliRunner().invoke(export_cli, ["ov-optimize", str(package)])
    return package, result, before


def test_openvino_copy_is_recorded_and_exact(ov_optimized):
    package, result, before = ov_optimized
    depth = load_manifest(package).model.config["depth"]
    assert result.exit_code == 0, result.output
    assert f"{2 * depth} RoPE rotations as MatMul; vs transformer.onnx max abs 0.0e+00 of scale" in result.output
    variant = load_manifest(package, verify=True).transformer.variant("ov")
    assert (variant.file, variant.runtime, variant.precision, variant.weights_from, variant.fused_rotary) == \
        (tune.OPENVINO_FILE, "openvino", "fp32", "transformer.onnx", 2 * depth)
    assert variant.check["max_abs_relative_to_scale"] == 0.0 and variant.opset == 18
    assert sha256_file(package / "transformer.onnx") == before
    copy = onnx.load(str(package / tune.OPENVINO_FILE), load_external_data=False)
    assert "Neg" not in {n.op_type for n in copy.graph.node}                # the rotation's -x[2k+1] is gone
    assert sum(n.op_type == "MatMul" and "rotate_half/matrix" in n.input for n in copy.graph.node) == 2 * depth
    assert (package / tune.OPENVINO_FILE).stat().st_size < 0.2 * (package / "transformer.onnx").stat().st_size
    # ONNX Runtime never picks a copy made for OpenVINO
    with create_backend("onnxruntime", package, threads=1) as backend:
        assert backend.model_path.name == "transformer.onnx"


def test_openvino_runs_its_copy_with_the_same_numbers(ov_optimized):
    pytest.importorskip("openvino")
    package, _, _ = ov_optimized
    feed = padded_feed(2)
    with create_backend("openvino", package, precision="f32", cache=False) as tuned, \
            create_backend("onnxruntime", package, threads=1, ort_optimized=False) as plain:
        assert tuned.variant == "ov" and tuned.model_path.name == tune.OPENVINO_FILE
        out, ref = tuned.infer(feed)["v"], plain.infer(feed)["v"]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max() and cosine(out, ref) >= 0.9999
    assert np.all(out[feed["mask"] == 0] == 0)
    with create_backend("openvino", package, precision="fp32", cache=False) as generic:       # asked by name: plain
        assert generic.variant == "ov"


def test_ov_optimize_refuses_a_graph_without_the_rotation(ov_optimized, tmp_path, monkeypatch):
    package = copy_package(ov_optimized[0], tmp_path / "pkg")
    monkeypatch.setattr(tune, "_rotated_half", lambda g, name: None)
    before = load_manifest(package).transformer.variants
    result = CliRunner().invoke(export_cli, ["ov-optimize", str(package)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no interleaved RoPE rotation" in result.output
    assert load_manifest(package).transformer.variants == before and not list(package.glob(".*tmp"))
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
