"""engines.pipeline on an exported tiny model: parity with fit.sampling.sample, padded batches, decoding, PNGs."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import engines  # noqa: E402
from engines.backends import create_backend
from engines.contract import patchify, unpatchify
from engines.errors import BackendError, PackageError
from engines.package import file_entries
from engines.pipeline import EXTRAPOLATIONS, GenerationError, Request
from engines.png import read_parameters, save_png
from fit import flow  # noqa: E402
from fit.sampling import sample  # noqa: E402
from tests.runtime_helpers import copy_package, jobs, tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(package):
    with engines.load(package[0], threads=1) as p:
        yield p


def latent_noise(requests, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((4, r.height // 8, r.width // 8), dtype=np.float32) for r in requests]


@pytest.mark.parametrize("method,cfg,extrapolation,shift,tail", [
    ("euler", 1.0, None, 1.0, 0.0), ("euler", 3.0, "ntk-pro1", 1.0, 0.0), ("heun", 2.0, "vision-yarn", 1.0, 0.0),
    ("dopri5", 1.0, None, 1.0, 0.0), ("ab2", 2.0, None, 3.0, 0.0), ("unipc", 3.0, "ntk-pro1", 2.0, 0.0),
    ("unipc", 1.0, None, 1.0, 0.0), ("ab2", 4.0, None, 6.0, 1.0), ("unipc", 2.0, "ntk-pro1", 5.0, 0.75)])
def test_runtime_matches_torch_sampling(pipe, package, method, cfg, extrapolation, shift, tail):
    """ONNX Runtime + numpy sampler vs fit.sampling.sample with the same noise, mixed sizes in one batch."""
    model = package[1]
    requests = [Request(64, 32, 3, 0), Request(32, 48, 7, 1), Request(48, 48, None, 2)]
    noise = latent_noise(requests)
    ours = pipe.sample_latents(jobs(pipe, requests, sampler=method, steps=4, cfg=cfg, extrapolation=extrapolation,
                                    time_shift=shift, tail_compression=tail), noise=noise)
    ref = sample(model, [(r.height // 8, r.width // 8, model.num_classes if r.label is None else r.label)
                         for r in requests],
                 sampler=flow.SamplerSettings(method, steps=4, time_shift=shift, tail_compression=tail), cfg_scale=cfg,
                 rope_method=extrapolation,
                 noise=[torch.from_numpy(n) for n in noise])
    for a, b in zip(ours, ref):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=0)


def test_batching_does_not_change_an_image(pipe):
    requests = [Request(64, 32, 1, 10), Request(32, 32, 2, 11)]
    together = pipe.generate_many(jobs(pipe, requests, steps=3, cfg=2.0))
    alone = pipe.generate_many(jobs(pipe, requests[1:], steps=3, cfg=2.0))
    np.testing.assert_array_equal(together[1], alone[0])


def test_same_seed_same_image_and_other_seed_differs(pipe):
    a = pipe.generate(width=48, height=32, label=2, seed=5, steps=3, output="array")
    b = pipe.generate(width=48, height=32, label=2, seed=5, steps=3, output="array")
    c = pipe.generate(width=48, height=32, label=2, seed=6, steps=3, output="array")
    assert a.shape == (32, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_generate_returns_pil_with_parameters(pipe, tmp_path):
    image = pipe.generate(width=32, height=64, label=4, seed=3, steps=2, sampler="heun", cfg=1.5)
    assert image.size == (32, 64)
    params = json.loads(image.info["parameters"])
    assert params["seed"] == 3 and params["sampler"] == "heun" and params["class"] == 4
    path = save_png(image, tmp_path / "a.png")
    assert read_parameters(path) == params
    assert not [p for p in tmp_path.iterdir() if p.name != "a.png"]          # no temporary file left


def test_parameters_name_a_tail_compression_only_when_there_is_one(pipe):
    """An image without tail compression keeps exactly the parameters it had before the setting existed."""
    plain = json.loads(pipe.generate(width=32, height=32, steps=2, sampler="ab2", time_shift=2).info["parameters"])
    assert "tail_compression" not in plain and plain["time_shift"] == 2.0
    compressed = json.loads(pipe.generate(width=32, height=32, steps=2, sampler="ab2", time_shift=2,
                                          tail_compression=1).info["parameters"])
    assert compressed == dict(plain, tail_compression=1.0)


def test_patchify_matches_torch_and_round_trips():
    latent = np.random.default_rng(0).standard_normal((4, 6, 10)).astype(np.float32)
    tokens = patchify(latent, 2)
    np.testing.assert_array_equal(tokens, flow.patchify(torch.from_numpy(latent), 2).numpy())
    np.testing.assert_array_equal(unpatchify(tokens, 3, 5, 2), latent)


@pytest.mark.parametrize("width,height,snap,expected", [(48, 32, False, (48, 32)), (50, 30, True, (48, 32))])
def test_size_checks(pipe, width, height, snap, expected):
    assert pipe.check_size(width, height, snap) == expected


@pytest.mark.parametrize("width,height,message", [(50, 32, "nearest valid sizes: 48x32, 64x32"),
                                                  (0, 32, "positive"), (2048, 2048, "maximum"),
                                                  ("64", 32, "whole number")])
def test_bad_sizes_name_the_fix(pipe, width, height, message):
    with pytest.raises(GenerationError, match=message):
        pipe.check_size(width, height)


def test_labels(pipe):
    assert pipe.resolve_label("3") == 3 and pipe.resolve_label(None) is None
    for bad in (10, -1, "dog", 2.5):
        with pytest.raises(GenerationError):
            pipe.resolve_label(bad)


def test_bad_generation_settings(pipe):
    with pytest.raises(GenerationError, match="cfg"):
        pipe.generate(width=32, height=32, cfg=-1)
    with pytest.raises(GenerationError, match="steps"):
        pipe.generate(width=32, height=32, steps=0)
    with pytest.raises(GenerationError, match="extrapolation"):
        pipe.generate(width=32, height=32, extrapolation="warp")


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5])
def test_seeds_outside_0_to_2_64_are_refused(pipe, seed):
    with pytest.raises(GenerationError, match=r"seed must be a whole number from 0 to 2\*\*64 - 1") as err:
        pipe.generate(width=32, height=32, steps=1, seed=seed)
    assert err.value.parameter == "seed"
    assert pipe.prepare(32, 32, None, 2 ** 64 - 1)[0].request.seed == 2 ** 64 - 1


def test_non_finite_latents_are_refused(pipe, monkeypatch):
    monkeypatch.setattr(pipe.backend, "infer", lambda feed: {"v": np.full(feed["x"].shape, np.nan, np.float32)})
    with pytest.raises(GenerationError, match="seed 5 gave non-finite latents"):
        pipe.generate(width=32, height=32, steps=2, seed=5)


def test_backend_errors_of_onnx_runtime_are_backend_errors(package):
    """A failing run inside ONNX Runtime (here inconsistent shapes) is one-line BackendError, not ORT's type."""
    with create_backend("onnxruntime", package[0], threads=1, device="cpu") as backend:
        feed = backend.manifest.graph.example_feed(batch=1, seq=4)
        feed["mask"] = np.ones((1, 5), np.float32)
        with pytest.raises(BackendError, match="ONNX Runtime failed running transformer.onnx") as err:
            backend.infer(feed)
        assert "\n" not in str(err.value)


def test_corrupt_packages_are_refused(package, tmp_path):
    bad_hash = copy_package(package[0], tmp_path / "hash")
    with open(bad_hash / "transformer.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2\3")
    with pytest.raises(PackageError, match="sha256"):
        engines.load(bad_hash)
    truncated = copy_package(package[0], tmp_path / "trunc")
    data = (truncated / "transformer.onnx").read_bytes()
    (truncated / "transformer.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match="bytes"):
        engines.load(truncated)
    doc = json.loads((truncated / "manifest.json").read_text())           # hashes rewritten: ONNX Runtime refuses
    doc["files"].update({n: e.to_dict() for n, e in file_entries(truncated, ["transformer.onnx"]).items()})
    (truncated / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="cannot load"):
        engines.load(truncated)
    bad_json = copy_package(package[0], tmp_path / "json")
    (bad_json / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        engines.load(bad_json)
    with pytest.raises(PackageError, match="does not exist"):
        engines.load(tmp_path / "missing")


def test_vae_decoder_path(package, tmp_path):
    """A package with vae_decoder.onnx decodes through it: a stand-in decoder (nearest x8 upsample of the first
    three channels) makes the expected image computable."""
    import onnx
    from onnx import TensorProto, helper

    pkg = copy_package(package[0], tmp_path / "vae")
    graph = helper.make_graph(
        [helper.make_node("Slice", ["latent", "starts", "ends", "axes"], ["rgb"]),
         helper.make_node("Resize", ["rgb", "", "scales"], ["image"], mode="nearest")],
        "decoder", [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor("starts", TensorProto.INT64, [1], [0]), helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), pkg / "vae_decoder.onnx")
    doc = json.loads((pkg / "manifest.json").read_text())
    doc["vae_decoder"] = {"file": "vae_decoder.onnx"}
    doc["files"].update({n: e.to_dict() for n, e in file_entries(pkg, ["vae_decoder.onnx"]).items()})
    (pkg / "manifest.json").write_text(json.dumps(doc))
    with engines.load(pkg, threads=1) as p:
        job = p.prepare(32, 48, 1, 0, sampler="euler", steps=2, cfg=1.0)
        latent = p.sample_latents(job)[0]
        image = p.generate_many(job)[0]
    z = latent[:3] / np.float32(0.18215)
    expected = np.clip((np.repeat(np.repeat(z, 8, 1), 8, 2) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected.transpose(1, 2, 0))


def test_backend_interface(package):
    backend = create_backend("ort", package[0], threads=1, device="cpu")
    with pytest.raises(BackendError, match="not active"):
        backend.infer({})
    with backend:
        assert list(backend.inputs) == ["x", "t", "y", "rope_cos", "rope_sin", "mask"]
        assert list(backend.outputs) == ["v"]
        with pytest.raises(BackendError, match="missing"):
            backend.infer({"x": np.zeros((1, 4, 16), np.float32)})
    assert not backend.is_active
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("cuda-magic", package[0])
    with pytest.raises(BackendError, match="optimization"):
        create_backend("onnxruntime", package[0], optimization="max")
    with pytest.raises(BackendError, match="no option"):
        create_backend("onnxruntime", package[0], warp_speed=True)
    with pytest.raises(BackendError, match="memory policy"):
        create_backend("onnxruntime", package[0], memory="hoard")


def test_memory_policies_give_identical_outputs(package):
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((2, 12, 16), dtype=np.float32), "t": np.array([0.2, 0.7], np.float32),
            "y": np.array([1, 10]), "rope_cos": np.ones((2, 12, 16), np.float32),
            "rope_sin": np.zeros((2, 12, 16), np.float32), "mask": np.ones((2, 12), np.float32)}
    outputs = []
    for memory in ("shrink", "arena", "off"):
        with create_backend("onnxruntime", package[0], threads=1, memory=memory) as backend:
            outputs.append(backend.infer(feed)["v"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_optimized_model_is_saved(package, tmp_path):
    target = tmp_path / "optimized.onnx"
    with create_backend("onnxruntime", package[0], optimized_model_path=str(target), optimization="extended"):
        pass
    assert target.is_file() and target.stat().st_size > 0


def test_example_app_serves_png(package):
    """examples/embed_app.py: a request returns a PNG with parameters; a bad one gets HTTP 400."""
    import importlib.util
    import threading
    import urllib.error
    import urllib.request
    from http.server import HTTPServer
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "embed_app.py"
    spec = importlib.util.spec_from_file_location("embed_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    with engines.load(package[0], threads=1) as p:
        server = HTTPServer(("127.0.0.1", 0), app.make_handler(p, threading.Lock()))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}/generate"
        try:
            query = "width=32&height=48&label=2&seed=1&steps=2&time_shift=3&tail_compression=0.5"
            with urllib.request.urlopen(f"{base}?{query}") as response:
                assert response.headers["Content-Type"] == "image/png"
                parameters = json.loads(response.headers["X-Generation-Parameters"])
                assert parameters["seed"] == 1 and parameters["time_shift"] == 3.0
                assert parameters["tail_compression"] == 0.5
                assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}?width=33&height=48")
            assert err.value.code == 400
        finally:
            server.shutdown()
            server.server_close()


def test_every_listed_extrapolation_resolves(pipe):
    rope = lambda name: pipe.settings(extrapolation=name).rope
    methods = {rope(name).method for name in EXTRAPOLATIONS}
    assert methods == {"normal", "linear", "ntk-aware", "ntk-by-parts", "yarn", "ntk-aware-pro1", "ntk-aware-pro2"}
    assert rope("vision-yarn").decouple and not rope("yarn").decouple


def test_fp16_package_runs_and_agrees(package, pipe, tmp_path):
    """An fp16 graph takes float16 x and returns float16 v; the runtime casts both ways and stays close to fp32."""
    from fit_export import export_package

    p16 = export_package(package[1], None, tmp_path / "fp16", precision="fp16")
    requests = [Request(64, 32, 3, 0), Request(32, 32, 5, 1)]
    noise = latent_noise(requests)
    ref = pipe.sample_latents(jobs(pipe, requests, sampler="euler", steps=3, cfg=2.0), noise=noise)
    with engines.load(p16, threads=1) as half:
        assert half.backend.inputs["x"].dtype == np.float16
        out = half.sample_latents(jobs(half, requests, sampler="euler", steps=3, cfg=2.0), noise=noise)
    for a, b in zip(out, ref):
        assert a.dtype == np.float32
        cosine = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        assert cosine > 0.999


@pytest.mark.parametrize("method", ["euler", "sde"])
def test_pytorch_reference_and_runtime_give_one_image_per_seed(tmp_path_factory, method):
    """fit.sampling.sample(seed=s) starts from the runtime's portable noise and, for sde, draws the runtime's
    per-step noise: the same latents as engines.pipeline for the same seeds, up to float32 rounding."""
    from fit import SamplerSettings

    package, model = tiny_package(tmp_path_factory)
    with engines.load(package, threads=1) as pipe:
        d = pipe.downsample
        requests = [Request(48, 32, 3, 11), Request(32, 32, 5, 12)]
        prepared = jobs(pipe, requests, sampler=method, steps=6, cfg=1.5)
        settings = prepared[0].settings
        runtime = pipe.sample_latents(prepared)
    reference = sample(model, [(r.height // d, r.width // d, r.label) for r in requests],
                       sampler=SamplerSettings(method, 6), cfg_scale=settings.cfg, scale_pow=settings.scale_pow,
                       seed=11)
    for got, want in zip(runtime, reference):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=2e-4)


def test_a_tap_sees_every_transformer_call_of_sampling(pipe):
    """Pipeline.tap: calibration and validation observe the real feeds without replacing the backend."""
    seen = []
    job = pipe.prepare(64, 32, 3, 0, sampler="heun", steps=2, cfg=2.0)
    with pipe.tap(lambda feed, out: seen.append((feed["x"].shape, out["v"].shape))):
        pipe.sample_latents(job)
    calls = job[0].settings.sampler.evaluations()                              # heun: 2 per step
    assert calls == 4 and len(seen) == calls and all(x == v == (2, 8, 16) for x, v in seen)     # guided: batch 2
    pipe.sample_latents(job)
    assert len(seen) == calls                                                   # the tap ends with its block
