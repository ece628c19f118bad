"""Samples of different lengths -> one batch padded to its longest sequence, with masks (the official layout)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from engines.rope import image_grid
from fit.flow import patchify


def image_sample(image: torch.Tensor, patch_size: int, label: int) -> dict:
    """One dataset sample from a (C, H, W) latent or pixel image whose sides are multiples of ``patch_size``."""
    c, height, width = image.shape
    h, w = height // patch_size, width // patch_size
    return dict(feature=patchify(image.float(), patch_size),                       # (h*w, C*p*p)
                grid=torch.from_numpy(image_grid(h, w).astype(np.int64)),          # (2, h*w)
                size=torch.tensor([h, w], dtype=torch.int64),
                label=int(label))


def pad_batch(samples: Sequence[dict], pad_to: Optional[int] = None, token_keys: Sequence[str] = ()) -> dict:
    """Stack samples into a padded batch.

    Returns feature (B, N, D) float32, grid (B, 2, N) int64, mask (B, N) uint8 (1 = real token),
    size (B, 1, 2) int64 (h, w in patches), label (B,) int64, with N the longest sample (or ``pad_to``).
    Entries named in ``token_keys`` are per-token tensors (N_i, ...) padded with zeros like ``feature``; any
    other extra entries are stacked.
    """
    lengths = [s["feature"].shape[0] for s in samples]
    n = max(lengths) if pad_to is None else pad_to
    if n < max(lengths):
        raise ValueError(f"pad_to {pad_to} is shorter than the longest sample ({max(lengths)} tokens)")
    b, d = len(samples), samples[0]["feature"].shape[1]
    batch = dict(feature=torch.zeros(b, n, d), grid=torch.zeros(b, 2, n, dtype=torch.int64),
                 mask=torch.zeros(b, n, dtype=torch.uint8),
                 size=torch.stack([s["size"].reshape(1, 2).to(torch.int64) for s in samples]),
                 label=torch.tensor([int(s["label"]) for s in samples], dtype=torch.int64))
    for i, (s, length) in enumerate(zip(samples, lengths)):
        batch["feature"][i, :length] = s["feature"]
        batch["grid"][i, :, :length] = s["grid"]
        batch["mask"][i, :length] = 1
    for key in samples[0].keys() - batch.keys():
        values = [s[key] for s in samples]
        if key in token_keys:
            padded = torch.zeros((b, n, *values[0].shape[1:]), dtype=values[0].dtype)
            for i, (v, length) in enumerate(zip(values, lengths)):
                padded[i, :length] = v
            batch[key] = padded
        else:
            batch[key] = torch.stack([torch.as_tensor(v) for v in values])
    return batch
