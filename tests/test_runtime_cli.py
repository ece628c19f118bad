"""fit-run: images, metadata and determinism; every bad input is one line on stderr, exit 2, no file written."""
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from cli.run import main  # noqa: E402
from engines.pipeline import read_parameters  # noqa: E402
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
    (["-W", "abc"], "not a valid integer"),
    (["-W", 50, "-H", 32], "nearest valid sizes: 48x32, 64x32"),
    (["-W", 4096, "-H", 4096], "maximum"),
    (["--class", "zebra"], "unknown class"),
    (["--class", 99], "outside"),
    (["--steps", 0], "--steps"),
    (["--cfg", -1], "--cfg"),
    (["--sampler", "rk4"], "rk4"),
    (["--extrapolation", "warp"], "warp"),
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


def test_no_package_without_default_model_is_one_line(tmp_path, monkeypatch):
    import engines.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    result = invoke("-q", "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "no default model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
