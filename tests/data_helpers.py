"""Tiny data for the data and training tests: a latent folder and an image folder."""
import os

import numpy as np
import torch
from PIL import Image

from fit.data.latent_folder import folder_names, write_latent


def make_latents(root, budget=64, dim=16, shapes=((4, 4), (8, 8), (4, 8), (2, 8)), n=8, classes=3, large=()):
    """A tiny latent folder; ``large``: names written to greater_than_resize (and crop for those in pairs)."""
    names = folder_names(budget)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        os.makedirs(root / names["fits"], exist_ok=True)
        write_latent(str(root / names["fits"] / f"{i:03d}.safetensors"), torch.randn(2, h, w, dim, generator=g),
                     i % classes)
    for name, crop in large:
        for kind in ("resize", "crop") if crop else ("resize",):
            os.makedirs(root / names[kind], exist_ok=True)
            fill = 1.0 if kind == "resize" else -1.0
            write_latent(str(root / names[kind] / f"{name}.safetensors"), torch.full((2, 4, 4, dim), fill), 0)
    return root


def make_images(root):
    rng = np.random.default_rng(0)
    sizes = [(40, 24), (100, 60), (8, 30), (64, 64)]
    for c in ("circle", "square"):
        os.makedirs(root / c)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "circle" / "broken.jpg").write_bytes(b"not an image")
    (root / "circle" / "notes.txt").write_text("ignored")
    return root
