"""The TensorRT backend (engines/backends/tensorrt/: backend, cuda, install) without a GPU: its refusal paths, its
binding protocol against a simulated TensorRT + CUDA runtime (tests/trt_helpers.py), install probing, feed padding."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from engines.atomic import atomic_write
from engines.backends import create_backend
from engines.backends.tensorrt.backend import TensorRTBackend
from engines.backends.tensorrt.install import GpuInfo, tensorrt_status
from engines.backends.tensorrt.store import EngineMismatchError, Sidecar, write_sidecar
from engines.errors import BackendError
from engines.package import load_manifest, sha256_file
from fit_export.tensorrt import plan_build
from tests.trt_helpers import H100, FakeCudart, fake_tensorrt, own_package, package  # noqa: F401 (fixtures)


# ----------------------------------------------------------------------------------------------------------
# The backend without TensorRT
# ----------------------------------------------------------------------------------------------------------

def test_backend_registered_as_trt_and_refuses_cleanly(own_package):
    backend = create_backend("trt", own_package)
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    with pytest.raises(BackendError, match="precision"):
        create_backend("tensorrt", own_package, precision="int4")
    with pytest.raises(BackendError, match="no int8 Q/DQ variant for TensorRT; write one with: fit-export quantize"):
        create_backend("tensorrt", own_package, precision="int8")
    if tensorrt_status():
        with pytest.raises(BackendError, match="the TensorRT backend needs"):
            backend.activate()
        assert not backend.is_active


# ----------------------------------------------------------------------------------------------------------
# The backend's binding protocol against the simulated TensorRT + CUDA runtime of tests/trt_helpers.py: padding,
# profile choice, slicing and CUDA-graph replay
# ----------------------------------------------------------------------------------------------------------

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
# Install probing, feed padding
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
