"""fit-run: images, metadata and determinism; every bad input is one line on stderr, exit 2, no file written."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from cli.run import main  # noqa: E402
from engines.pipeline import GenerationError
from engines.png import read_parameters
from tests.runtime_helpers import copy_package, tiny_package  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory)[0]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_writes_numbered_images_with_metadata(package, tmp_path):
    out = tmp_path / "img.png"
    result = invoke(package, "-W", 48, "-H", 32, "--class", 3, "--num", 2, "--steps", 2, "--seed", 7, "-q",
                    "--out", out)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["img-1.png", "img-2.png"]
    params = read_parameters(tmp_path / "img-2.png")
    assert (params["seed"], params["width"], params["height"], params["class"], params["steps"]) == (8, 48, 32, 3, 2)


def test_same_seed_same_file_and_grid(package, tmp_path):
    for name in ("a.png", "b.png"):
        assert invoke(package, "-W", 32, "-H", 32, "--steps", 2, "--seed", 1, "-q", "-o", tmp_path / name).exit_code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    result = invoke(package, "-W", 32, "-H", 32, "--steps", 1, "--num", 3, "--grid", "-q", "-o", tmp_path / "g.png")
    assert result.exit_code == 0
    from PIL import Image
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (32 * 2 + 2, 32 * 2 + 2)
        assert len(json.loads(im.text["parameters"])["grid"]) == 3


def test_snap_rounds_to_the_grid(package, tmp_path):
    result = invoke(package, "-W", 50, "-H", 30, "--snap", "--steps", 1, "-q", "-o", tmp_path / "s.png")
    assert result.exit_code == 0
    assert read_parameters(tmp_path / "s.png")["width"] == 48


def corrupt_hash(src, dst):
    pkg = copy_package(src, dst)
    with open(pkg / "transformer.onnx", "r+b") as f:
        f.seek(64)
        f.write(b"\xff\xfe")
    return pkg


def bad_json(src, dst):
    pkg = copy_package(src, dst)
    (pkg / "manifest.json").write_text("{")
    return pkg


BAD = [
    (["-W", 0, "-H", 32], "width must be positive"),
    (["-W", -16, "-H", 32], "width must be positive"),
    (["-W", "abc"], "--width must be a whole number of pixels, got 'abc'"),
    (["-W", "1.5"], "--width must be a whole number of pixels, got 1.5"),
    (["--num", 0], "--num must be a whole number of at least 1, got 0"),
    (["--precision", "bogus"], "the package has no transformer variant 'bogus'"),
    (["-W", 50, "-H", 32], "nearest valid sizes: 48x32, 64x32"),
    (["-W", 4096, "-H", 4096], "maximum"),
    (["--class", "zebra"], "unknown class"),
    (["--class=--5"], "unknown class '--5'"),
    (["--class", "²"], "unknown class '²'"),
    (["--class", 99], "outside"),
    (["--steps", 0], "--steps must be a whole number from 1 to 10,000, got 0"),
    (["--steps", 10 ** 9], "--steps must be a whole number from 1 to 10,000"),
    (["--steps", 10 ** 20], "--steps must be a whole number from 1 to 10,000"),
    (["--cfg", -1], "--cfg must be a number from 0 to 1000, got -1.0"),
    (["--cfg", "1e39"], "--cfg must be a number from 0 to 1000"),
    (["--cfg", "nan"], "--cfg must be a number from 0 to 1000"),
    (["--seed", -1], "--seed must be a whole number from 0 to 2**64 - 1, got -1"),
    (["--seed", 2 ** 64], "--seed must be a whole number from 0 to 2**64 - 1"),
    (["--seed", 2 ** 64 - 1, "--num", 2], "needs seeds up to 18446744073709551616"),
    (["--num", 10 ** 8, "--grid"], "drop --grid"),
    (["--sampler", "rk4"], "unknown sampler 'rk4'; choose one of euler, heun, dopri5, sde, ab2, unipc"),
    (["--time-shift", 0], "--time-shift must be a number from 0.01 to 100, got 0.0"),
    (["--time-shift", "nan"], "--time-shift must be a number from 0.01 to 100, got nan"),
    (["--time-shift", "abc"], "--time-shift must be a number from 0.01 to 100, got 'abc'"),
    (["--time-shift", 2, "--sampler", "sde"], "--time-shift applies to euler, heun, ab2, unipc, not sde"),
    (["--tail-compression", -0.5], "--tail-compression must be a number from 0 to 1, got -0.5"),
    (["--tail-compression", "inf"], "--tail-compression must be a number from 0 to 1, got inf"),
    (["--tail-compression", "x"], "--tail-compression must be a number from 0 to 1, got 'x'"),
    (["--tail-compression", 1, "--sampler", "dopri5"], "--tail-compression applies to euler, heun, ab2, unipc, not "
                                                       "dopri5"),
    (["--extrapolation", "warp"], "unknown extrapolation 'warp'; choose one of"),
    (["--backend", "magic"], "magic"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_arguments(package, tmp_path, args, message):
    out = tmp_path / "x.png"
    result = invoke(package, *args, "--steps", 1, "-q", "-o", out) if "--steps" not in args else \
        invoke(package, *args, "-q", "-o", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def bad_rope(src, dst):
    pkg = copy_package(src, dst)
    doc = json.loads((pkg / "manifest.json").read_text())
    doc["rope"]["method"] = "spiral"
    (pkg / "manifest.json").write_text(json.dumps(doc))
    return pkg


@pytest.mark.parametrize("make,message", [(corrupt_hash, "sha256"), (bad_json, "not valid JSON"),
                                          (bad_rope, "manifest.json is not usable"),
                                          (lambda src, dst: dst, "does not exist")])
def test_bad_packages(package, tmp_path, make, message):
    pkg = make(package, tmp_path / "pkg")
    result = invoke(pkg, "-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("out,message", [("missing-dir/x.png", "does not exist"), ("x.jpg", "must end in .png"),
                                         ("d.png", "is a folder")])
def test_unwritable_output(package, tmp_path, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    if out == "d.png":
        (tmp_path / out).mkdir()
    result = invoke(package, "--steps", 1, "-q", "-o", out)
    assert result.exit_code == 2 and message in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == (["d.png"] if out == "d.png" else [])


def test_write_failure_leaves_no_file(package, tmp_path, monkeypatch):
    import engines.pipeline as pipeline

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.os, "replace", fail)
    result = invoke(package, "-W", 32, "-H", 32, "--steps", 1, "--num", 2, "-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "No space left" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_api_and_cli_word_a_mistake_alike(package, tmp_path):
    """One check, one wording: the API names the parameter, the command line its flag."""
    import engines

    with engines.load(package, threads=1) as pipe:
        for kwargs, flag in ((dict(cfg=-1.0), "--cfg"), (dict(steps=0), "--steps")):
            with pytest.raises(GenerationError) as err:
                pipe.settings(**kwargs)
            api = str(err.value)
            name = next(iter(kwargs))
            assert api.startswith(f"{name} must")
            result = invoke(package, f"--{name}", kwargs[name], "-q", "-o", tmp_path / "x.png")
            assert result.stderr.strip() == f"fit-run: error: {flag}{api[len(name):]}"


def test_large_num_streams_and_an_interruption_leaves_complete_files(package, tmp_path, monkeypatch):
    """--num 10**8 starts at once, writes each image as its chunk finishes; Ctrl-C keeps only complete files."""
    import cli.run
    import engines.pipeline as pipeline

    original, calls = pipeline.Pipeline.generate_many, []

    def generate_many(self, requests, *args, **kwargs):
        calls.append(len(requests))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(pipeline.Pipeline, "generate_many", generate_many)
    result = invoke(package, "-W", 32, "-H", 32, "--steps", 1, "--num", 10 ** 8, "-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 130
    written = 2 * cli.run.CHUNK
    assert result.stderr.strip() == f"fit-run: interrupted; {written} complete image file(s) written"
    assert result.stdout.split() == [str(tmp_path / f"x-{i}.png") for i in range(1, written + 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"x-{i}.png" for i in range(1, written + 1))
    assert read_parameters(tmp_path / f"x-{written}.png")["seed"] == written - 1


def test_non_finite_latents_write_no_image(package, tmp_path, monkeypatch):
    from engines.backends.onnxruntime import OnnxRuntimeBackend

    original = OnnxRuntimeBackend._infer

    def overflowing(self, feed):
        return {name: value * np.float32(np.inf) for name, value in original(self, feed).items()}

    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", overflowing)
    result = invoke(package, "-W", 32, "-H", 32, "--steps", 2, "--class", 1, "-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite latents" in lines[0] and "cfg" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_onnx_runtime_failure_is_one_line(package, tmp_path, monkeypatch):
    """An allocation failure inside ONNX Runtime (e.g. sizes.max_tokens beyond the machine) is a BackendError."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from engines.backends.onnxruntime import OnnxRuntimeBackend

    def out_of_memory(self, *args):
        raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                               "while running MatMul node. Failed to allocate memory for requested buffer\nmore")

    monkeypatch.setattr(OnnxRuntimeBackend, "_activate", _activate_with_run(OnnxRuntimeBackend._activate,
                                                                            out_of_memory))
    result = invoke(package, "-W", 32, "-H", 32, "--steps", 1, "-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ONNX Runtime failed running transformer" in lines[0]
    assert "Failed to allocate memory" in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def _activate_with_run(activate, run):
    def wrapped(self):
        activate(self)
        session = self.session

        class Session:
            def __getattr__(self, name):
                return getattr(session, name)

        Session.run = run
        self.session = Session()
    return wrapped


def test_no_package_without_default_model_is_one_line(tmp_path, monkeypatch):
    import engines.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    result = invoke("-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "no default model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
