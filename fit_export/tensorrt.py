"""TensorRT engines for a model package: one optimization profile per resolution bucket, built with Polygraphy.

    plan = plan_build("pkg", profiles="256x256,320x320,224x448", precision="fp16", batch="1:2")
    print(plan.describe())         # what --dry-run prints: exact profiles and engine file names, no TensorRT
    build_engines(plan)            # needs TensorRT + a GPU; writes pkg/engines/*.plan + sidecar *.json

Shapes: every dynamic input of the graph contract gets min/opt/max for ``batch`` and ``seq`` from
``engines.buckets`` (RoPE tables and mask included); fixed axes come from the manifest.

Precision: every network is parsed *strongly typed* (TensorRT 11 has no other mode): TensorRT keeps every tensor
in the dtype of the ONNX graph. When the requested precision is the graph's own (fp32 -> fp32, fp16 -> fp16) the
package graph is built as it is; fp16/bf16 from an fp32 package first converts the graph to a typed fp16/bf16
graph (``fit_export.typed``: LayerNorm, softmax, reductions and the t/RoPE/mask paths stay fp32), checks it on
ONNX Runtime against the fp32 graph (cosine >= 0.999) and builds that. int8 and fp8 are built from the package's
Q/DQ variant of that precision (``fit-export quantize --for tensorrt``, :mod:`fit_export.qdq`: explicit
quantization, already typed, its quality measured on the CPU when it was written); fp8 needs a GPU of compute
capability 8.9 or newer. The same code builds on TensorRT 10 and 11.

The timing cache (tactic timings, per TensorRT version and GPU) is loaded before and merged back after each
build, so rebuilding with other profiles or precisions is much faster. Engines are written atomically: plans
first, sidecars (the commit marker, ``engines.backends.tensorrt.store.Sidecar``) last, after removing the old sidecars
of the engines being replaced — an interrupted build never leaves a sidecar pointing at a different plan.
"""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


from engines.atomic import atomic_file
from engines.buckets import (BatchRange, Bucket, BucketProfile, parse_batch,
                             parse_profiles, plan_profiles)
from engines.backends.tensorrt.install import GpuInfo, gpu_info, require_tensorrt
from engines.backends.tensorrt.store import (ENGINE_DIR, ENGINE_SUFFIX, FP8_MIN_COMPUTE_CAPABILITY, PRECISIONS,
                                             QDQ_PRECISIONS, EngineMismatchError, Sidecar, engine_stem, qdq_variant,
                                             sidecar_path, write_sidecar)
from engines.cache import cache_dir
from engines.contract import TensorSpec
from engines.errors import BackendError
from engines.manifest import Manifest
from engines.package import load_manifest, sha256_file
from fit_export.trt_ops import UnsupportedByTensorRT, assert_supported
from fit_export.typed import TypedGraphError, check_feeds, typed_graph

_PACKAGE_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class BuildError(RuntimeError):
    """An engine cannot be planned or built; the message says what to change."""


# ----------------------------------------------------------------------------------------------------------
# Planning (no TensorRT)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineTarget:
    """One engine file to build and the profiles it holds, in profile order."""

    stem: str
    profiles: tuple[BucketProfile, ...]

    @property
    def engine_file(self) -> str:
        return f"{ENGINE_DIR}/{self.stem}{ENGINE_SUFFIX}"

    @property
    def sidecar_file(self) -> str:
        return f"{ENGINE_DIR}/{sidecar_path(Path(self.stem + ENGINE_SUFFIX)).name}"


@dataclass
class BuildPlan:
    package: Path
    manifest: Manifest
    onnx_file: str
    onnx_precision: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    batch: BatchRange
    buckets: tuple[Bucket, ...]
    static: bool
    engines: list[EngineTarget]
    timing_cache: Optional[Path] = None           # None: the per-TensorRT/GPU file under default_cache_dir()
    optimization_level: Optional[int] = None
    notes: list[str] = field(default_factory=list)
    variant: str = ""                             # the transformer variant built (onnx_file is its file)

    @property
    def converted(self) -> bool:
        """Whether the package's fp32 graph is converted to a typed fp16/bf16 graph before building."""
        return self.precision != self.onnx_precision

    @property
    def quantized(self) -> bool:
        """Whether the engine is built from a Q/DQ variant (int8, fp8)."""
        return self.precision in QDQ_PRECISIONS

    @property
    def granularity(self) -> int:
        return self.manifest.latent.pixel_granularity

    def timing_cache_for(self, trt_version: str, gpu: GpuInfo) -> Path:
        if self.timing_cache is not None:
            return self.timing_cache
        return default_cache_dir() / f"timing-trt{trt_version}-{gpu.sm}.cache"

    def to_dict(self) -> dict:
        return {
            "package": str(self.package), "onnx": self.onnx_file, "variant": self.variant,
            "onnx_precision": self.onnx_precision,
            "precision": self.precision, "strongly_typed": True, "converted": self.converted, "batch": self.batch.to_dict(),
            "static": self.static,
            "engines": [{"engine": e.engine_file, "sidecar": e.sidecar_file,
                         "profiles": [p.to_dict(self.inputs) for p in e.profiles]} for e in self.engines],
            "timing_cache": str(self.timing_cache) if self.timing_cache else
            str(default_cache_dir() / "timing-trt<version>-<sm>.cache"),
        }

    def describe(self) -> str:
        """Human-readable plan: what ``--dry-run`` prints."""
        b = self.batch
        graph = b.graph
        high = (self.manifest.transformer.variant(self.variant).quantization or {}).get("high_precision", "fp16") \
            if self.quantized else ""
        typing = (f"strongly typed: the Q/DQ variant {self.variant} (linear layers of the token stream in "
                  f"{self.precision}, the rest {high}; quality measured on the CPU when it was written)"
                  if self.quantized else "strongly typed (dtypes as exported)" if not self.converted else
                  f"strongly typed: {self.onnx_precision} graph converted to {self.precision} (LayerNorm, softmax, "
                  f"reductions and the t/RoPE/mask paths in fp32), checked on ONNX Runtime before building")
        lines = [
            f"package   {self.package}",
            f"onnx      {self.onnx_file} ({self.onnx_precision})",
            f"precision {self.precision}, {typing}",
            f"batch     images {b.images_min}..{b.images_max} (opt {b.images_opt})"
            + (", CFG doubles" if b.cfg else ", no CFG")
            + f" -> graph batch min {graph.min} opt {graph.opt} max {graph.max}",
            f"seq       {'static: padded to each bucket budget' if self.static else 'dynamic within each bucket'}",
            f"cache     {self.to_dict()['timing_cache']}",
        ]
        width = max(len(spec.name) for spec in self.inputs)
        for target in self.engines:
            lines.append(f"engine    {target.engine_file}  (sidecar {target.sidecar_file})")
            for index, profile in enumerate(target.profiles):
                bucket = profile.bucket
                sizes = " ".join(f"{w}x{h}" for w, h in bucket.sizes) or "any size"
                lines.append(f"  profile {index}: bucket {bucket.name} ({bucket.tokens} tokens; {sizes})"
                             + ("  [static: CUDA graph]" if profile.is_static else ""))
                for name, (lo, opt, hi) in profile.shapes(self.inputs).items():
                    lines.append(f"    {name:<{width}}  min {_shape(lo):<16} opt {_shape(opt):<16} max {_shape(hi)}")
        lines.extend(f"note      {n}" for n in self.notes)
        return "\n".join(lines)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def default_cache_dir() -> Path:
    return cache_dir("tensorrt")


def _manifest_buckets(manifest: Manifest) -> tuple[Bucket, ...]:
    """Default buckets: the package's declared ones, else its training and largest token budgets."""
    sizes = manifest.sizes
    declared = [Bucket(b.tokens, tuple(tuple(s) for s in b.sizes)) for b in sizes.buckets]
    if declared:
        return tuple(sorted(declared, key=lambda b: b.tokens))
    return tuple(Bucket(t) for t in sorted({sizes.train_token_budget, sizes.max_tokens}))


def plan_build(package, profiles: Optional[str] = None, precision: Optional[str] = None, batch: str = "1",
               cfg: bool = True, engine_per_bucket: bool = False, static: bool = False,
               timing_cache: Optional[str] = None, optimization_level: Optional[int] = None,
               manifest: Optional[Manifest] = None) -> BuildPlan:
    """Decide everything about a build without TensorRT. Raises BuildError/BucketError/PackageError on bad input."""
    package = Path(package)
    manifest = manifest if manifest is not None else load_manifest(package, verify=False)
    transformer = manifest.transformer
    onnx_precision = transformer.precision
    precision = precision or onnx_precision
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    variant = transformer.base
    if precision in QDQ_PRECISIONS:
        try:
            variant = qdq_variant(transformer, precision, package)
        except EngineMismatchError as err:
            raise BuildError(str(err)) from None
        onnx_precision = precision
    elif onnx_precision != "fp32" and precision != onnx_precision:
        raise BuildError(f"the package graph is {onnx_precision}; build --precision {onnx_precision}, or export an "
                         f"fp32 package to build {precision}")
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise BuildError(f"--optimization-level must be 0..5, got {optimization_level}")
    granularity = manifest.latent.pixel_granularity
    buckets = parse_profiles(profiles, granularity) if profiles else _manifest_buckets(manifest)
    batch_range = batch if isinstance(batch, BatchRange) else parse_batch(batch, cfg=cfg)
    planned = plan_profiles(buckets, batch_range, static=static)
    if engine_per_bucket:
        engines = [EngineTarget(engine_stem(precision, p.bucket.name), (p,)) for p in planned]
    else:
        engines = [EngineTarget(engine_stem(precision), planned)]
    inputs = manifest.graph.inputs
    plan = BuildPlan(package, manifest, variant.file, onnx_precision, precision, inputs, batch_range,
                     buckets, static, engines, Path(timing_cache) if timing_cache else None, optimization_level,
                     variant=variant.name)
    max_tokens = manifest.sizes.max_tokens
    beyond = [b.name for b in buckets if max_tokens and b.tokens > max_tokens]
    if beyond:
        plan.notes.append(f"bucket(s) {', '.join(beyond)} go beyond the package's declared sizes ({max_tokens} "
                          f"tokens): they serve RoPE extrapolation and validation; fit-run only asks for sizes "
                          f"the package declares")
    if static and not batch_range.graph.is_static:
        plan.notes.append("the batch range is not a single value, so no profile is fully static and CUDA graphs "
                          "stay off; use --batch N for CUDA graphs")
    return plan


def check_gpu_precision(precision: str, gpu: Optional[GpuInfo]) -> None:
    """BuildError when ``gpu`` cannot run ``precision`` (fp8 below compute capability 8.9)."""
    if precision == "fp8" and gpu is not None and tuple(gpu.compute_capability) < FP8_MIN_COMPUTE_CAPABILITY:
        need = ".".join(map(str, FP8_MIN_COMPUTE_CAPABILITY))
        raise BuildError(f"fp8 engines need a GPU of compute capability {need} or newer (Ada, Hopper, Blackwell); "
                         f"{gpu.name} is {gpu.sm}: build --precision int8 or fp16 instead")


# ----------------------------------------------------------------------------------------------------------
# Building (TensorRT)
# ----------------------------------------------------------------------------------------------------------

def _progress_monitor(trt, log: Callable[[str], None]):
    """A trt.IProgressMonitor that logs phase starts/ends and step counts (at most one line per second)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth = {}
            self.last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            log(f"{'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            now = time.monotonic()
            if now - self.last > 1.0:
                self.last = now
                log(f"{'  ' * self.depth.get(phase_name, 0)}{phase_name}: step {step + 1}")
            return True                                            # False would cancel the build

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def validation_feeds(plan: BuildPlan, seed: int = 0) -> list[dict]:
    """Graph feeds the typed conversion is checked on: the smallest bucket, a full row and a padded shorter row
    (cond and null label), with the package's RoPE tables."""
    bucket = plan.buckets[0]
    g = plan.granularity
    if bucket.sizes:
        width, height = bucket.sizes[0]
        grid = (height // g, width // g)
    else:
        side = max(1, int(bucket.tokens ** 0.5))
        grid = (side, bucket.tokens // side)
    return check_feeds(plan.manifest, grid, seed)


def build_engines(plan: BuildPlan, log: Callable[[str], None] = None, verify_onnx: bool = True) -> list[Path]:
    """Build every engine of ``plan`` into the package; returns the sidecar paths. Needs TensorRT and a GPU."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_gpu_precision(plan.precision, gpu_info())
    try:
        require_tensorrt("building TensorRT engines")
    except BackendError as err:
        raise BuildError(str(err)) from None
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    package, manifest = plan.package, plan.manifest
    onnx_path = package / plan.onnx_file
    if verify_onnx:
        load_manifest(package, verify=True)                       # the graph we build from is the one it lists
    onnx_sha = manifest.files[plan.onnx_file].sha256
    gpu = gpu_info()
    version = trt.__version__
    cache = plan.timing_cache_for(version, gpu)
    cache.parent.mkdir(parents=True, exist_ok=True)
    build_id = uuid.uuid4().hex
    log(f"TensorRT {version} on {gpu.name} ({gpu.sm}); timing cache {cache}")

    # Drop the sidecars of the engines being replaced first: a crash below leaves plans without sidecars
    # (ignored by the runtime), never a sidecar describing another plan.
    for target in plan.engines:
        (package / target.sidecar_file).unlink(missing_ok=True)
    (package / ENGINE_DIR).mkdir(parents=True, exist_ok=True)
    built: list[tuple[EngineTarget, Path, float]] = []
    with tempfile.TemporaryDirectory(prefix=".typed-", dir=package / ENGINE_DIR) as scratch:
        typed = None
        if plan.converted:
            log(f"converting {plan.onnx_file} to a typed {plan.precision} graph and checking it on ONNX Runtime")
            try:
                typed = typed_graph(onnx_path, plan.precision, Path(scratch) / f"transformer.{plan.precision}.onnx",
                                    validation_feeds(plan))
                assert_supported(typed.path, trt_version=version)
            except (TypedGraphError, UnsupportedByTensorRT) as err:
                raise BuildError(str(err)) from None
            log(f"typed graph: {typed.conversion.low_nodes} nodes in {plan.precision}, "
                f"{typed.conversion.fp32_nodes} in fp32; cosine {typed.cosine:.6f} against fp32 on ONNX Runtime")
        source = typed.path if typed is not None else onnx_path
        try:
            for target in plan.engines:
                network = NetworkFromOnnxPath(str(source), strongly_typed=True)
                profiles = []
                for bucket_profile in target.profiles:
                    profile = Profile()
                    for name, (lo, opt, hi) in bucket_profile.shapes(plan.inputs).items():
                        profile.add(name, lo, opt, hi)
                    profiles.append(profile)
                config = CreateConfig(
                    profiles=profiles,
                    load_timing_cache=str(cache) if cache.exists() else None,
                    builder_optimization_level=plan.optimization_level,
                    progress_monitor=_progress_monitor(trt, log))
                log(f"building {target.engine_file} ({len(profiles)} profile{'s' * (len(profiles) > 1)})")
                start = time.monotonic()
                engine_bytes = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache))()
                seconds = time.monotonic() - start
                path = package / target.engine_file
                with atomic_file(path) as f:
                    f.write(engine_bytes)                          # the IHostMemory buffer itself, no copy
                del engine_bytes
                built.append((target, path, seconds))
                log(f"wrote {target.engine_file} ({path.stat().st_size / 2**20:.1f} MiB, {seconds:.0f} s)")
        except PolygraphyException as err:
            for _, path, _ in built:
                path.unlink(missing_ok=True)
            raise BuildError(f"TensorRT could not build the engine: {err}") from None

    sidecars = []
    for target, path, seconds in built:
        side = Sidecar(engine=path.name, engine_sha256=sha256_file(path), engine_bytes=path.stat().st_size,
                       onnx_file=plan.onnx_file, onnx_sha256=onnx_sha, tensorrt_version=version, gpu=gpu,
                       precision=plan.precision, strongly_typed=True, profiles=list(target.profiles),
                       batch=plan.batch.to_dict(), inputs=[s.to_dict() for s in plan.inputs],
                       build_seconds=round(seconds, 1), build_id=build_id,
                       typed_graph=typed.to_dict() if typed is not None else {}, variant=plan.variant)
        write_sidecar(package / target.sidecar_file, side)
        sidecars.append(package / target.sidecar_file)
    return sidecars
