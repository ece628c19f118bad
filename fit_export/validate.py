"""Numerical validation of a model package: ONNX Runtime against the PyTorch reference.

Cases (each a feed of the graph contract, run through Polygraphy's Comparator by a PyTorch runner and an
ONNX Runtime runner per execution provider):
  * every declared bucket size, batch 1 (the sizes of a bucket are its aspect ratios);
  * every RoPE extrapolation method on a grid 1.5x beyond the training side (tables from ``engines.rope``);
  * a classifier-free-guidance batch (cond and null labels, 2B rows);
  * a padded mixed-resolution batch (padding must stay exactly zero and finite).
Pass rules: fp32 max abs error <= 1e-4 x output scale (max |reference|); fp16 cosine >= 0.999; no NaN/Inf.
End to end: the same noise through ``fit.sampling.sample`` and through the same Euler loop driven by the ONNX
graph -> PSNR >= 40 dB for fp32 (on images when the package has a VAE decoder, else on latents).
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch

from engines.manifest import PackageError, load_manifest
from engines.rope import rope_tables
from fit.config import FiTConfig
from fit.flow import SamplerSettings, guide, integrate
from fit.loading import CheckpointError, load_model, load_state_dict_strict, read_state_dict
from fit.model import FiT
from fit.sampling import PaddedBatch, Request, request_noise, sample
from fit_export.onnx_export import TransformerGraph

FP32_MAX_ABS = 1e-4            # x output scale
FP16_MIN_COSINE = 0.999
MIN_PSNR_DB = 40.0


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

    def to_dict(self) -> dict:
        """JSON-ready; an infinite PSNR (identical outputs) is written as the string "inf"."""
        return _finite_json({"package": self.package, "precision": self.precision, "providers": self.providers,
                "passed": self.passed, "tolerances": tolerances(self.precision),
                "cases": [asdict(c) for c in self.cases], "end_to_end": [asdict(e) for e in self.end_to_end]})

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

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
                         f"{e.psnr_db:.2f} dB on {e.space} ({need})  {'ok' if e.passed else 'FAIL'}")
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


def tolerances(precision: str) -> dict:
    if precision == "fp16":
        return {"min_cosine": FP16_MIN_COSINE, "min_psnr_db": None}
    return {"max_abs_relative_to_scale": FP32_MAX_ABS, "min_psnr_db": MIN_PSNR_DB}


def compare(out: np.ndarray, ref: np.ndarray) -> dict:
    """max abs, max rel (|d| / (|ref| + 1e-3 scale)), cosine and output scale of ``out`` against ``ref``."""
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    norm = float(np.linalg.norm(out) * np.linalg.norm(ref))
    if norm > 0:
        cosine = float((out * ref).sum() / norm)
    else:
        cosine = 1.0 if not np.any(out) and not np.any(ref) else 0.0
    return {"max_abs": float(diff.max()) if diff.size else 0.0, "cosine": cosine, "scale": scale,
            "max_rel": float((diff / (np.abs(ref) + 1e-3 * scale + 1e-30)).max()) if diff.size else 0.0}


def psnr(out: np.ndarray, ref: np.ndarray, peak: float) -> float:
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


#################################################################################
#                                 Runners and cases                             #
#################################################################################

def _torch_runner(model: FiT, token_dim: int, head_dim: int):
    """A Polygraphy runner for the PyTorch reference (Polygraphy's own PytRunner assumes CUDA)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchRunner(BaseRunner):
        def __init__(self):
            super().__init__(name="pytorch", prefix="pytorch-runner")
            self.graph = TransformerGraph(model).eval()

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for name, dtype, shape in (("x", np.float32, ["batch", "seq", token_dim]), ("t", np.float32, ["batch"]),
                                       ("y", np.int64, ["batch"]),
                                       ("rope_cos", np.float32, ["batch", "seq", head_dim]),
                                       ("rope_sin", np.float32, ["batch", "seq", head_dim]),
                                       ("mask", np.float32, ["batch", "seq"])):
                meta.add(name, dtype, shape)
            return meta

        def infer_impl(self, feed_dict):
            with torch.no_grad():
                out = self.graph(*(torch.from_numpy(np.asarray(v)) for v in feed_dict.values()))
            return OrderedDict(v=out.numpy())

    return TorchRunner()


def _session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def _feed(settings_for, grids, labels, model_dtype: str, token_dim: int, rng, t=None) -> OrderedDict:
    """One graph feed for grids [(h, w)] with per-row RoPE settings, padded to the longest."""
    n = max(h * w for h, w in grids)
    b = len(grids)
    x = np.zeros((b, n, token_dim), np.float32)
    mask = np.zeros((b, n), np.float32)
    cos = np.zeros((b, n, settings_for(0).head_dim), np.float32)
    sin = np.zeros_like(cos)
    for i, (h, w) in enumerate(grids):
        length = h * w
        x[i, :length] = rng.standard_normal((length, token_dim))
        # Padding holds arbitrary finite values: the graph must ignore them.
        x[i, length:] = rng.uniform(-50, 50, (n - length, token_dim))
        mask[i, :length] = 1
        cos[i, :length], sin[i, :length] = rope_tables(settings_for(i), h, w)
    t = rng.uniform(0.05, 0.95, b).astype(np.float32) if t is None else np.asarray(t, np.float32)
    return OrderedDict(x=x.astype(model_dtype), t=t, y=np.asarray(labels, np.int64), rope_cos=cos, rope_sin=sin,
                       mask=mask)


def build_cases(manifest: dict, cfg: FiTConfig, methods: Optional[Sequence[str]] = None, seed: int = 0):
    """[(name, feed)] for every declared size, every RoPE method, a CFG batch and a padded mixed batch."""
    rng = np.random.default_rng(seed)
    g = manifest["latent"]["pixel_granularity"]
    act = "float16" if manifest["transformer"]["precision"] == "fp16" else "float32"
    null = manifest["model"]["null_class"]
    labels = lambda k: [int(v) for v in rng.integers(0, manifest["model"]["num_classes"], k)]
    own = lambda i: cfg.rope_settings()
    cases = []
    all_sizes = []
    for bucket in manifest["sizes"]["buckets"]:
        for width, height in bucket["sizes"]:
            all_sizes.append((height // g, width // g))
            cases.append((f"bucket {bucket['tokens']} {width}x{height}",
                          _feed(own, [(height // g, width // g)], labels(1), act, cfg.token_dim, rng)))
    side = cfg.train_grid_side
    extrapolated = (side + side // 2, side)                              # 1.5x taller than training
    for method in methods or manifest["rope"]["methods"]:
        settings = cfg.rope_settings(method)
        cases.append((f"rope {method} {extrapolated[1] * g}x{extrapolated[0] * g}",
                      _feed(lambda i: settings, [extrapolated], labels(1), act, cfg.token_dim, rng)))
    default = tuple(v // g for v in reversed(manifest["sizes"]["default"]))
    cond = _feed(own, [default, default], labels(1) + [null], act, cfg.token_dim, rng, t=[0.5, 0.5])
    cond["x"][1] = cond["x"][0]
    cases.append((f"cfg batch {default[1] * g}x{default[0] * g}", cond))
    mixed = sorted(set(all_sizes), key=lambda hw: -hw[0] * hw[1])[:3]
    mixed = mixed + [(max(1, mixed[-1][0] // 2), max(1, mixed[-1][1] // 2))]
    cases.append(("padded mixed " + ",".join(f"{w * g}x{h * g}" for h, w in mixed),
                  _feed(own, mixed, labels(len(mixed)), act, cfg.token_dim, rng)))
    return cases


#################################################################################
#                                   Validation                                  #
#################################################################################

def reference_model(package: Path, manifest: dict, checkpoint=None, model: Optional[FiT] = None) -> FiT:
    """The PyTorch model the package was exported from: given, from ``checkpoint``, or from the package weights."""
    if model is not None:
        return model.float().eval()
    cfg = FiTConfig.from_dict(manifest["model"]["config"])
    reference = manifest.get("reference") or {}
    if checkpoint is not None:
        expected = reference.get("checkpoint_sha256")
        if expected and expected != _sha256(checkpoint):
            raise ValidationError(f"checkpoint {checkpoint} is not the one package {package} was exported from "
                                  f"({reference.get('checkpoint')})")
        return load_model(cfg, checkpoint)
    if reference.get("weights"):
        model = FiT(cfg)
        load_state_dict_strict(model, read_state_dict(str(package / reference["weights"])), "package weights")
        return model.eval()
    raise ValidationError(f"package {package} stores no PyTorch weights; pass --checkpoint with the checkpoint "
                          f"it was exported from (or export with --include-weights)")


def _sha256(path) -> str:
    from engines.manifest import sha256_file
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    return sha256_file(path)


def available_providers(requested: Optional[Sequence[str]] = None) -> list[str]:
    """CPU always; CUDA too when onnxruntime-gpu sees a GPU. ``requested`` narrows (and checks) the list."""
    have = ort.get_available_providers()
    wanted = list(requested) if requested else ["CPUExecutionProvider"] + (
        ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else [])
    missing = [p for p in wanted if p not in have]
    if missing:
        raise ValidationError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                              f"(available: {', '.join(have)})")
    return wanted


def validate_package(package, checkpoint=None, model: Optional[FiT] = None,
                     providers: Optional[Sequence[str]] = None, methods: Optional[Sequence[str]] = None,
                     e2e_steps: int = 10, seed: int = 0) -> ValidationReport:
    """Validate a package against its PyTorch reference; see the module docstring for cases and rules.

    The reference comes from ``model``, ``checkpoint`` or the package's ``weights.safetensors``, in that order.
    Returns a :class:`ValidationReport` (``.passed``, ``.table()``, ``.write_json(path)``).
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    package = Path(package)
    manifest = load_manifest(package, verify=True)
    ref = reference_model(package, manifest, checkpoint, model)
    cfg = ref.config
    precision = manifest["transformer"]["precision"]
    providers = available_providers(providers)
    onnx_path = package / manifest["transformer"]["file"]
    _check_onnx(onnx_path)
    report = ValidationReport(str(package), precision, providers)
    cases = build_cases(manifest, cfg, methods, seed)
    G_LOGGER.module_severity = G_LOGGER.ERROR
    for provider in providers:
        short = provider.replace("ExecutionProvider", "").lower()
        session = _session(onnx_path, provider)
        runners = [_torch_runner(ref, cfg.token_dim, cfg.head_dim), OnnxrtRunner(session, name=f"onnxrt-{short}")]
        results = Comparator.run(runners, data_loader=[feed for _, feed in cases], streaming=True)
        for (name, feed), result in zip(cases, results):
            (_, (ref_iter,)), (_, (out_iter,)) = result.items()
            report.cases.append(_judge(name, short, feed, out_iter["v"], ref_iter["v"], precision))
        report.end_to_end.append(end_to_end(ref, manifest, package, session, short, e2e_steps, seed))
    return report


def _judge(name, provider, feed, out, ref, precision) -> CaseResult:
    m = compare(out, ref)
    notes = []
    finite = bool(np.isfinite(out).all())
    if not finite:
        notes.append("NaN/Inf in output")
    padding = feed["mask"] == 0
    if padding.any() and np.any(out[padding] != 0):
        notes.append("padding output not zero")
    if precision == "fp16":
        ok = m["cosine"] >= FP16_MIN_COSINE
    else:
        ok = m["max_abs"] <= FP32_MAX_ABS * max(m["scale"], 1e-12)
    if not ok:
        notes.append("over tolerance")
    b, n = feed["mask"].shape
    return CaseResult(name, provider, b, n, m["max_abs"], m["max_rel"], m["cosine"], m["scale"],
                      ok and not notes, "; ".join(notes))


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError) as e:
        raise PackageError(f"{path} is not a valid ONNX model: {str(e).strip().splitlines()[0]}") from None


def compare_end_to_end(model: FiT, manifest: dict, package: Path, infer, steps: int, seed: int = 0,
                       x_dtype=np.float32, decoder_provider: str = "CPUExecutionProvider"):
    """Same noise, Euler steps and CFG through ``fit.sampling.sample`` and through ``infer`` (graph feed -> v).

    Compares decoded images when the package has a VAE decoder, latents otherwise.
    Returns (sizes [[w, h], ...], cfg scale, "images" | "latents", PSNR in dB).
    """
    d = manifest["latent"]["downsample"]
    sizes = [manifest["sizes"]["default"], manifest["sizes"]["buckets"][0]["sizes"][-1]]
    requests = [Request(h // d, w // d, label) for (w, h), label in zip(sizes, (1, 2 % model.num_classes))]
    noise = [request_noise(model, r, seed + i) for i, r in enumerate(requests)]
    scale = float(manifest["guidance"]["default_scale"])
    settings = SamplerSettings("euler", steps)
    reference = sample(model, requests, sampler=settings, cfg_scale=scale, noise=noise)

    batch = PaddedBatch(model, requests, None, noise, "cpu", torch.float32)
    p = manifest["model"]["patch_size"]
    guided = (manifest["guidance"]["cfg_channels"] or manifest["model"]["latent_channels"]) * p * p
    null = torch.full_like(batch.y, manifest["model"]["null_class"])
    both = lambda v: torch.cat([v, v]).numpy()
    fixed = {"y": torch.cat([batch.y, null]).numpy(), "rope_cos": both(batch.cos), "rope_sin": both(batch.sin),
             "mask": both(batch.mask)}

    def velocity(x, t):
        feed = dict(fixed, x=both(x).astype(x_dtype), t=both(t).astype(np.float32))
        out = torch.from_numpy(np.asarray(infer(feed), dtype=np.float32))
        return guide(out, scale, t, guided)

    with torch.no_grad():
        graph_latents = batch.unpack(integrate(velocity, batch.x, settings), p)
    ref_np = [r.numpy() for r in reference]
    out_np = [o.numpy() for o in graph_latents]
    space = "latents"
    if manifest.get("vae_decoder"):
        decoder = _session(package / manifest["vae_decoder"]["file"], decoder_provider)
        unscale = 1.0 / manifest["latent"]["scaling_factor"]

        def decode(z):
            return np.clip(decoder.run(None, {"latent": (z[None] * unscale).astype(np.float32)})[0][0], -1, 1)
        ref_np, out_np = [decode(z) for z in ref_np], [decode(z) for z in out_np]
        space = "images"
    peak = 2.0 if space == "images" else max(float(np.ptp(np.concatenate([r.ravel() for r in ref_np]))), 1e-12)
    value = psnr(np.concatenate([o.ravel() for o in out_np]), np.concatenate([r.ravel() for r in ref_np]), peak)
    return sizes, scale, space, value


def end_to_end(model: FiT, manifest: dict, package: Path, session: ort.InferenceSession, provider: str,
               steps: int, seed: int = 0) -> EndToEndResult:
    """The end-to-end case on ONNX Runtime: PSNR >= MIN_PSNR_DB required for fp32 packages."""
    precision_dtype = np.float16 if manifest["transformer"]["precision"] == "fp16" else np.float32
    sizes, scale, space, value = compare_end_to_end(
        model, manifest, package, lambda feed: session.run(None, feed)[0], steps, seed, precision_dtype,
        session.get_providers()[0])
    threshold = MIN_PSNR_DB if precision_dtype == np.float32 else None
    return EndToEndResult(provider, steps, scale, [list(s) for s in sizes], space, value, threshold,
                          threshold is None or value >= threshold)
