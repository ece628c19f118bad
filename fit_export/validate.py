"""Numerical validation of a model package: what ``fit-run`` runs against the PyTorch reference.

The runtime under test is ``engines.pipeline`` on any backend (ONNX Runtime per execution provider, TensorRT);
the reference is ``fit.sampling.sample`` with the same weights and the same noise. Two checks:

* Network evaluations: feeds of the graph contract run by a PyTorch runner and a runner around the pipeline's
  backend (both Polygraphy runners, compared side by side): every declared bucket size (batch 1); every RoPE
  extrapolation method on a grid 1.5x beyond the training side; a classifier-free-guidance batch (cond and null
  labels); a padded mixed-resolution batch (padding must stay exactly zero and finite). A case the backend has no
  shape for (TensorRT engines built for other buckets) is reported as skipped with the reason.
* End to end: ``Pipeline.sample_latents`` and ``fit.sampling.sample`` from the same noise (Euler, the package's
  default guidance, two sizes in one padded batch). At every network evaluation of the pipeline the reference
  network runs on the same feed (per-step cosine); the final latents are decoded by the package's decoder on
  both sides and compared as uint8 images (PSNR).

The reference can instead be another variant of the same package on ONNX Runtime (``reference_variant``, e.g.
``fp32`` for an int8 variant): the same cases and the same end-to-end loop, with that variant's pipeline in place
of PyTorch (no checkpoint needed; ``fit-export quantize`` records its results this way).

Pass rules by the precision that runs (:func:`tolerances`): fp32 max abs error <= 1e-4 x output scale and
end-to-end PSNR >= 40 dB; fp16/bf16 cosine >= 0.999 per case and per step (PSNR reported); OpenVINO bf16 cosine
>= 0.9999 and PSNR >= 40 dB; int8 and fp8 (ONNX Runtime's int8 variants, TensorRT's Q/DQ engines) cosine >= 0.99
and PSNR >= 35 dB. No NaN/Inf anywhere.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import engines
from engines.atomic import recover_folder
from engines.backends import Backend
from engines.buckets import BucketError, choose_profile
from engines.manifest import Manifest
from engines.metrics import cosine, psnr
from engines.package import load_manifest, verify_files
from engines.pipeline import Pipeline
from fit.config import FiTConfig
from fit.loading import CheckpointError, load_model, load_state_dict_strict, read_state_dict
from fit.model import FiT
from fit.sampling import sample
from fit_export.onnx_export import TransformerGraph, graph_contract
from fit_export.typed import MIN_COSINE

FP32_MAX_ABS = 1e-4            # x output scale
LOW_PRECISION_MIN_COSINE = MIN_COSINE
MIN_PSNR_DB = 40.0
INT8_MIN_COSINE = 0.99         # per case and per step: random-feed cases include extreme padded batches
INT8_MIN_PSNR_DB = 35.0
BACKENDS = ("onnxruntime", "tensorrt", "openvino")
# (backend, precision) -> tolerances tighter than the precision's own: OpenVINO's bf16 keeps fp32 accumulation
_BACKEND_TOLERANCES = {("openvino", "bf16"): {"min_cosine": 0.9999, "min_psnr_db": MIN_PSNR_DB}}


class ValidationError(ValueError):
    """The package cannot be validated as asked (no weights, wrong checkpoint, unusable provider)."""


#################################################################################
#                                    Results                                    #
#################################################################################

@dataclass
class CaseResult:
    name: str
    provider: str
    batch: int
    seq: int
    max_abs: float
    max_rel: float
    cosine: float
    scale: float
    passed: bool
    note: str = ""


@dataclass
class EndToEndResult:
    provider: str
    steps: int
    cfg_scale: float
    sizes: list
    space: str
    psnr_db: float
    threshold_db: Optional[float]
    passed: bool
    min_step_cosine: float = 1.0
    evaluations: int = 0


@dataclass
class ValidationReport:
    package: str
    precision: str
    providers: list
    cases: list = field(default_factory=list)
    end_to_end: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases) and all(e.passed for e in self.end_to_end)

    backend: str = "onnxruntime"
    reference: str = "pytorch"

    def to_dict(self) -> dict:
        """JSON-ready; an infinite PSNR (identical outputs) is written as the string "inf"."""
        return _finite_json({"package": self.package, "precision": self.precision, "providers": self.providers,
                "reference": self.reference, "passed": self.passed,
                "tolerances": tolerances(self.precision, self.backend),
                "cases": [asdict(c) for c in self.cases], "end_to_end": [asdict(e) for e in self.end_to_end]})

    def write_json(self, path) -> None:
        from engines.atomic import atomic_write

        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        head = f"{'case':<44} {'provider':<9} {'batch':>5} {'seq':>5} {'max abs':>10} {'max rel':>10} " \
               f"{'cosine':>10}  result"
        lines = [head, "-" * len(head)]
        for c in self.cases:
            lines.append(f"{c.name:<44} {c.provider:<9} {c.batch:>5} {c.seq:>5} {c.max_abs:>10.3e} "
                         f"{c.max_rel:>10.3e} {c.cosine:>10.7f}  {'ok' if c.passed else 'FAIL'}"
                         + (f" ({c.note})" if c.note else ""))
        for e in self.end_to_end:
            need = f">= {e.threshold_db:g} dB" if e.threshold_db is not None else "reported only"
            lines.append(f"end-to-end {e.steps} Euler steps, cfg {e.cfg_scale:g} ({e.provider}): PSNR "
                         f"{e.psnr_db:.2f} dB on {e.space} ({need}); per-step cosine min {e.min_step_cosine:.7f} "
                         f"over {e.evaluations} evaluations  {'ok' if e.passed else 'FAIL'}")
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {sum(c.passed for c in self.cases)}/"
                     f"{len(self.cases)} cases")
        return "\n".join(lines)


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def tolerances(precision: str, backend: Optional[str] = None) -> dict:
    """Pass rule of a precision (on a backend): max abs relative to the output scale, or a minimum cosine per case
    and per step; the minimum end-to-end PSNR (None: reported only)."""
    if (backend, precision) in _BACKEND_TOLERANCES:
        return dict(_BACKEND_TOLERANCES[backend, precision])
    if precision in ("int8", "fp8"):
        return {"min_cosine": INT8_MIN_COSINE, "min_psnr_db": INT8_MIN_PSNR_DB}
    if precision != "fp32":
        return {"min_cosine": LOW_PRECISION_MIN_COSINE, "min_psnr_db": None}
    return {"max_abs_relative_to_scale": FP32_MAX_ABS, "min_psnr_db": MIN_PSNR_DB}


def compare(out: np.ndarray, ref: np.ndarray) -> dict:
    """max abs, max rel (|d| / (|ref| + 1e-3 scale)), cosine and output scale of ``out`` against ``ref``."""
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return {"max_abs": float(diff.max()) if diff.size else 0.0, "cosine": cosine(out, ref), "scale": scale,
            "max_rel": float((diff / (np.abs(ref) + 1e-3 * scale + 1e-30)).max()) if diff.size else 0.0}


#################################################################################
#                                 Runners and cases                             #
#################################################################################

def torch_runner(model: FiT):
    """A Polygraphy runner for the PyTorch reference on the graph contract (Polygraphy's PytRunner assumes CUDA)."""
    from polygraphy.backend.base import BaseRunner

    contract = graph_contract(model)

    class TorchRunner(BaseRunner):
        def __init__(self):
            super().__init__(name="pytorch", prefix="pytorch-runner")
            self.graph = TransformerGraph(model).eval()

        def get_input_metadata_impl(self):
            return contract.polygraphy_metadata()

        def infer_impl(self, feed_dict):
            args = [torch.from_numpy(np.asarray(feed_dict[name], dtype=np.int64 if name == "y" else np.float32))
                    for name in contract.INPUT_NAMES]
            start = time.perf_counter()
            with torch.no_grad():
                out = OrderedDict(v=self.graph(*args).numpy())
            self.inference_time = time.perf_counter() - start
            return out

    return TorchRunner()


def backend_runner(backend: Backend, name: str):
    """A Polygraphy runner around an active :class:`engines.backends.Backend` (any runtime the pipeline drives)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class BackendRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name, prefix="backend-runner")

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for info in backend.inputs.values():
                meta.add(info.name, info.dtype, list(info.shape))
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = OrderedDict(backend.infer(dict(feed_dict)))
            self.inference_time = time.perf_counter() - start
            return out

    return BackendRunner()


def _feed(contract, rope, grids, labels, rng, t=None) -> dict:
    """One graph feed for grids [(h, w)] with RoPE settings (one or per row), padded to the longest; padding
    tokens hold arbitrary finite values, which the graph must ignore."""
    tokens = [rng.standard_normal((h * w, contract.token_dim)) for h, w in grids]
    t = rng.uniform(0.05, 0.95, len(grids)) if t is None else t
    feed = contract.padded_batch(grids, rope, labels, tokens).feed(t)
    padding = feed["mask"] == 0
    feed["x"][padding] = rng.uniform(-50, 50, (int(padding.sum()), contract.token_dim))
    return feed


def build_cases(manifest: Manifest, cfg: FiTConfig, methods: Optional[Sequence[str]] = None, seed: int = 0):
    """[(name, feed)] for every declared size, every RoPE method, a CFG batch and a padded mixed batch."""
    rng = np.random.default_rng(seed)
    contract = manifest.graph
    g = manifest.latent.pixel_granularity
    null = manifest.model.null_class
    labels = lambda k: [int(v) for v in rng.integers(0, manifest.model.num_classes, k)]
    own = cfg.rope_settings()
    cases = []
    all_sizes = []
    for bucket in manifest.sizes.buckets:
        for width, height in bucket.sizes:
            all_sizes.append((height // g, width // g))
            cases.append((f"bucket {bucket.tokens} {width}x{height}",
                          _feed(contract, own, [(height // g, width // g)], labels(1), rng)))
    side = cfg.train_grid_side
    extrapolated = (side + side // 2, side)                              # 1.5x taller than training
    for method in methods or manifest.rope.methods:
        settings = cfg.rope_settings(method)
        cases.append((f"rope {method} {extrapolated[1] * g}x{extrapolated[0] * g}",
                      _feed(contract, settings, [extrapolated], labels(1), rng)))
    default = tuple(v // g for v in reversed(manifest.sizes.default))
    cond = _feed(contract, own, [default, default], labels(1) + [null], rng, t=[0.5, 0.5])
    cond["x"][1] = cond["x"][0]
    cases.append((f"cfg batch {default[1] * g}x{default[0] * g}", cond))
    mixed = sorted(set(all_sizes), key=lambda hw: -hw[0] * hw[1])[:3]
    mixed = mixed + [(max(1, mixed[-1][0] // 2), max(1, mixed[-1][1] // 2))]
    cases.append(("padded mixed " + ",".join(f"{w * g}x{h * g}" for h, w in mixed),
                  _feed(contract, own, mixed, labels(len(mixed)), rng)))
    return cases


#################################################################################
#                                   Validation                                  #
#################################################################################

def reference_model(package: Path, manifest: Manifest, checkpoint=None, model: Optional[FiT] = None) -> FiT:
    """The PyTorch model the package was exported from: given, from ``checkpoint``, or from the package weights."""
    if model is not None:
        return model.float().eval()
    cfg = FiTConfig.from_dict(manifest.model.config)
    reference = manifest.reference
    if checkpoint is not None:
        expected = reference.checkpoint_sha256
        if expected and expected != _sha256(checkpoint):
            raise ValidationError(f"checkpoint {checkpoint} is not the one package {package} was exported from "
                                  f"({reference.checkpoint})")
        return load_model(cfg, checkpoint)
    if reference.weights:
        verify_files(package, manifest, [reference.weights])
        model = FiT(cfg)
        load_state_dict_strict(model, read_state_dict(str(package / reference.weights)), "package weights")
        return model.eval()
    raise ValidationError(f"package {package} stores no PyTorch weights; pass --checkpoint with the checkpoint "
                          f"it was exported from (or export with --include-weights)")


def _sha256(path) -> str:
    from engines.package import sha256_file
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    return sha256_file(path)


def available_providers(requested: Optional[Sequence[str]] = None) -> list[str]:
    """ONNX Runtime providers to validate: CPU always; CUDA too when onnxruntime-gpu has it."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = list(requested) if requested else ["CPUExecutionProvider"] + (
        ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else [])
    missing = [p for p in wanted if p not in have or p not in _DEVICES]
    if missing:
        raise ValidationError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                              f"(available: {', '.join(p for p in have if p in _DEVICES)})")
    return wanted


_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}


def _targets(backend: str, providers, precision) -> list[tuple[str, dict]]:
    """(short provider name, engines.load options) of every runtime configuration to validate."""
    chosen = {"precision": precision} if precision else {}
    if backend == "onnxruntime":
        return [(p.replace("ExecutionProvider", "").lower(), {"device": _DEVICES[p], **chosen})
                for p in available_providers(providers)]
    if backend in ("tensorrt", "openvino"):
        return [(backend, chosen)]
    raise ValidationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def validate_package(package, checkpoint=None, model: Optional[FiT] = None, backend: str = "onnxruntime",
                     providers: Optional[Sequence[str]] = None, precision: Optional[str] = None,
                     methods: Optional[Sequence[str]] = None, e2e_steps: int = 10, seed: int = 0,
                     reference_variant: Optional[str] = None) -> ValidationReport:
    """Validate a package's runtime (``backend``) against its PyTorch reference; see the module docstring.

    The reference comes from ``model``, ``checkpoint`` or the package's ``weights.safetensors``, in that order;
    with ``reference_variant`` it is that variant of the package on ONNX Runtime CPU instead (no weights needed).
    providers: ONNX Runtime providers (default CPU, plus CUDA when available); precision: the transformer variant
    or precision to validate (engines.load's ``precision``; TensorRT: which engines; OpenVINO: f32 or bf16).
    Returns a :class:`ValidationReport` (``.passed``, ``.table()``, ``.write_json(path)``).
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    package = Path(package)
    recover_folder(package)
    manifest = load_manifest(package)
    targets = _targets(backend, providers, precision)
    if reference_variant is None:
        ref = reference_model(package, manifest, checkpoint, model)
        cfg, ref_pipe = ref.config, None
    else:
        ref, cfg = None, FiTConfig.from_dict(manifest.model.config)
        ref_pipe = engines.load(package, verify=True, precision=reference_variant, device="cpu")
    cases = build_cases(manifest, cfg, methods, seed)
    report = ValidationReport(str(package), manifest.transformer.precision, [t for t, _ in targets],
                              backend=backend, reference=reference_variant or "pytorch")
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):         # restores the caller's severity (Polygraphy 0.49+)
            for short, options in targets:
                with engines.load(package, backend=backend, verify=True, **options) as pipe:
                    precision_run = pipe.backend.precision or manifest.transformer.precision
                    report.precision = precision_run
                    limits = tolerances(precision_run, backend)
                    runnable, skipped = _split_by_shape(pipe.backend, cases)
                    reference = torch_runner(ref) if ref_pipe is None else backend_runner(ref_pipe.backend,
                                                                                          reference_variant)
                    results = Comparator.run([reference, backend_runner(pipe.backend, short)],
                                             data_loader=[feed for _, feed in runnable]) if runnable else None
                    for index, (name, feed) in enumerate(runnable):
                        ref_out = results[0][1][index]["v"]
                        out = results[1][1][index]["v"]
                        report.cases.append(_judge(name, short, feed, np.asarray(out), np.asarray(ref_out), limits))
                    for name, feed, reason in skipped:
                        b, n = feed["mask"].shape
                        report.cases.append(CaseResult(name, short, b, n, math.nan, math.nan, math.nan, math.nan, True,
                                                       f"skipped: {reason}"))
                    report.end_to_end.append(end_to_end(ref, pipe, short, e2e_steps, limits, seed, ref_pipe))
    finally:
        if ref_pipe is not None:
            ref_pipe.close()
    return report


def _split_by_shape(backend: Backend, cases):
    """Cases the backend can run, and (name, feed, reason) of those it has no shape for (TensorRT profiles)."""
    ranges = backend.profile_ranges() if hasattr(backend, "profile_ranges") else None
    if ranges is None:
        return list(cases), []
    runnable, skipped = [], []
    for name, feed in cases:
        b, n = feed["mask"].shape
        try:
            choose_profile(ranges, b, n)
            runnable.append((name, feed))
        except BucketError:
            skipped.append((name, feed, f"no profile holds batch {b} x {n} tokens; build one that does"))
    return runnable, skipped


def _judge(name, provider, feed, out, ref, limits: dict) -> CaseResult:
    m = compare(out, ref)
    notes = []
    finite = bool(np.isfinite(out).all())
    if not finite:
        notes.append("NaN/Inf in output")
    padding = feed["mask"] == 0
    if padding.any() and np.any(out[padding] != 0):
        notes.append("padding output not zero")
    if "min_cosine" in limits:
        ok = m["cosine"] >= limits["min_cosine"]
    else:
        ok = m["max_abs"] <= limits["max_abs_relative_to_scale"] * max(m["scale"], 1e-12)
    if not ok:
        notes.append("over tolerance")
    b, n = feed["mask"].shape
    return CaseResult(name, provider, b, n, m["max_abs"], m["max_rel"], m["cosine"], m["scale"],
                      ok and not notes, "; ".join(notes))


def end_to_end(model: Optional[FiT], pipe: Pipeline, provider: str, steps: int, limits: dict, seed: int = 0,
               reference_pipe: Optional[Pipeline] = None) -> EndToEndResult:
    """The pipeline (numpy sampler + backend + decoder) against ``fit.sampling.sample`` from the same noise, or
    against ``reference_pipe`` (another variant of the package) when given; ``limits`` from :func:`tolerances`."""
    m = pipe.manifest
    sizes = [tuple(m.sizes.default), tuple(m.sizes.buckets[0].sizes[-1])]
    labels = (1 % pipe.num_classes, 2 % pipe.num_classes)
    jobs = [pipe.prepare(w, h, label, seed + i, sampler="euler", steps=steps, time_shift=1.0,         # even steps
                         tail_compression=0.0)[0]
            for i, ((w, h), label) in enumerate(zip(sizes, labels))]
    requests = [job.request for job in jobs]
    settings = jobs[0].settings
    reference = torch_runner(model) if reference_pipe is None else backend_runner(reference_pipe.backend, "reference")
    d = pipe.downsample

    def expected(noise):
        if reference_pipe is not None:
            return reference_pipe.sample_latents(jobs, noise=noise)
        return [z.numpy() for z in sample(model, [(r.height // d, r.width // d, r.label) for r in requests],
                                          sampler=settings.sampler, cfg_scale=settings.cfg,
                                          scale_pow=settings.scale_pow, noise=[torch.from_numpy(n) for n in noise])]

    with reference:
        result = trajectory(pipe, jobs, lambda feed: reference.infer(feed)["v"], expected)
    threshold = limits["min_psnr_db"]
    passed = result.finite and (result.psnr_db >= threshold if threshold is not None else True) and \
        result.min_step_cosine >= limits.get("min_cosine", -1.0)
    return EndToEndResult(provider, steps, settings.cfg, [list(s) for s in sizes], "images", result.psnr_db,
                          threshold, passed, result.min_step_cosine, len(result.step_cosines))


@dataclass(frozen=True)
class Trajectory:
    step_cosines: list          # per network evaluation, over the real tokens of the whole call
    psnr_db: float              # decoded uint8 images against the reference's, peak 255
    finite: bool                # the final latents have no NaN/Inf

    @property
    def min_step_cosine(self) -> float:
        return min(self.step_cosines) if self.step_cosines else 1.0


def trajectory(pipe: Pipeline, jobs, reference_infer, reference_latents) -> Trajectory:
    """Sample ``jobs`` on ``pipe`` from their seeds' noise with ``reference_infer(feed) -> v`` run on every feed of
    the loop (per-step cosine), then compare the decoded images with those of ``reference_latents(noise)`` (the
    reference's latents from the same noise)."""
    noise = [pipe.noise(job.request) for job in jobs]
    cosines: list[float] = []

    def compare_step(feed: dict, out: dict) -> None:            # the reference on the very same feed
        real = feed["mask"] != 0
        ref = np.asarray(reference_infer(feed), np.float32)
        cosines.append(compare(np.asarray(out["v"], np.float32)[real], ref[real])["cosine"])

    with pipe.tap(compare_step):
        latents = pipe.sample_latents(jobs, noise=noise)
    images = np.concatenate([pipe.decode(z).ravel() for z in latents])
    ref_images = np.concatenate([pipe.decode(z).ravel() for z in reference_latents(noise)])
    return Trajectory(cosines, psnr(images, ref_images, 255.0), all(np.isfinite(z).all() for z in latents))
