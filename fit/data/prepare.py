"""``fit-train prepare``: an image folder (one subfolder per class) -> the official flexible-latent format.

Official preprocessing for a token budget L, with u = patch size x VAE downsampling (16 for the SD VAE, or the
patch size alone in pixel space) and S = sqrt(L) * u:
  * resize: an image larger than S x S in area is scaled, aspect kept, to area S^2; a side shorter than u is
    scaled up to u; both sides are then rounded down to multiples of u (and the longer one trimmed if a very
    thin image would still exceed L tokens);
  * crop: an image with both sides above S is also resized (shorter side to S) and centre-cropped to S x S
    (the ADM crop);
  * each version is stored with its horizontal flip, encoded by the VAE (latent mean x scaling factor) or kept
    as pixels in [-1, 1].
Images of fewer than 16 tokens go to ``less_than_16`` (kept, like the official release, but not trained on).
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from engines.atomic import atomic_write
from fit.data import DataError
from fit.data.latent_folder import META_FILE, MIN_TOKENS, folder_names, write_latent
from fit.flow import patchify

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def resize_size(width: int, height: int, max_tokens: int, unit: int) -> tuple[int, int]:
    """(w, h) of the resize version: multiples of ``unit`` with at most ``max_tokens`` tokens of unit x unit."""
    side = math.sqrt(max_tokens) * unit
    if width * height > max_tokens * unit * unit:         # integers: sqrt(24)**2 != 24 in floating point
        w = math.sqrt(width / height) * side
        h = w * height / width
    elif width < unit:
        w, h = unit, unit * height / width
    elif height < unit:
        w, h = unit * width / height, unit
    else:
        w, h = width, height
    tw, th = max(1, int(w / unit)), max(1, int(h / unit))
    if tw * th > max_tokens:                       # a very thin image: trim the long side to the budget
        tw, th = (max_tokens // th, th) if tw >= th else (tw, max_tokens // tw)
    return tw * unit, th * unit


def crop_side(max_tokens: int, unit: int) -> int:
    return math.isqrt(max_tokens) * unit


def center_crop(image: Image.Image, side: int) -> Image.Image:
    """The ADM crop: halve with a box filter while possible, resize the shorter side to ``side``, crop the centre."""
    while min(image.size) >= 2 * side:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = side / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")     # Pillow's modes of 16-bit grayscale files


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB. 16-bit grayscale (modes ``I;16*``, and ``I``, which is how Pillow opens
    16-bit PNG and TIFF) is scaled from 0..65535 to 0..255 rather than clipped at 255; floating-point images
    (mode ``F``) are taken as 0..1. Everything else goes through Pillow's own conversion."""
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        top = 1.0 if image.mode == "F" else 65535.0
        values = np.asarray(image, dtype=np.float64) * (255.0 / top)
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


class PixelSpace:
    """Keeps images as pixels: 3 channels, no downsampling."""

    channels, downsample = 3, 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images


class VaeSpace:
    """A diffusers ``AutoencoderKL`` from a local folder; latents are the posterior mean x scaling factor."""

    def __init__(self, path: str, device: str = "cpu"):
        if not os.path.isdir(path):
            raise DataError(f"VAE folder {path} does not exist (expected a diffusers AutoencoderKL folder)")
        from diffusers import AutoencoderKL

        try:
            self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True).to(device).eval()
        except (OSError, ValueError, EnvironmentError) as e:
            raise DataError(f"cannot load a diffusers AutoencoderKL from {path}: {str(e).splitlines()[0]}") from None
        self.device = device
        self.channels = self.vae.config.latent_channels
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = self.vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.vae.encode(images.to(self.device)).latent_dist.mean
        return (latent * self.scaling_factor).float().cpu()


@dataclass
class PrepareReport:
    written: dict = field(default_factory=dict)        # folder -> files written
    existing: int = 0                                  # outputs already there (an earlier, interrupted run)
    skipped: list = field(default_factory=list)        # unreadable images

    def summary(self) -> str:
        parts = [f"{name}: {n}" for name, n in sorted(self.written.items())]
        text = f"wrote {sum(self.written.values())} file(s) ({', '.join(parts) or 'none'})"
        if self.existing:
            text += f", {self.existing} already present"
        if self.skipped:
            text += f", skipped {len(self.skipped)} unreadable image(s)"
        return text


def list_images(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of an image folder with one subfolder per class (sorted)."""
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders; put each class's images in its own subfolder")
    items = []
    for label, name in enumerate(classes):
        for folder, dirs, files in sorted(os.walk(os.path.join(root, name))):
            dirs.sort()
            items += [(os.path.join(folder, f), label) for f in sorted(files)
                      if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if not items:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return classes, items


def _tokens(space, image: Image.Image, patch_size: int) -> torch.Tensor:
    """(2, h, w, D) tokens of an image and its horizontal flip."""
    x = to_tensor(image)
    z = space.encode(torch.stack([x, x.flip(-1)]))                               # (2, C, H/s, W/s)
    h, w = z.shape[-2] // patch_size, z.shape[-1] // patch_size
    return torch.stack([patchify(zi, patch_size).reshape(h, w, -1) for zi in z])


def prepare_folder(images: str, out: str, max_tokens: int, vae: Optional[str] = None, patch_size: int = 2,
                   strict: bool = False, device: str = "cpu", progress: bool = True) -> PrepareReport:
    """Write ``images`` into ``out`` for token budget ``max_tokens``; ``vae`` None keeps pixel space."""
    if max_tokens < MIN_TOKENS:
        raise DataError(f"max_tokens must be at least {MIN_TOKENS}, got {max_tokens}")
    if patch_size < 1:
        raise DataError(f"patch size must be positive, got {patch_size}")
    classes, items = list_images(images)
    space = VaeSpace(vae, device) if vae else PixelSpace()
    unit = patch_size * space.downsample
    meta = dict(classes=classes, max_tokens=max_tokens, patch_size=patch_size, channels=space.channels,
                space="vae" if vae else "pixels", vae=os.path.abspath(vae) if vae else None,
                scaling_factor=getattr(space, "scaling_factor", None))
    _check_meta(out, meta)
    names = folder_names(max_tokens)
    for name in names.values():
        os.makedirs(os.path.join(out, name), exist_ok=True)
    report, used = PrepareReport(), set()
    for path, label in tqdm(items, desc="preparing", unit="img", disable=not progress):
        stem = _output_stem(images, path, used)
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except Exception as e:    # PIL raises many types for damaged files
            if strict:
                raise DataError(f"cannot read image {path}: {e}") from None
            report.skipped.append(path)
            continue
        versions = _versions(image, max_tokens, unit)
        for kind, version in versions:
            target = os.path.join(out, names[kind], stem + ".safetensors")
            if os.path.exists(target):
                report.existing += 1
                continue
            write_latent(target, _tokens(space, version, patch_size), label)
            report.written[names[kind]] = report.written.get(names[kind], 0) + 1
    if report.skipped:
        warnings.warn(f"skipped {len(report.skipped)} unreadable image(s), e.g. {report.skipped[0]}")
    return report


def _versions(image: Image.Image, max_tokens: int, unit: int) -> list[tuple[str, Image.Image]]:
    """[(folder kind, image)] of the official versions of one image."""
    width, height = image.size
    w, h = resize_size(width, height, max_tokens, unit)
    resized = image if (w, h) == (width, height) else image.resize((w, h), resample=Image.Resampling.BICUBIC)
    if width * height <= max_tokens * unit * unit:
        return [("small" if (w // unit) * (h // unit) < MIN_TOKENS else "fits", resized)]
    side = crop_side(max_tokens, unit)
    out = [("resize", resized)]
    if width > side and height > side:
        out.append(("crop", center_crop(image, side)))
    return out


def _output_stem(root: str, path: str, used: set) -> str:
    stem = re.sub(r"[^\w.-]", "_", os.path.splitext(os.path.relpath(path, root))[0])
    unique, n = stem, 1
    while unique in used:
        unique, n = f"{stem}_{n}", n + 1
    used.add(unique)
    return unique


def _check_meta(out: str, meta: dict) -> None:
    """Write ``out/dataset.json``, refusing to mix into a folder prepared with other settings."""
    path = os.path.join(out, META_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != meta:
            differ = sorted(k for k in meta if old.get(k) != meta[k])
            raise DataError(f"{out} was prepared with other settings ({', '.join(differ)} differ); "
                            f"use another output folder")
        return
    os.makedirs(out, exist_ok=True)
    atomic_write(path, json.dumps(meta, indent=1))
