"""The engine store: TensorRT engine files in a package, their sidecars, and which engines may run here.

An engine is only valid for the ONNX graph, TensorRT version and GPU it was built with, so every engine file
``engines/<stem>.plan`` has a sidecar ``engines/<stem>.json`` (written last, after the plan, as the commit
marker of a build) recording them. This module owns that sidecar schema: the builder (``fit_export.tensorrt``)
writes it with :func:`write_sidecar`; :func:`select_engines` picks the newest build that matches the package,
the installed TensorRT and the GPU, and otherwise refuses with a message that names each difference and the
``fit-export build`` line that rebuilds it. Needs neither TensorRT nor a GPU.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from engines.atomic import atomic_write
from engines.backends.tensorrt.install import GpuInfo
from engines.buckets import BucketProfile
from engines.contract import TensorSpec
from engines.errors import BackendError
from engines.manifest import Manifest
from engines.package import sha256_file

SIDECAR_FORMAT = "fit-tensorrt-engine"
SIDECAR_VERSION = 1
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".plan"
TYPED_PRECISIONS = ("fp32", "fp16", "bf16")      # built from transformer.file (as it is, or a typed conversion)
QDQ_PRECISIONS = ("int8", "fp8")                  # built from the package's Q/DQ variant of that precision
QDQ_HIGH_PRECISIONS = ("fp16", "bf16")            # what a Q/DQ variant computes in outside its quantized products
PRECISIONS = TYPED_PRECISIONS + QDQ_PRECISIONS
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)               # Ada, Hopper and later have fp8 tensor cores


class EngineMismatchError(BackendError):
    """An engine does not fit this package, TensorRT or GPU; the message names the differences and the rebuild."""


def engine_stem(precision: str, bucket_name: Optional[str] = None) -> str:
    """``transformer.fp16`` (one engine, every bucket a profile) or ``transformer.fp16.t256`` (per bucket)."""
    return f"transformer.{precision}" + (f".{bucket_name}" if bucket_name else "")


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_suffix(".json")


@dataclass
class Sidecar:
    """What an engine was built from and for. ``profiles`` are in the engine's profile order."""

    engine: str                      # plan file name, relative to the package's engines/ directory
    engine_sha256: str
    engine_bytes: int
    onnx_file: str
    onnx_sha256: str
    tensorrt_version: str
    gpu: GpuInfo
    precision: str
    strongly_typed: bool
    profiles: list[BucketProfile]
    batch: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    build_seconds: Optional[float] = None
    created: str = ""
    build_id: str = ""               # shared by the engines of one per-bucket build
    typed_graph: dict = field(default_factory=dict)   # fp16/bf16 from an fp32 graph: the conversion and its check
    variant: str = ""                # the transformer variant built (its file is onnx_file): trt-int8, trt-fp8, fp32

    def to_dict(self) -> dict:
        specs = [TensorSpec.from_dict(s) for s in self.inputs]
        return {
            "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
            "engine": {"file": self.engine, "sha256": self.engine_sha256, "bytes": self.engine_bytes},
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256},
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu.to_dict(),
            "precision": self.precision, "strongly_typed": self.strongly_typed,
            "batch": self.batch,
            "profiles": [p.to_dict(specs) for p in self.profiles],
            "inputs": self.inputs,
            "build_seconds": self.build_seconds,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_id": self.build_id,
            "typed_graph": self.typed_graph,
            "variant": self.variant,
        }

    @classmethod
    def from_dict(cls, doc: dict, source: str = "sidecar") -> "Sidecar":
        if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
            raise EngineMismatchError(f"{source} is not a TensorRT engine sidecar ({SIDECAR_FORMAT})")
        if doc.get("format_version") != SIDECAR_VERSION:
            raise EngineMismatchError(f"{source} has sidecar version {doc.get('format_version')!r}, this code reads "
                                      f"{SIDECAR_VERSION}; rebuild the engine with fit-export build")
        try:
            gpu = doc["gpu"]
            return cls(
                engine=doc["engine"]["file"], engine_sha256=doc["engine"]["sha256"],
                engine_bytes=int(doc["engine"]["bytes"]), onnx_file=doc["onnx"]["file"],
                onnx_sha256=doc["onnx"]["sha256"], tensorrt_version=str(doc["tensorrt_version"]),
                gpu=GpuInfo(str(gpu["name"]), tuple(int(v) for v in gpu["compute_capability"])),
                precision=doc["precision"], strongly_typed=bool(doc["strongly_typed"]),
                profiles=[BucketProfile.from_dict(p) for p in doc["profiles"]], batch=doc.get("batch", {}),
                inputs=doc.get("inputs", []), build_seconds=doc.get("build_seconds"),
                created=doc.get("created", ""), build_id=doc.get("build_id", ""),
                typed_graph=doc.get("typed_graph", {}), variant=doc.get("variant", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise EngineMismatchError(f"{source} is incomplete ({err!r}); rebuild the engine with fit-export build"
                                      ) from None


def write_sidecar(path: Path, sidecar: Sidecar) -> None:
    atomic_write(path, json.dumps(sidecar.to_dict(), indent=2) + "\n")


def read_sidecar(path: Path) -> Sidecar:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as err:
        raise EngineMismatchError(f"cannot read engine sidecar {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineMismatchError(f"engine sidecar {path} is not valid JSON ({err}); rebuild the engine") from None
    return Sidecar.from_dict(doc, str(path))


def find_sidecars(package: Path) -> list[tuple[Path, Sidecar]]:
    """Every engine sidecar under ``package/engines`` (sorted by name); unreadable ones raise."""
    directory = Path(package) / ENGINE_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict) and doc.get("format") == SIDECAR_FORMAT:
            found.append((path, Sidecar.from_dict(doc, str(path))))
    return found


def sidecar_mismatches(sidecar: Sidecar, *, onnx_sha256: str, trt_version: Optional[str] = None,
                       gpu: Optional[GpuInfo] = None, precision: Optional[str] = None) -> list[str]:
    """Reasons an engine cannot run here (empty when it can). A check is skipped when its value is None.

    TensorRT plans are tied to the exact TensorRT version and the GPU's compute capability; a different GPU
    model of the same compute capability runs but was tuned for another card, which is not refused.
    """
    reasons = []
    if not onnx_sha256:
        reasons.append(f"it was built from {sidecar.onnx_file}, which the package no longer lists")
    elif sidecar.onnx_sha256 != onnx_sha256:
        reasons.append(f"it was built from another {sidecar.onnx_file} (sha256 {sidecar.onnx_sha256[:12]}…, the "
                       f"package has {onnx_sha256[:12]}…)")
    if trt_version is not None and sidecar.tensorrt_version != trt_version:
        reasons.append(f"it was built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {trt_version}")
    if gpu is not None and tuple(sidecar.gpu.compute_capability) != tuple(gpu.compute_capability):
        reasons.append(f"it was built for {sidecar.gpu.name} ({sidecar.gpu.sm}), this GPU is {gpu.name} ({gpu.sm})")
    if precision is not None and sidecar.precision != precision:
        reasons.append(f"it is {sidecar.precision}, {precision} was asked for")
    return reasons


def qdq_variant(transformer, precision: str, package="PACKAGE"):
    """The Q/DQ variant (``runtime: tensorrt``) an int8/fp8 engine is built from. Raises EngineMismatchError, with
    the command that writes one, when the package has none (an ONNX Runtime int8 variant is not one: TensorRT
    builds neither MatMulInteger nor asymmetric QDQ graphs)."""
    found = next((v for v in transformer.variants if v.runtime == "tensorrt" and v.precision == precision), None)
    if found is not None:
        return found
    make = f"fit-export quantize {package} --out DIR --for tensorrt --format {precision}"
    other = next((v for v in transformer.variants if v.precision == precision), None)
    if other is not None:
        raise EngineMismatchError(f"the package's {precision} variant {other.name!r} is not a Q/DQ graph for TensorRT "
                                  f"(it is made for {other.runtime or 'ONNX Runtime and OpenVINO'}); write one "
                                  f"with: {make}")
    raise EngineMismatchError(f"the package has no {precision} Q/DQ variant for TensorRT; write one with: {make}")


def graph_sha256(manifest: Manifest, name: str) -> str:
    """The sha256 the manifest lists for the graph ``name`` an engine was built from ("" when it lists none)."""
    entry = manifest.files.get(name)
    return entry.sha256 if entry is not None else ""


def rebuild_command(package: Path, sidecars: Sequence[Sidecar]) -> str:
    """The ``fit-export build`` line that rebuilds engines like these for the current setup."""
    first = sidecars[0]
    entries = []
    for side in sidecars:
        for profile in side.profiles:
            bucket = profile.bucket
            entries.extend(f"{w}x{h}" for w, h in bucket.sizes) if bucket.sizes else entries.append(str(bucket.tokens))
    images = first.batch.get("images") or [1, 1, 1]
    batch = f"{images[0]}:{images[1]}:{images[2]}"
    parts = [f"fit-export build {package}", f"--profiles {','.join(dict.fromkeys(entries))}",
             f"--precision {first.precision}", f"--batch {batch}"]
    if first.batch.get("cfg") is False:
        parts.append("--no-cfg")
    if len(sidecars) > 1:
        parts.append("--engine-per-bucket")
    if all(p.seq.is_static for s in sidecars for p in s.profiles):
        parts.append("--static")
    return " ".join(parts)


def select_engines(package: Path, manifest: Manifest, *, precision: Optional[str] = None,
                   trt_version: Optional[str] = None, gpu: Optional[GpuInfo] = None) -> list[tuple[Path, Sidecar]]:
    """The engines of one build in ``package`` that match the package, TensorRT, GPU and precision.

    Prefers the newest matching build. Raises EngineMismatchError when there are none or none match, naming
    why and the command that rebuilds them.
    """
    package = Path(package)
    found = find_sidecars(package)
    if not found:
        raise EngineMismatchError(f"package {package} has no TensorRT engines; build them on this machine with "
                                  f"`fit-export build {package} --profiles ...` (see docs/tensorrt.md)")
    builds: dict[str, list[tuple[Path, Sidecar]]] = {}
    for path, side in found:
        builds.setdefault(side.build_id or path.name, []).append((path, side))
    rejected = []
    for build in sorted(builds.values(), key=lambda b: b[0][1].created, reverse=True):
        reasons = sorted({r for _, side in build for r in sidecar_mismatches(
            side, onnx_sha256=graph_sha256(manifest, side.onnx_file), trt_version=trt_version, gpu=gpu,
            precision=precision)})
        if not reasons:
            return build
        rejected.append((build, reasons))
    build, reasons = rejected[0]
    names = ", ".join(p.name for p, _ in build)
    raise EngineMismatchError(f"TensorRT engine {names} cannot run here: {'; '.join(reasons)}. Rebuild it: "
                              f"{rebuild_command(package, [s for _, s in build])}")


def verify_engine_file(path: Path, sidecar: Sidecar, check_hash: bool = True) -> None:
    if not path.is_file():
        raise EngineMismatchError(f"engine {path} is missing (its sidecar exists); rebuild with fit-export build")
    if path.stat().st_size != sidecar.engine_bytes or (check_hash and sha256_file(path) != sidecar.engine_sha256):
        raise EngineMismatchError(f"engine {path} does not match its sidecar (truncated or replaced); "
                                  f"rebuild with fit-export build")
