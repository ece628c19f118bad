"""How close two outputs are: cosine similarity and PSNR, the one definition used by validation, tests and
benchmarks. numpy only (no torch), so the runtime side can use it too.

    cosine(a, b) = <a, b> / (|a| |b|)                 both flattened, in float64
    psnr(a, b, peak) = 10 log10(peak^2 / mean((a - b)^2))  in dB, float64; infinite when a == b
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cosine(a, b) -> float:
    """Cosine similarity of two arrays of the same size, taken as flat float64 vectors. Two all-zero arrays
    count as identical (1.0); an all-zero array against anything else as unrelated (0.0)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b / norm)


def psnr(a, b, peak: float) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` in dB for signals spanning ``peak`` (255 for uint8
    images, 2 for [-1, 1] images); ``math.inf`` when they are equal."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


__all__ = ["cosine", "psnr"]


@dataclass(frozen=True)
class QualityGate:
    """The quality a quantized (Q/DQ) transformer must reach against fp32 before it is written (``fit-export
    quantize --for tensorrt``): every network evaluation of every size and extrapolation method, every image."""

    min_step_cosine: float = 0.999        # per network evaluation, against fp32 on the same feed
    min_psnr_db: float = 35.0             # decoded images against fp32 from the same seeds
    max_accuracy_drop: float = 0.02       # shape accuracy at a training size, fp32 minus quantized (default model)
