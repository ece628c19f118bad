"""The procedural shapes as an image folder (one subfolder per class), the input of ``fit-train prepare``.

The latent default model goes through the official data path: these PNGs -> ``fit-train prepare --vae`` -> the
flexible-latent format. Canvases are every grid of ``min_tokens`` .. ``max_tokens`` tokens of ``unit`` x ``unit``
pixels (``unit`` = latent patch size x VAE downsampling), so ``prepare`` keeps every image at its own size.
Class folders are numbered (``0_circle``, ``1_square``, ...): ``prepare`` labels the folders in sorted order, and
numbering keeps the labels those of :data:`fit.data.procedural.SHAPES` (what ``fit-eval``'s classifier predicts).

    python -m fit.data.procedural_images IMAGES --count 10000 --max-tokens 24 --unit 16
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from fit.data.procedural import SHAPES, ProceduralShapes


def class_folders() -> list[str]:
    """Folder names whose sorted order is the label order: ``0_circle``, ``1_square``, ..."""
    digits = len(str(len(SHAPES) - 1))
    return [f"{label:0{digits}d}_{name}" for label, name in enumerate(SHAPES)]


def write_image_folder(out: str, count: int, seed: int = 0, max_tokens: int = 24, unit: int = 16,
                       min_tokens: int = 16, progress: bool = True) -> dict:
    """Write items 0 .. count-1 of ``ProceduralShapes(seed)`` as ``out/<label>_<shape>/<index>.png``. Returns
    {folder: number of images}."""
    shapes = ProceduralShapes(seed=seed, patch_size=unit, max_tokens=max_tokens, min_tokens=min_tokens)
    folders = class_folders()
    for name in folders:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    counts = dict.fromkeys(folders, 0)
    for index in tqdm(range(count), desc="rendering", unit="img", disable=not progress):
        img, label = shapes.image(index)
        pixels = ((img.transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(out, folders[label], f"{index:06d}.png"))
        counts[folders[label]] += 1
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--unit", type=int, default=16, help="pixels per token side (patch size x VAE downsampling)")
    args = parser.parse_args()
    print(write_image_folder(args.out, args.count, args.seed, args.max_tokens, args.unit, args.min_tokens))
