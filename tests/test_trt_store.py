"""The TensorRT engine store (engines/backends/tensorrt/store.py) without a GPU: sidecars record everything, a
mismatch names every difference, refusals carry the rebuild command, engine files must match their sidecars."""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.trt import build
from engines.atomic import atomic_write
from engines.backends.tensorrt.install import GpuInfo
from engines.backends.tensorrt.store import (EngineMismatchError, Sidecar, find_sidecars, read_sidecar, rebuild_command,
                                 select_engines, sidecar_mismatches, verify_engine_file, write_sidecar)
from engines.buckets import BucketProfile, parse_batch, parse_profiles, plan_profiles
from engines.package import load_manifest, sha256_file
from tests.trt_helpers import H100, own_package, package  # noqa: F401 (fixtures)


# ----------------------------------------------------------------------------------------------------------
# Sidecars
# ----------------------------------------------------------------------------------------------------------

def fake_engine(package: Path, precision="fp32", profiles="64,256", batch="1:2", stem=None, gpu=H100,
                version="10.15.1", onnx_sha=None, build_id="b1", created="2026-11-25T20:00:00Z") -> Path:
    """Write an engine file (random bytes) and its sidecar as build_engines would."""
    manifest = load_manifest(package, verify=False)
    stem = stem or f"transformer.{precision}"
    plan = package / "engines" / f"{stem}.plan"
    plan.parent.mkdir(exist_ok=True)
    atomic_write(plan, os.urandom(1000))
    batch_range = parse_batch(batch)
    side = Sidecar(engine=plan.name, engine_sha256=sha256_file(plan), engine_bytes=1000, onnx_file="transformer.onnx",
                   onnx_sha256=onnx_sha or manifest.files["transformer.onnx"].sha256, tensorrt_version=version,
                   gpu=gpu, precision=precision, strongly_typed=precision == "fp32",
                   profiles=list(plan_profiles(parse_profiles(profiles, 16), batch_range)),
                   batch=batch_range.to_dict(), inputs=[s.to_dict() for s in manifest.graph.inputs], build_id=build_id,
                   created=created)
    write_sidecar(plan.with_suffix(".json"), side)
    return plan.with_suffix(".json")


def test_sidecar_round_trip_records_everything(own_package):
    path = fake_engine(own_package)
    doc = json.loads(path.read_text())
    assert doc["format"] == "fit-tensorrt-engine"
    assert doc["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
    assert doc["tensorrt_version"] == "10.15.1" and doc["precision"] == "fp32"
    assert doc["onnx"]["sha256"] == load_manifest(own_package).files["transformer.onnx"].sha256
    assert doc["profiles"][1]["shapes"]["rope_cos"] == {"min": [2, 65, 16], "opt": [2, 256, 16], "max": [4, 256, 16]}
    side = read_sidecar(path)
    assert side.profiles[1] == BucketProfile.from_dict(doc["profiles"][1])
    assert side.gpu == H100
    assert sorted(p.name for p in own_package.joinpath("engines").iterdir()) == ["transformer.fp32.json",
                                                                                 "transformer.fp32.plan"]


def test_mismatches_name_every_difference(own_package):
    side = read_sidecar(fake_engine(own_package))
    sha = side.onnx_sha256
    assert sidecar_mismatches(side, onnx_sha256=sha, trt_version="10.15.1", gpu=H100, precision="fp32") == []
    # Same compute capability, other card: runs (was tuned elsewhere), not refused.
    assert sidecar_mismatches(side, onnx_sha256=sha, gpu=GpuInfo("NVIDIA H200", (9, 0))) == []
    reasons = sidecar_mismatches(side, onnx_sha256="0" * 64, trt_version="10.16.0", gpu=GpuInfo("NVIDIA A100", (8, 0)),
                                 precision="fp16")
    assert len(reasons) == 4
    assert "another transformer.onnx" in reasons[0]
    assert "TensorRT 10.15.1, this is TensorRT 10.16.0" in reasons[1]
    assert "sm_90" in reasons[2] and "sm_80" in reasons[2]
    assert "it is fp32, fp16 was asked for" in reasons[3]


def test_select_engines_refuses_with_the_rebuild_command(own_package):
    manifest = load_manifest(own_package, verify=False)
    with pytest.raises(EngineMismatchError, match="has no TensorRT engines; build them"):
        select_engines(own_package, manifest)
    fake_engine(own_package, profiles="256x256,64", batch="1:2")
    with pytest.raises(EngineMismatchError) as err:
        select_engines(own_package, manifest, trt_version="10.16.0", gpu=GpuInfo("NVIDIA A100", (8, 0)))
    message = str(err.value)
    assert "transformer.fp32.json cannot run here" in message
    assert "Rebuild it: fit-export build" in message
    assert "--profiles 64,256x256 --precision fp32 --batch 1:1:2" in message
    assert len(message.splitlines()) == 1
    selected = select_engines(own_package, manifest, trt_version="10.15.1", gpu=H100)
    assert [p.name for p, _ in selected] == ["transformer.fp32.json"]


def test_rebuild_command_is_a_valid_build_line(own_package):
    fake_engine(own_package, stem="transformer.fp32.t64", profiles="64", build_id="x")
    fake_engine(own_package, stem="transformer.fp32.t256", profiles="256x256", build_id="x")
    found = [s for _, s in find_sidecars(own_package)]
    command = rebuild_command(own_package, found)
    assert command.endswith("--engine-per-bucket")
    args = command.split()[3:]                                       # after "fit-export build PACKAGE"
    result = CliRunner().invoke(build, [str(own_package), *args, "--dry-run", "--skip-op-check"])
    assert result.exit_code == 0, result.output
    assert "engines/transformer.fp32.t256.plan" in result.output


def test_newest_matching_build_wins_and_other_onnx_is_refused(own_package):
    manifest = load_manifest(own_package, verify=False)
    fake_engine(own_package, precision="fp16", build_id="old", created="2026-01-01T00:00:00Z")
    fake_engine(own_package, precision="fp32", build_id="new", created="2026-06-01T00:00:00Z")
    assert select_engines(own_package, manifest)[0][1].precision == "fp32"
    assert select_engines(own_package, manifest, precision="fp16")[0][1].precision == "fp16"
    fake_engine(own_package, precision="fp32", onnx_sha="f" * 64, build_id="new")
    with pytest.raises(EngineMismatchError, match="built from another transformer.onnx"):
        select_engines(own_package, manifest, precision="fp32")


def test_engine_file_must_match_its_sidecar(own_package):
    path = fake_engine(own_package)
    side = read_sidecar(path)
    plan = path.with_suffix(".plan")
    verify_engine_file(plan, side)
    plan.write_bytes(plan.read_bytes()[:-1] + b"\x00")               # same size, other content
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        verify_engine_file(plan, side)
    verify_engine_file(plan, side, check_hash=False)
    plan.unlink()
    with pytest.raises(EngineMismatchError, match="is missing"):
        verify_engine_file(plan, side)


def test_corrupt_sidecar_is_refused(own_package):
    path = fake_engine(own_package)
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(EngineMismatchError, match="rebuild"):
        read_sidecar(path)
    del doc["gpu"]
    doc["format_version"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(EngineMismatchError, match="incomplete"):
        read_sidecar(path)
