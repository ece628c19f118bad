"""Procedural class-conditional shapes: an endless, seeded image dataset generated on the fly.

Each item is one bold shape (circle, square, triangle, ...) of a random size and position, in a colour that
contrasts with its solid or gently graded background of random hue and lightness, drawn on a canvas whose size and aspect ratio are drawn from every patch grid that
fits a token budget. Item ``i`` of a dataset with seed ``s`` depends on ``(s, i)`` only, so any worker, process
or resumed run sees the same image for the same index.

Images live in pixel space, scaled to [-1, 1]; the dataset serves them as pixel-patch tokens through the
:class:`fit.data.FlexibleDataset` contract, so ``fit-train run --data procedural:SEED`` trains on them.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from fit.data.batching import image_sample

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "frame", "star")

SUPERSAMPLE = 4          # shapes are drawn at 4x and box-filtered down: anti-aliased, deterministic edges


#################################################################################
#                                  Drawing                                      #
#################################################################################

def _regular_polygon(cx, cy, r, n, phase):
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(cx, cy, r, points=5):
    inner = 0.45 * r
    verts = []
    for k in range(2 * points):
        rad = r if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        verts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return verts


def _draw_mask(shape: str, width: int, height: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Coverage (H, W) float32 in [0, 1] of ``shape`` centred at (cx, cy) with outer radius r (pixels)."""
    s = SUPERSAMPLE
    img = Image.new("L", (width * s, height * s), 0)
    d = ImageDraw.Draw(img)
    cx, cy, r = cx * s, cy * s, r * s
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        h = r * 0.85
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == "triangle":
        d.polygon(_regular_polygon(cx, cy + 0.2 * r, 1.15 * r, 3, -math.pi / 2), fill=255)
    elif shape == "diamond":
        d.polygon(_regular_polygon(cx, cy, r, 4, 0.0), fill=255)
    elif shape == "cross":
        a = 0.32 * r
        d.rectangle((cx - r, cy - a, cx + r, cy + a), fill=255)
        d.rectangle((cx - a, cy - r, cx + a, cy + r), fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        q = 0.55 * r
        d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif shape == "frame":
        h, q = 0.85 * r, 0.45 * r
        d.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
        d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif shape == "star":
        d.polygon(_star(cx, cy + 0.08 * r, 1.1 * r), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    img = img.resize((width, height), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _colours(rng: np.random.Generator):
    """Foreground and background RGB in [0, 1]: a random background hue, light or dark, and a contrasting
    foreground near the complementary hue. The foreground colour is thus mostly implied by the background, which
    a small generator picks up early (a foreground colour independent of everything else is what kept a probe
    model from drawing coherent shapes), while colours still cover the whole hue circle."""
    hue = rng.random()
    dark_background = rng.random() < 0.5
    bg_value = rng.uniform(0.15, 0.45) if dark_background else rng.uniform(0.7, 1.0)
    fg_value = rng.uniform(0.75, 1.0) if dark_background else rng.uniform(0.1, 0.4)
    bg = colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 1.0), bg_value)
    fg = colorsys.hsv_to_rgb((hue + 0.5 + rng.uniform(-0.1, 0.1)) % 1.0, rng.uniform(0.6, 1.0), fg_value)
    return np.array(fg, dtype=np.float32), np.array(bg, dtype=np.float32)


def draw(rng: np.random.Generator, label: int, height: int, width: int, gradient_prob: float = 0.3) -> np.ndarray:
    """One image (3, H, W) float32 in [-1, 1] of class ``label`` with random colours, size and position."""
    fg, bg = _colours(rng)
    short = min(height, width)
    r = short * rng.uniform(0.3, 0.46)
    cx = rng.uniform(r, width - r)
    cy = rng.uniform(r, height - r)
    cover = _draw_mask(SHAPES[label], width, height, cx, cy, r)[None]             # (1, H, W)
    back = np.broadcast_to(bg[:, None, None], (3, height, width))
    if rng.random() < gradient_prob:
        # A soft linear ramp across the canvas, +-0.15 in each channel along a random direction.
        a = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = ((xs - width / 2) * math.cos(a) + (ys - height / 2) * math.sin(a)) / max(height, width)
        back = np.clip(back + 0.3 * ramp[None] * rng.uniform(-1, 1, (3, 1, 1)).astype(np.float32), 0, 1)
    img = cover * fg[:, None, None] + (1 - cover) * back
    return (img * 2 - 1).astype(np.float32)


#################################################################################
#                                Canvas sizes                                   #
#################################################################################

def canvas_grids(max_tokens: int, min_tokens: int = 1, max_aspect: float = 2.0, min_side: int = 2):
    """All (h, w) patch grids with min_tokens <= h*w <= max_tokens, aspect <= max_aspect, sides >= min_side."""
    grids = [(h, w) for h in range(min_side, max_tokens + 1) for w in range(min_side, max_tokens + 1)
             if min_tokens <= h * w <= max_tokens and max(h, w) <= max_aspect * min(h, w)]
    if not grids:
        raise ValueError(f"no patch grid has between {min_tokens} and {max_tokens} tokens with aspect ratio "
                         f"<= {max_aspect} and sides >= {min_side}")
    return grids


#################################################################################
#                                  Dataset                                      #
#################################################################################

@dataclass
class ProceduralShapes:
    """Seeded shapes as a :class:`fit.data.FlexibleDataset` (pixel tokens of ``patch_size``, 3 channels).

    ``length`` is the size of one epoch; every index is valid (the data is endless). Canvases are drawn uniformly
    from :func:`canvas_grids` (``min_tokens`` .. ``max_tokens`` patches, aspect ratio up to ``max_aspect``).
    """

    seed: int = 0
    patch_size: int = 8
    max_tokens: int = 64
    min_tokens: int = 48
    max_aspect: float = 2.0
    length: int = 1_000_000
    gradient_prob: float = 0.3

    num_classes = len(SHAPES)
    in_channels = 3

    def __post_init__(self):
        self.grids = canvas_grids(self.max_tokens, self.min_tokens, self.max_aspect)

    @property
    def token_dim(self) -> int:
        return self.patch_size ** 2 * self.in_channels

    def __len__(self) -> int:
        return self.length

    def image(self, index: int):
        """(image (3, H, W) float32 in [-1, 1], label) of item ``index``."""
        rng = np.random.default_rng([int(self.seed), int(index)])
        label = int(rng.integers(self.num_classes))
        h, w = self.grids[int(rng.integers(len(self.grids)))]
        return draw(rng, label, h * self.patch_size, w * self.patch_size, self.gradient_prob), label

    def load(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Item ``index`` as a training sample (feature, grid, size, label); ``generator`` is not needed: the
        item is a function of (seed, index) alone."""
        img, label = self.image(index)
        return image_sample(torch.from_numpy(img), self.patch_size, label)


def from_spec(arg: str, *, config, max_tokens: int) -> ProceduralShapes:
    """``procedural:SEED`` for ``fit-train``: shapes tokenised for ``config`` with canvases of 3/4 to all of
    ``max_tokens`` patches."""
    from fit.data import DataError

    try:
        seed = int(arg or 0)
    except ValueError:
        raise DataError(f"procedural data takes an integer seed (procedural:SEED), got {arg!r}") from None
    if config.in_channels != 3:
        raise DataError(f"procedural data is RGB pixels (3 channels) but the model has in_channels "
                        f"{config.in_channels}")
    try:
        return ProceduralShapes(seed=seed, patch_size=config.patch_size, max_tokens=max_tokens,
                                min_tokens=math.ceil(0.75 * max_tokens))
    except ValueError as e:
        raise DataError(str(e)) from None
