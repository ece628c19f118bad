"""TensorRT on a real GPU: engine build, sidecar, backend numerics against ONNX Runtime, CUDA graphs, the
refusal of a mismatched engine, and validation against PyTorch. Skipped, with the missing piece named, where
TensorRT, cuda-python or an NVIDIA GPU is absent (run with ``pytest -m gpu``)."""
import json

import numpy as np
import pytest

from engines.backends.tensorrt.install import tensorrt_status

MISSING = tensorrt_status()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(bool(MISSING), reason="TensorRT tests need " + "; ".join(MISSING))]

from engines.backends import create_backend
from engines.backends.tensorrt.install import gpu_info, tensorrt_version  # noqa: E402
from engines.backends.tensorrt.store import EngineMismatchError  # noqa: E402
from tests.runtime_helpers import copy_package, tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny package with an fp32 engine (two buckets, batch 1..2 images with CFG) built once."""
    from fit_export.tensorrt import build_engines, plan_build

    package = copy_package(tiny_package(tmp_path_factory)[0], tmp_path_factory.mktemp("trt") / "pkg")
    cache = package.parent / "timing.cache"
    build_engines(plan_build(package, profiles="64,256", batch="1:2", timing_cache=str(cache)))
    return package, cache


def feed_for(manifest, grids, labels):
    """A padded feed for (h, w) grids, as the sampler makes it."""
    batch = manifest.graph.padded_batch(grids, manifest.rope.settings(), labels)
    return batch.feed(np.full(len(grids), 0.4), np.random.default_rng(0).standard_normal(batch.x.shape))


def test_build_writes_engine_sidecar_and_timing_cache(built):
    package, cache = built
    side = json.loads((package / "engines" / "transformer.fp32.json").read_text())
    gpu = gpu_info()
    assert side["tensorrt_version"] == tensorrt_version()
    assert side["gpu"] == {"name": gpu.name, "compute_capability": list(gpu.compute_capability)}
    assert [p["seq"] for p in side["profiles"]] == [[1, 64, 64], [65, 256, 256]]
    assert (package / "engines" / "transformer.fp32.plan").stat().st_size == side["engine"]["bytes"]
    assert cache.is_file() and cache.stat().st_size > 0


@pytest.mark.parametrize("grids, labels", [([(8, 8)], [1]), ([(8, 8), (8, 8)], [1, 10]),
                                           ([(16, 16), (4, 8)], [3, 10]), ([(10, 12)], [2])])
def test_backend_matches_onnxruntime(built, grids, labels):
    package, _ = built
    with create_backend("onnxruntime", package, device="cpu") as ort, create_backend("trt", package) as trt:
        feed = feed_for(trt.manifest, grids, labels)
        ref, out = ort.infer(feed)["v"], trt.infer(feed)["v"]
    assert out.shape == ref.shape                                   # padding to the profile min is sliced off
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-3 * scale
    assert np.all(out[feed["mask"] == 0] == 0)


def test_static_profile_uses_a_cuda_graph(tmp_path_factory):
    from fit_export.tensorrt import build_engines, plan_build

    package = copy_package(tiny_package(tmp_path_factory)[0], tmp_path_factory.mktemp("trt-static") / "pkg")
    build_engines(plan_build(package, profiles="64", batch="1", static=True, engine_per_bucket=True))
    with create_backend("trt", package) as trt:
        feed = feed_for(trt.manifest, [(4, 8), (4, 8)], [1, 10])
        first = trt.infer(feed)["v"]
        second = trt.infer(feed)["v"]                               # replays the graph captured by the first
        third = trt.infer(feed)["v"]
        slot = trt._slots[0]
        assert slot.is_static and slot.graph_exec is not None and not slot.graph_failed
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, third)
    assert first.shape == (2, 32, trt.manifest.model.out_token_dim)


def test_mismatched_engine_is_refused_with_rebuild_advice(built, tmp_path):
    package, _ = built
    tampered = copy_package(package, tmp_path / "tampered")
    path = tampered / "engines" / "transformer.fp32.json"
    side = json.loads(path.read_text())
    side["gpu"]["compute_capability"] = [1, 0]
    path.write_text(json.dumps(side))
    with pytest.raises(EngineMismatchError, match="Rebuild it: fit-export build"):
        create_backend("trt", tampered).activate()


def test_validation_against_pytorch(tmp_path_factory):
    from fit_export.tensorrt import build_engines, plan_build
    from fit_export.validate import validate_package
    from tests.runtime_helpers import tiny_model

    package = copy_package(tiny_package(tmp_path_factory)[0], tmp_path_factory.mktemp("trt-val") / "pkg")
    for precision in ("fp32", "fp16", "bf16"):              # fp16/bf16: typed conversions of the fp32 graph
        build_engines(plan_build(package, precision=precision, profiles="64,256,512", batch="1:2"))
        side = json.loads((package / "engines" / f"transformer.{precision}.json").read_text())
        assert side["strongly_typed"] and (side["typed_graph"].get("precision") == precision) == (precision != "fp32")
        report = validate_package(package, model=tiny_model(), backend="tensorrt", precision=precision, e2e_steps=4)
        assert report.passed, report.table()
        assert not [c for c in report.cases if c.note.startswith("skipped")]     # 512 holds the extrapolation
