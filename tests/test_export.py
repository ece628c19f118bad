"""ONNX export, model packages and validation on the tiny FiTv2 (every weight random)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from cli.export import main as fit_export
from engines.errors import PackageError
from engines.manifest import FORMAT_VERSION, Manifest
from engines.metrics import cosine
from engines.package import load_manifest
from fit.config import preset
from fit.model import FiT
from fit_export import ExportError, export_package, validate_package
from fit_export.onnx_export import TransformerGraph, graph_contract
from fit_export.package import describe_sizes

ROOT = Path(__file__).resolve().parents[1]


def random_tiny(seed: int) -> FiT:
    """fitv2-tiny with every weight random (the zero-initialised output layers would hide any difference)."""
    torch.manual_seed(seed)
    model = FiT(preset("fitv2-tiny")).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return random_tiny(0)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def package(model, tmp_path_factory):
    return export_package(model, None, tmp_path_factory.mktemp("pkg") / "tiny", include_weights=True)


def feed(model, grids, rng, pad_value=0.0, precision="fp32"):
    """A graph feed of the model's contract for [(h, w)] grids padded to the longest; padding tokens hold
    ``pad_value``."""
    contract = graph_contract(model, precision)
    tokens = [rng.standard_normal((h * w, contract.token_dim)) for h, w in grids]
    t, labels = rng.uniform(0, 1, len(grids)), rng.integers(0, 11, len(grids))
    f = contract.padded_batch(grids, model.config.rope_settings(), labels, tokens).feed(t)
    f["x"][f["mask"] == 0] = pad_value
    return f


def torch_out(model, f):
    with torch.no_grad():
        args = [torch.from_numpy(np.asarray(f[k], np.float32 if k == "x" else None))
                for k in ("x", "t", "y", "rope_cos", "rope_sin", "mask")]
        return TransformerGraph(model)(*args).numpy()


# ------------------------------------------------------------------------------------------------------------
# The package and the graph contract
# ------------------------------------------------------------------------------------------------------------

def test_manifest_describes_the_package(package, model):
    doc = load_manifest(package, verify=True).to_dict()
    assert doc["format_version"] == FORMAT_VERSION
    assert set(doc["files"]) == {"transformer.onnx", "weights.safetensors"}
    assert doc["model"]["config"] == model.config.to_dict()
    assert doc["model"]["token_dim"] == 16 and doc["model"]["null_class"] == 10
    assert [i["name"] for i in doc["transformer"]["inputs"]] == ["x", "t", "y", "rope_cos", "rope_sin", "mask"]
    assert doc["transformer"]["inputs"][0]["shape"] == ["batch", "seq", 16]
    assert doc["rope"]["ori_max_pe_len"] == 16 and "vision-yarn" in doc["rope"]["methods"]
    assert doc["sizes"]["buckets"][0]["tokens"] == 256 and [256, 256] in doc["sizes"]["buckets"][0]["sizes"]
    assert doc["latent"] == {"space": "sd-vae", "downsample": 8, "scaling_factor": 0.18215, "pixel_granularity": 16}
    assert not [p for p in package.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"


def test_graph_is_standard_onnx_with_symbolic_batch_and_seq(package):
    proto = onnx.load(str(package / "transformer.onnx"))
    onnx.checker.check_model(proto)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} or all(o.domain in ("", "ai.onnx")
                                                                           for o in proto.opset_import if o.version)
    assert {n.domain for n in proto.graph.node} <= {""}
    assert not proto.functions
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    assert all(i.data_type not in complex_types for i in proto.graph.initializer)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in list(proto.graph.input) + list(proto.graph.output)}
    assert dims == {"x": ["batch", "seq", 16], "t": ["batch"], "y": ["batch"], "rope_cos": ["batch", "seq", 16],
                    "rope_sin": ["batch", "seq", 16], "mask": ["batch", "seq"], "v": ["batch", "seq", 16]}
    elem = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert elem["y"] == onnx.TensorProto.INT64 and elem["mask"] == onnx.TensorProto.FLOAT


def test_graph_runs_at_sizes_other_than_the_trace(package, model):
    """The trace used batch 2 and 15 tokens; other batches and sequence lengths must give the torch numbers."""
    session = ort.InferenceSession(str(package / "transformer.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for grids in ([(1, 7)], [(5, 10), (3, 3), (4, 4)], [(2, 2)] * 5, [(16, 16)]):
        f = feed(model, grids, rng)
        out, ref = session.run(None, f)[0], torch_out(model, f)
        assert out.shape == ref.shape == (len(grids), max(h * w for h, w in grids), 16)
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_padding_is_finite_zero_and_ignored(package, model):
    session = ort.InferenceSession(str(package / "transformer.onnx"), providers=["CPUExecutionProvider"])
    padded = feed(model, [(6, 6), (3, 5)], np.random.default_rng(2), pad_value=3e4)
    alone = {k: v[1:2, :15] for k, v in padded.items() if k not in ("t", "y")}
    alone.update(t=padded["t"][1:], y=padded["y"][1:])
    out = session.run(None, padded)[0]
    assert np.isfinite(out).all()
    assert not out[1, 15:].any(), "padding tokens must output exactly zero"
    np.testing.assert_allclose(out[1, :15], session.run(None, alone)[0][0], atol=1e-5)


def test_validate_passes_and_writes_a_report(package, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(fit_export, ["validate", str(package), "--method", "yarn", "--method", "vision-ntk",
                                             "--e2e-steps", "3", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output and "PASSED" in result.output
    doc = json.loads(report.read_text())
    names = [c["name"] for c in doc["cases"]]
    assert doc["passed"] and len(names) == 5 + 2 + 2
    assert any(n.startswith("cfg batch") for n in names) and any(n.startswith("padded mixed") for n in names)
    assert all(c["max_abs"] <= 1e-4 * c["scale"] for c in doc["cases"])
    assert doc["end_to_end"][0]["psnr_db"] == "inf" or doc["end_to_end"][0]["psnr_db"] >= 40


def test_validate_fails_against_a_different_model(package):
    """The validator must be able to fail: compare against other weights."""
    report = validate_package(package, model=random_tiny(1), methods=["normal"], e2e_steps=2)
    assert not report.passed
    assert all(not c.passed for c in report.cases) and not report.end_to_end[0].passed
    assert "FAIL" in report.table()


def test_fp16_export_keeps_norms_and_softmax_in_fp32(model, checkpoint, package, tmp_path):
    out = tmp_path / "fp16"
    shutil.copytree(package, out)                                        # an existing package: needs --force
    args = ["onnx", "--config", "fitv2-tiny", "--checkpoint", str(checkpoint), "--out", str(out),
            "--precision", "fp16", "--sampler", "ab2", "--time-shift", "6", "--tail-compression", "0.5"]
    assert CliRunner().invoke(fit_export, args).exit_code == 2
    result = CliRunner().invoke(fit_export, args + ["--force"])
    assert result.exit_code == 0, result.output
    doc = load_manifest(out).to_dict()
    assert doc["transformer"]["precision"] == "fp16" and "weights.safetensors" not in doc["files"]
    assert doc["reference"]["checkpoint"] == "tiny.safetensors"
    assert (doc["sampler"]["method"], doc["sampler"]["time_shift"], doc["sampler"]["tail_compression"]) == \
        ("ab2", 6.0, 0.5)                                                  # the generation defaults recorded

    proto = onnx.load(str(out / "transformer.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info)}
    assert types["x"] == types["v"] == onnx.TensorProto.FLOAT16
    assert types["t"] == types["rope_cos"] == types["mask"] == onnx.TensorProto.FLOAT
    guarded = [n for n in proto.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    producers = {o: n for n in proto.graph.node for o in n.output}
    assert guarded
    for node in guarded:
        source = producers[node.input[0]]
        assert source.op_type == "Cast" and source.attribute[0].i == onnx.TensorProto.FLOAT, node.name

    session = ort.InferenceSession(str(out / "transformer.onnx"), providers=["CPUExecutionProvider"])
    f = feed(model, [(16, 16), (12, 21), (5, 7)], np.random.default_rng(3), pad_value=100.0, precision="fp16")
    v = session.run(None, f)[0]
    assert v.dtype == np.float16 and np.isfinite(v).all()
    assert cosine(v, torch_out(model, f)) >= 0.999


# ------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_checkpoints(model, tmp_path_factory):
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("bad")
    state = dict(model.state_dict())
    state.pop("final_layer.linear.bias")
    state["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    save_file(state, str(root / "mismatch.safetensors"))
    (root / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nonsense")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "junk.pt").write_bytes(b"\x07" + np.random.default_rng(0).bytes(4095))     # random bytes, .pt suffix
    (root / "a_file").write_text("x")
    (root / "not_a_package").mkdir()
    (root / "not_a_package" / "notes.txt").write_text("keep me")
    return root


@pytest.mark.parametrize("args, message", [
    (["--config", "fitv2-nope", "--random-weights"], "unknown preset 'fitv2-nope'"),
    (["--config", "fitv2-tiny"], "pass --checkpoint"),
    (["--config", "fitv2-tiny", "--checkpoint", "{root}/missing.safetensors"], "does not exist"),
    (["--config", "fitv2-tiny", "--checkpoint", "{root}/mismatch.safetensors"],
     "missing keys: final_layer.linear.bias; unexpected keys: blocks.9.attn.qkv.weight"),
    (["--config", "fitv2-tiny", "--checkpoint", "{root}/corrupt.safetensors"], "cannot read checkpoint"),
    (["--config", "fitv2-tiny", "--checkpoint", "{root}/corrupt.pt"], "cannot read checkpoint"),
    (["--config", "fitv2-tiny", "--checkpoint", "{root}/junk.pt"],
     "junk.pt is not a checkpoint: neither a PyTorch file (zip or pickle) nor safetensors"),
    (["--config", "fitv2-tiny", "--random-weights", "--sizes", "250x256"], "off the pixel grid"),
    (["--config", "fitv2-tiny", "--random-weights", "--tail-compression", "2"],
     "tail_compression must be a number from 0 to 1, got 2.0"),
    (["--config", "fitv2-tiny", "--random-weights", "--sampler", "sde", "--tail-compression", "0.5"],
     "tail_compression applies to euler, heun, ab2, unipc, not sde, which keeps its own schedule"),
])
def test_bad_export_input(args, message, bad_checkpoints, tmp_path):
    out = tmp_path / "pkg"
    args = [a.format(root=bad_checkpoints) for a in args]
    result = CliRunner().invoke(fit_export, ["onnx", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and "weights_only" not in result.output
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


@pytest.mark.parametrize("out, message", [
    ("{root}/a_file/pkg", "cannot write to"),
    ("{root}/a_file", "already exists"),
    ("{root}/not_a_package", "already exists"),
])
def test_bad_output_location(out, message, bad_checkpoints):
    before = sorted(p.name for p in bad_checkpoints.iterdir())
    out = out.format(root=bad_checkpoints)
    result = CliRunner().invoke(fit_export, ["onnx", "--config", "fitv2-tiny", "--random-weights", "--out", out])
    assert result.exit_code == 2 and message in result.stderr, result.output
    result = CliRunner().invoke(fit_export, ["onnx", "--config", "fitv2-tiny", "--random-weights", "--out", out,
                                             "--force"])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in bad_checkpoints.iterdir()) == before
    assert (bad_checkpoints / "not_a_package" / "notes.txt").read_text() == "keep me"


def test_failed_export_leaves_no_partial_package(model, tmp_path, monkeypatch):
    import fit_export.package as package_module

    def broken(model, path, precision, opset):
        Path(path).write_bytes(b"half a graph")
        raise ExportError("simulated failure")

    monkeypatch.setattr(package_module, "export_transformer", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_package(model, None, tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_preset_yaml_exports_the_model_fit_train_reads(tmp_path):
    """A YAML of ``preset:`` + params overrides (what fit-train accepts) means the same model to fit-export."""
    from fit.train import load_run_config

    config = tmp_path / "T.yaml"
    config.write_text("preset: fitv2-tiny\ndiffusion: {network_config: {params: {num_classes: 3, depth: 1}}}\n")
    result = CliRunner().invoke(fit_export, ["onnx", "--config", str(config), "--random-weights", "--out",
                                             str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    exported = load_manifest(tmp_path / "pkg").model.config
    assert exported == load_run_config(str(config))[0].to_dict()
    assert (exported["hidden_size"], exported["depth"], exported["num_classes"]) == (64, 1, 3)


def test_force_replaces_atomically_and_a_killed_replacement_is_undone(package, tmp_path, monkeypatch):
    """--force swaps the packages in one step; with the two-rename fallback, a kill between the renames is put
    right by the next run of a tool, and hidden leftovers of dead exports are removed."""
    import engines
    import engines.atomic as atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "pkg"
    shutil.copytree(package, out)
    stale = tmp_path / f".pkg.tmp-{dead.pid}-0123abcd"
    stale.mkdir()
    (stale / "transformer.onnx").write_bytes(b"half")
    running = tmp_path / ".pkg.tmp-1-0123abcd"              # PID 1 is always running: work in progress, kept
    running.mkdir()
    before = load_manifest(out).created
    result = CliRunner().invoke(fit_export, ["onnx", "--config", "fitv2-tiny", "--random-weights", "--out",
                                             str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert load_manifest(out).created != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "pkg"]

    # The fallback (no atomic exchange) killed between its two renames leaves only .pkg.old-PID ...
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename, calls = atomic.os.rename, []

    def killed_after_the_first_rename(src, dst):         # like SIGKILL: no rename runs after the first
        calls.append(dst)
        if len(calls) >= 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", killed_after_the_first_rename)
    new = atomic.temporary_folder(out)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_folder(new, out)
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    aside = tmp_path / f".pkg.old-{os.getpid()}"
    assert not out.exists() and aside.is_dir()
    # ... which the next run of a tool puts back once that process is gone (its new folder is removed).
    real_rename(aside, tmp_path / f".pkg.old-{dead.pid}")
    real_rename(new, tmp_path / new.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    with engines.load(out, threads=1) as pipe:
        assert pipe.generate(32, 32, steps=1, output="array").shape == (32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "pkg"]


def test_disk_full_during_export_is_one_line_and_leaves_nothing(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 96 * 1024))        # leave less room than the tiny graph needs
    result = CliRunner().invoke(fit_export, ["onnx", "--config", "fitv2-tiny", "--random-weights", "--out",
                                             str(small_disk / "pkg")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the package" in lines[0] and "No space left" in lines[0], lines
    assert "Traceback" not in result.output
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("command", [["ort-optimize"], ["build", "--dry-run"]])
def test_truncated_graph_with_a_matching_hash_is_one_line(package, tmp_path, command):
    from engines.package import file_entries, write_manifest

    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    graph = broken / "transformer.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    manifest = load_manifest(broken)
    write_manifest(broken, manifest.replace(files=dict(manifest.files, **file_entries(broken, ["transformer.onnx"]))))
    result = CliRunner().invoke(fit_export, [*command, str(broken)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "transformer.onnx is not a readable ONNX model" in lines[0], result.output
    assert "Traceback" not in result.output


def test_corrupt_package_is_refused(package, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    data = bytearray((broken / "transformer.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "transformer.onnx").write_bytes(bytes(data))
    result = CliRunner().invoke(fit_export, ["validate", str(broken)])
    assert result.exit_code == 2 and "sha256 of transformer.onnx does not match" in result.stderr
    (broken / "manifest.json").write_text("{")
    result = CliRunner().invoke(fit_export, ["validate", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in result.stderr
    result = CliRunner().invoke(fit_export, ["validate", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_validate_needs_the_right_weights(tmp_path, checkpoint):
    pkg = tmp_path / "from_ckpt"
    export_package("fitv2-tiny", str(checkpoint), pkg)                   # no weights stored in the package
    result = CliRunner().invoke(fit_export, ["validate", str(pkg)])
    assert result.exit_code == 2 and "--checkpoint" in result.stderr
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file(random_tiny(5).state_dict(), str(other))
    result = CliRunner().invoke(fit_export, ["validate", str(pkg), "--checkpoint", str(other)])
    assert result.exit_code == 2 and "is not the one" in result.stderr


# ------------------------------------------------------------------------------------------------------------
# Manifest schema and sizes (no export)
# ------------------------------------------------------------------------------------------------------------

def test_manifest_schema_rejects_unknown_versions(package):
    doc = json.loads((package / "manifest.json").read_text())
    Manifest.from_dict(doc)
    with pytest.raises(PackageError, match="format version 2 is not supported"):
        Manifest.from_dict(dict(doc, format_version=2))
    with pytest.raises(PackageError, match="not a FiT model package"):
        Manifest.from_dict(dict(doc, format="other"))
    with pytest.raises(PackageError, match="graph contract"):
        Manifest.from_dict(dict(doc, transformer=dict(doc["transformer"], outputs=[{"name": "out"}])))
    with pytest.raises(PackageError, match="relative"):
        Manifest.from_dict(dict(doc, files=dict(doc["files"], **{"../x": {"sha256": "0", "bytes": 1}})))


def test_manifest_module_is_torch_free():
    code = "import sys, engines.manifest; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_sizes_go_to_the_smallest_bucket_that_holds_them():
    cfg = preset("fitv2-tiny")
    section = describe_sizes(cfg, None, [(256, 256), (320, 192), (512, 512), (256, 128)], [256, 1024]).to_dict()
    assert section["buckets"] == [{"tokens": 256, "sizes": [[256, 256], [320, 192], [256, 128]]},
                                  {"tokens": 1024, "sizes": [[512, 512]]}]
    assert section["max_tokens"] == 1024 and section["default"] == [256, 256]
    assert describe_sizes(cfg, None, [(512, 512)]).buckets[-1].tokens == 1024
    with pytest.raises(ExportError, match="more than the largest bucket"):
        describe_sizes(cfg, None, [(512, 512)], [256])


def test_external_data_when_over_the_limit(model, tmp_path, monkeypatch):
    """Packages over protobuf's 2 GB put weights in transformer.onnx.data (limit lowered to exercise it)."""
    import fit_export.typed as typed

    monkeypatch.setattr(typed, "EXTERNAL_DATA_LIMIT", 1024)
    package = export_package(model, None, tmp_path / "pkg")
    doc = load_manifest(package, verify=True).to_dict()
    assert doc["transformer"]["external_data"] == "transformer.onnx.data"
    assert set(doc["files"]) == {"transformer.onnx", "transformer.onnx.data"}
    assert (package / "transformer.onnx.data").stat().st_size > (package / "transformer.onnx").stat().st_size
    session = ort.InferenceSession(str(package / "transformer.onnx"), providers=["CPUExecutionProvider"])
    f = feed(model, [(4, 5)], np.random.default_rng(4))
    np.testing.assert_allclose(session.run(None, f)[0], torch_out(model, f), atol=1e-5)
