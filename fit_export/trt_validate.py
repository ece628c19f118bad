"""Numerical validation of a package's TensorRT engines against the PyTorch reference.

The same cases as the ONNX Runtime validation (``fit_export.validate.build_cases``: every bucket size, every RoPE
extrapolation method, a CFG batch, a padded mixed-resolution batch), run through Polygraphy's Comparator with the
PyTorch runner and a ``TrtRunner`` on the optimization profile that ``engines.buckets.choose_profile`` picks for
each case (cases below a profile's minimum are padded with masked rows/tokens, exactly as the runtime does).
A case no profile holds (typically the RoPE extrapolation grid, 1.5x the training side, beyond the buckets an
engine was built for) is listed as skipped with the reason; build a larger profile to include it.

Pass rules follow the engine's precision: fp32 max abs error <= 1e-4 x output scale; fp16/bf16 cosine >= 0.999.
End to end: the Euler loop of ``fit_export.validate.end_to_end`` driven by :class:`TensorRTBackend`; at every
network evaluation the PyTorch reference runs on the same input, and the cosine of each step is checked
(>= 0.999 for fp16/bf16 engines); the final latents/images are compared by PSNR (>= 40 dB required for fp32,
reported for fp16/bf16).

Needs TensorRT, cuda-python and a GPU (``engines.tensorrt_backend.require_tensorrt`` says what is missing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engines.buckets import BucketError, choose_profile
from engines.manifest import load_manifest
from engines.tensorrt_backend import TensorRTBackend, gpu_info, require_tensorrt, select_engines
from fit_export.validate import (FP16_MIN_COSINE, MIN_PSNR_DB, CaseResult, EndToEndResult, ValidationReport, _judge,
                                 _torch_runner, build_cases, compare, compare_end_to_end, reference_model)

PROVIDER = "tensorrt"


def judged_precision(engine_precision: str) -> str:
    """fp16 and bf16 engines are judged by cosine, fp32 ones by max abs error (``validate.tolerances``)."""
    return "fp32" if engine_precision == "fp32" else "fp16"


def pad_feed(feed: dict, batch: int, seq: int, null_class: int) -> dict:
    """Pad a graph feed to (batch, seq) with masked rows/tokens (zeros, null label for extra rows)."""
    b, n = feed["mask"].shape
    out = {}
    for name, array in feed.items():
        if name == "y":
            out[name] = np.concatenate([array, np.full(batch - b, null_class, array.dtype)])
            continue
        pads = [(0, batch - b)] + [(0, 0)] * (array.ndim - 1)
        if array.ndim >= 2:
            pads[1] = (0, seq - n)
        out[name] = np.pad(array, pads)
    return out


@dataclass
class TrtEndToEndResult(EndToEndResult):
    """End-to-end result plus the worst per-evaluation cosine of TensorRT against PyTorch on the trajectory."""

    min_step_cosine: float = 1.0
    evaluations: int = 0


def format_report(report: ValidationReport) -> str:
    """``report.table()`` plus the per-step cosine line of each TensorRT end-to-end run."""
    lines = [report.table()]
    for e in report.end_to_end:
        if isinstance(e, TrtEndToEndResult):
            lines.append(f"per-step cosine (TensorRT vs PyTorch, {e.evaluations} evaluations): min "
                         f"{e.min_step_cosine:.6f}" + ("" if e.threshold_db is not None else
                                                      f" (needs >= {FP16_MIN_COSINE})"))
    return "\n".join(lines)


def validate_trt(package, checkpoint=None, model=None, precision: Optional[str] = None,
                 methods: Optional[Sequence[str]] = None, e2e_steps: int = 10, seed: int = 0) -> ValidationReport:
    """Validate the package's TensorRT engines (of ``precision``, default: the newest matching build).

    Returns the same :class:`fit_export.validate.ValidationReport` as the ONNX validation, provider "tensorrt".
    """
    require_tensorrt("validating TensorRT engines")
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    package = Path(package)
    manifest = load_manifest(package, verify=True)
    engines = select_engines(package, manifest, precision=precision, trt_version=trt.__version__, gpu=gpu_info())
    engine_precision = engines[0][1].precision
    judged = judged_precision(engine_precision)
    ref = reference_model(package, manifest, checkpoint, model)
    cfg = ref.config
    null = int(manifest["model"]["null_class"])
    report = ValidationReport(str(package), engine_precision, [PROVIDER])
    cases = build_cases(manifest, cfg, methods, seed)
    G_LOGGER.module_severity = G_LOGGER.ERROR

    # (engine path, profile index, batch range, seq range) of every profile, in backend order.
    slots = []
    for path, side in engines:
        for index, profile in enumerate(side.profiles):
            slots.append((path.parent / side.engine, index, profile.batch, profile.seq))
    groups: dict[int, list] = {}
    for name, feed in cases:
        b, n = feed["mask"].shape
        try:
            choice = choose_profile([(s[2], s[3]) for s in slots], b, n)
        except BucketError:
            # Reported, not failed: engines cover the buckets they were built for; the extrapolation cases
            # need a profile beyond them (e.g. --profiles 256,384).
            report.cases.append(CaseResult(name, PROVIDER, b, n, math.nan, math.nan, math.nan, math.nan, True,
                                           f"skipped: no profile holds batch {b} x {n} tokens"))
            continue
        padded = feed if (choice.batch, choice.seq) == (b, n) else pad_feed(feed, choice.batch, choice.seq, null)
        groups.setdefault(choice.index, []).append((name, padded))
    for slot_index, group in groups.items():
        engine_path, profile, _, _ = slots[slot_index]
        runner = TrtRunner(EngineFromBytes(engine_path.read_bytes()), name=f"trt-profile{profile}",
                           optimization_profile=profile)
        runners = [_torch_runner(ref, cfg.token_dim, cfg.head_dim), runner]
        results = Comparator.run(runners, data_loader=[feed for _, feed in group], streaming=True)
        for (name, feed), result in zip(group, results):
            (_, (ref_iter,)), (_, (out_iter,)) = result.items()
            case = _judge(name, PROVIDER, feed, np.asarray(out_iter["v"]), np.asarray(ref_iter["v"]), judged)
            if len(slots) > 1:
                case.note = "; ".join(filter(None, [case.note, f"profile {slot_index}"]))
            report.cases.append(case)
    report.end_to_end.append(end_to_end_trt(ref, manifest, package, e2e_steps, seed, precision=engine_precision))
    return report


def end_to_end_trt(model, manifest: dict, package: Path, steps: int, seed: int = 0,
                   precision: Optional[str] = None) -> TrtEndToEndResult:
    """The Euler loop of ``validate.end_to_end`` on the TensorRT backend, with per-step cosine checks."""
    import torch

    from fit_export.onnx_export import TransformerGraph

    graph = TransformerGraph(model).eval()
    cosines: list[float] = []
    backend = TensorRTBackend(package, manifest=manifest, precision=precision)

    def infer(feed):
        out = backend.infer(feed)["v"].astype(np.float32)
        with torch.no_grad():
            ref_out = graph(*(torch.from_numpy(np.asarray(feed[k], np.float32) if k != "y" else feed[k])
                              for k in ("x", "t", "y", "rope_cos", "rope_sin", "mask"))).numpy()
        real = feed["mask"] != 0
        cosines.append(compare(out[real], ref_out[real])["cosine"])
        return out

    with backend:
        sizes, scale, space, value = compare_end_to_end(model, manifest, package, infer, steps, seed,
                                                        x_dtype=backend.inputs["x"].dtype)
    fp32 = judged_precision(precision or "fp32") == "fp32"
    threshold = MIN_PSNR_DB if fp32 else None
    worst = min(cosines) if cosines else 1.0
    steps_ok = fp32 or worst >= FP16_MIN_COSINE
    return TrtEndToEndResult(PROVIDER, steps, scale, [list(s) for s in sizes], space, value, threshold,
                             (threshold is None or value >= threshold) and steps_ok, worst, len(cosines))
