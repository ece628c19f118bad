"""The typed manifest (engines/manifest.py), the graph contract (engines/contract.py), the generated field reference
and JavaScript schema (engines/schema.py) and reading packages (engines/package.py): round trip, one-line errors,
hashing only the files a runtime opens."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import engines
import engines.manifest as mf
import engines.package as package_io
import engines.schema as schema
from engines.contract import GraphContract
from engines.errors import PackageError
from engines.manifest import Manifest
from engines.package import load_manifest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "engines" / "default_model"


def raw(path=DEFAULT) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def test_round_trip_is_exact():
    doc = raw()
    assert Manifest.from_dict(doc).to_dict() == doc


def test_defaults_are_the_writers():
    doc = raw()
    for section, key in (("guidance", "scale_pow"), ("sampler", "atol"), ("rope", "online"), ("model", "learn_sigma")):
        del doc[section][key]
    m = Manifest.from_dict(doc)
    assert (m.guidance.scale_pow, m.sampler.atol, m.rope.online, m.model.learn_sigma) == (0.0, 1e-6, False, False)


@pytest.mark.parametrize("change,message", [
    (lambda d: d["model"].pop("patch_size"), "model lacks patch_size"),
    (lambda d: d["sizes"].update(max_tokens="many"), "sizes.max_tokens: expected int"),
    (lambda d: d["latent"].update(space="hsv"), "latent.space must be one of"),
    (lambda d: d["transformer"]["outputs"][0].update(name="out"), "do not follow the graph contract"),
    (lambda d: d["vae_decoder"]["inputs"][0].update(name="z"), "do not follow the VAE decoder contract"),
    (lambda d: d["files"].pop("vae_decoder.onnx"), "vae_decoder.onnx is referenced but not listed"),
    (lambda d: d["files"].update({"../x": {"sha256": "0", "bytes": 1}}), "must be relative to the package"),
    (lambda d: d["model"].update(class_names=["one"]), "1 names for 8 classes"),
    (lambda d: d.update(format_version=2), "format version 2 is not supported"),
])
def test_mistakes_are_one_line(change, message):
    doc = raw()
    change(doc)
    with pytest.raises(PackageError, match=message) as err:
        Manifest.from_dict(doc)
    assert "\n" not in str(err.value)


def test_unknown_fields_are_ignored():
    doc = raw()
    doc["guidance"]["a_later_field"] = 1
    doc["extra_section"] = {}
    assert Manifest.from_dict(doc).guidance.default_scale == doc["guidance"]["default_scale"]


def test_package_format_doc_is_generated_from_the_code():
    text = (ROOT / "docs" / "package-format.md").read_text()
    block = text.split(schema.DOC_BEGIN)[1].split(schema.DOC_END)[0].strip()
    assert block == schema.field_reference(), "run: python -m engines.schema --update docs/package-format.md"
    for cls in (mf.ModelSection, mf.TransformerSection, mf.SizesSection):
        for field in dataclasses.fields(cls):
            assert f".{field.name}`" in block


def test_javascript_schema_is_generated_from_the_code():
    assert (ROOT / schema.JS_MODULE).read_text() == schema.js_module(), \
        f"run: python -m engines.schema --js {schema.JS_MODULE}"


def test_json_schema_follows_the_reader():
    """A field the schema calls required is refused when left out; one with a default reads as that default."""
    sections = schema.json_schema()["sections"]
    latent = {f["name"]: f for f in sections["LatentSection"]}
    assert all(latent[name].get("required") for name in ("downsample", "scaling_factor", "pixel_granularity"))
    fields = {f["name"]: f for f in sections["Manifest"]}
    assert fields["vae_decoder"] == {"name": "vae_decoder", "type": "VaeDecoderSection", "nullable": True,
                                     "default": None}
    assert fields["files"]["values"] == "FileEntry"
    assert {f["name"]: f for f in sections["TransformerSection"]}["variants"]["items"] == "VariantSection"
    for name, section in (("model", "ModelSection"), ("sampler", "SamplerSection"), ("rope", "RopeSection")):
        for field in sections[section]:
            doc = raw()
            del doc[name][field["name"]]
            if field.get("required"):
                with pytest.raises(PackageError, match=f"manifest.{name} lacks {field['name']}"):
                    Manifest.from_dict(doc)
            else:
                value = getattr(getattr(Manifest.from_dict(doc), name), field["name"])
                assert value == (tuple(field["default"]) if isinstance(field["default"], list) else field["default"])


def test_graph_contract():
    c = load_manifest(DEFAULT).graph
    assert c.INPUT_NAMES == tuple(s.name for s in c.inputs) == ("x", "t", "y", "rope_cos", "rope_sin", "mask")
    assert c.axes()["rope_cos"] == {0: "batch", 1: "seq"} and c.axes()["y"] == {0: "batch"}
    assert c.shapes(2, 7)["x"] == (2, 7, c.token_dim)
    feed = c.example_feed(batch=2, seq=3)
    assert list(feed) == list(c.INPUT_NAMES) and feed["y"].dtype == np.int64 and feed["x"].dtype == np.float32
    half = GraphContract(c.token_dim, c.out_token_dim, c.head_dim, "fp16")
    assert half.feed(**feed)["x"].dtype == np.float16 and half.feed(**feed)["t"].dtype == np.float32
    with pytest.raises(ValueError, match="missing"):
        c.feed(x=feed["x"])
    with engines.load(DEFAULT, threads=1) as pipe:
        assert tuple(pipe.backend.inputs) == c.INPUT_NAMES
        assert pipe.backend.infer(feed)["v"].shape == (2, 3, c.out_token_dim)


def test_vae_decoder_contract_is_what_the_package_ships():
    manifest = load_manifest(DEFAULT)
    vae = manifest.vae_graph
    assert [s.to_dict() for s in vae.inputs] == raw()["vae_decoder"]["inputs"]
    assert [s.to_dict() for s in vae.outputs] == raw()["vae_decoder"]["outputs"]
    with engines.load(DEFAULT, threads=1) as pipe:
        assert tuple(pipe.vae.inputs) == vae.INPUT_NAMES and tuple(pipe.vae.outputs) == vae.OUTPUT_NAMES
        latent = np.zeros((1, manifest.model.latent_channels, 3, 5), np.float32)
        assert pipe.vae.infer(vae.feed(latent=latent))["image"].shape == vae.image_shape(1, 3, 5)
    doc = raw()
    doc["vae_decoder"] = None
    doc["files"].pop("vae_decoder.onnx")
    assert Manifest.from_dict(doc).vae_graph is None


def test_rope_section_gives_the_models_settings():
    rope = load_manifest(DEFAULT).rope
    settings = rope.settings()
    assert (settings.head_dim, settings.theta, settings.method, settings.decouple, settings.ori_max_pe_len) == \
        (rope.head_dim, rope.theta, rope.method, rope.decouple, rope.ori_max_pe_len)
    with pytest.raises(ValueError, match="unknown RoPE method"):
        dataclasses.replace(rope, method="spiral").settings()


def test_runtime_hashes_only_the_files_it_opens(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    shutil.copytree(DEFAULT, package)
    doc = raw(package)
    (package / "weights.safetensors").write_bytes(b"not the weights")        # listed, never opened by a runtime
    doc["files"]["weights.safetensors"] = {"sha256": "0" * 64, "bytes": 1}
    (package / "manifest.json").write_text(json.dumps(doc))
    calls = []
    real = package_io.sha256_file
    monkeypatch.setattr(package_io, "sha256_file", lambda path, *a: calls.append(Path(path).name) or real(path, *a))
    package_io.clear_hash_cache()
    with engines.load(package, threads=1):
        pass
    with engines.load(package, threads=1):                                   # the same files: hashed once
        pass
    # the tuned copy runs and reads its weights from transformer.onnx; the int8 variant is never opened
    assert sorted(calls) == ["transformer.onnx", "transformer.ort.onnx", "vae_decoder.onnx"]
    with pytest.raises(PackageError, match="weights.safetensors"):
        load_manifest(package, verify=True)                                  # a full check still sees it
    calls.clear()
    package_io.clear_hash_cache()
    with engines.load(package, threads=1, verify=False):                     # verify=False: no hashing at all
        assert calls == []
    (package / "vae_decoder.onnx").write_bytes(b"x" * doc["files"]["vae_decoder.onnx"]["bytes"])
    package_io.clear_hash_cache()      # as a new process (a same-size rewrite within one clock tick keeps the key)
    with pytest.raises(PackageError, match="sha256 of vae_decoder.onnx"):
        engines.load(package, threads=1)
