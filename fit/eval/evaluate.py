"""Sample-quality table of a FiTv2 across sizes and RoPE extrapolation methods (paper Table III).

For every size and method the model generates ``num_per_class`` images of each class; the shape classifier
judges them (class accuracy) and its features of the samples are compared with features of procedural images of
the same size (Fréchet distance). Pixel-space models are judged directly; latent models through their VAE
decoder (:class:`LatentDecoder`). A method whose RoPE tables equal an already measured method's at that size
(every method, inside the training grid) generates the same images, so its numbers are reused, not recomputed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from engines.rope import rope_tables
from engines.sampler import SHIFTED, check_cfg
from fit.data.procedural import SHAPES, draw
from fit.eval.classifier import ShapeClassifier
from fit.eval.metrics import class_accuracy, frechet_distance_of
from fit.flow import SamplerSettings
from fit.model import FiT
from fit.sampling import sample

# Table III's methods, in its order. Friendly names resolve through engines.rope.
METHODS = ("normal", "linear", "ntk-aware", "yarn", "vision-ntk", "vision-yarn", "ntk-aware-pro1", "ntk-aware-pro2")
METHOD_TITLES = {"normal": "none", "linear": "PI", "ntk-aware": "NTK", "yarn": "YaRN", "vision-ntk": "VisionNTK",
                 "vision-yarn": "VisionYaRN", "ntk-aware-pro1": "NTK-pro1", "ntk-aware-pro2": "NTK-pro2"}
REFERENCE_SEED = 7_777                   # procedural images the samples are compared with (not a training seed)


class EvalError(ValueError):
    """An evaluation request that cannot be run (size off the model's grid, non-pixel model, unknown method)."""


class LatentDecoder:
    """Latents (N, C, h, w) of a model trained in a VAE's latent space -> images (N, 3, H, W) in [-1, 1].

    vae_dir: the diffusers ``AutoencoderKL`` folder the training latents were prepared with.
    """

    def __init__(self, vae_dir: str):
        from fit.data.prepare import VaeSpace

        self.space = VaeSpace(vae_dir)
        self.channels, self.downsample = self.space.channels, self.space.downsample

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.space.vae.decode(latents / self.space.scaling_factor).sample.float().clamp(-1, 1)


@dataclass
class EvalSettings:
    num_per_class: int = 16
    sampler: SamplerSettings = field(default_factory=lambda: SamplerSettings("heun", steps=16))
    cfg_scale: float = 4.0
    seed: int = 0
    batch_size: int = 64
    reference_count: int = 512

    def __post_init__(self):
        self.cfg_scale = check_cfg(self.cfg_scale)          # the runtime's bound: finite float32 guidance


# Sizes are refused beyond this many times the training token budget (context_size): Table III measures up to
# 2.25x, and attention memory grows with the square of the tokens (1600x1600 on the default model would need
# 400x its budget and tens of GB).
MAX_TOKEN_FACTOR = 4


def default_sizes(context_size: int, granularity: int) -> list[tuple[int, int]]:
    """Table III's rows scaled to a token budget L = ``context_size``: (height, width) in pixels.

    Inside the budget: the square grid and grids twice and three times as wide as high. Beyond it: the square
    grid 1.25x and 1.5x as wide (about 1.56x and 2.25x the tokens) and the 2:1 and 3:1 grids one size up (the
    paper's 320x320, 448x224 and 480x160 WIDTHxHEIGHT for a 256x256 budget).
    """
    side = int(math.isqrt(context_size))
    half, third = int(math.isqrt(context_size // 2)), int(math.isqrt(context_size // 3))
    grids = [(side, side), (half, 2 * half), (third, 3 * third),
             (round(1.25 * side), round(1.25 * side)), (round(1.4 * half), 2 * round(1.4 * half)),
             (third + 1, 3 * (third + 1)), (round(1.5 * side), round(1.5 * side))]
    seen = []
    for h, w in grids:
        if h >= 1 and (h, w) not in seen:
            seen.append((h, w))
    return [(h * granularity, w * granularity) for h, w in seen]


@dataclass
class Row:
    height: int
    width: int
    tokens: int
    method: str
    accuracy: float
    fd: float
    same_as: Optional[str] = None        # method whose samples these are (identical RoPE tables)


def check_model(model: FiT, sizes: Sequence[tuple[int, int]], methods: Sequence[str],
                decoder: Optional[LatentDecoder] = None) -> None:
    if decoder is None and model.in_channels != 3:
        raise EvalError(f"this model has {model.in_channels} channels: a latent model; pass its VAE (--vae DIR) to "
                        f"judge its images")
    if decoder is not None and model.in_channels != decoder.channels:
        raise EvalError(f"the model has {model.in_channels} channels but the VAE's latents have {decoder.channels}")
    if model.num_classes < len(SHAPES):
        raise EvalError(f"the model has {model.num_classes} classes; the shape classifier needs {len(SHAPES)}")
    g = model.patch_size * (decoder.downsample if decoder else 1)
    limit = MAX_TOKEN_FACTOR * model.config.context_size
    for h, w in sizes:
        if h % g or w % g or h < g or w < g:
            raise EvalError(f"size {w}x{h} is not a positive multiple of {g} pixels (patch size x VAE "
                            f"downsampling) in both sides")
        tokens = (h // g) * (w // g)
        if tokens > limit:
            scale = math.sqrt(limit / tokens)
            raise EvalError(f"size {w}x{h} has {tokens} tokens, more than {MAX_TOKEN_FACTOR}x the model's "
                            f"training budget of {model.config.context_size} ({limit}); the largest size with "
                            f"this aspect ratio is about {max(g, int(w * scale) // g * g)}x"
                            f"{max(g, int(h * scale) // g * g)}")
    for m in methods:
        try:
            model.config.rope_settings(m)
        except ValueError as e:
            raise EvalError(str(e)) from None


@torch.no_grad()
def classify(classifier: ShapeClassifier, images: torch.Tensor, batch_size: int = 128):
    """(predicted classes (N,), features (N, D)) of images (N, 3, H, W) in [-1, 1]."""
    preds, feats = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk)
        feats.append(f)
        preds.append(classifier.head(f).argmax(1))
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()


def reference_images(height: int, width: int, count: int, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """``count`` procedural images (classes in turn) of one size: what a perfect generator would give."""
    rng = np.random.default_rng([seed, height, width])
    return torch.from_numpy(np.stack([draw(rng, i % len(SHAPES), height, width) for i in range(count)]))


def generate(model: FiT, height: int, width: int, method: str, settings: EvalSettings,
             decoder: Optional[LatentDecoder] = None) -> tuple[torch.Tensor, np.ndarray]:
    """(images (N, 3, H, W) clamped to [-1, 1], labels (N,)) for one pixel size and RoPE method."""
    d = decoder.downsample if decoder else 1
    labels = np.repeat(np.arange(len(SHAPES)), settings.num_per_class)
    out = []
    for start in range(0, len(labels), settings.batch_size):
        chunk = labels[start:start + settings.batch_size]
        reqs = [(height // d, width // d, int(c)) for c in chunk]
        latents = sample(model, reqs, sampler=settings.sampler, cfg_scale=settings.cfg_scale, rope_method=method,
                         seed=settings.seed + start)
        out.append(decoder(torch.stack(latents)) if decoder else torch.stack(latents))
    return torch.cat(out).clamp(-1, 1), labels


def _tables_key(model: FiT, method: str, tokens_h: int, tokens_w: int) -> bytes:
    cos, sin = rope_tables(model.config.rope_settings(method), tokens_h, tokens_w)
    return cos.tobytes() + sin.tobytes()


def evaluate(model: FiT, classifier: ShapeClassifier, sizes: Sequence[tuple[int, int]],
             methods: Sequence[str] = METHODS, settings: Optional[EvalSettings] = None,
             progress: Optional[Callable[[str], None]] = None, decoder: Optional[LatentDecoder] = None) -> list[Row]:
    """One :class:`Row` per (size, method); sizes are (height, width) tuples in pixels (messages and the table
    write them WIDTHxHEIGHT, the syntax of ``fit-eval --sizes``)."""
    settings = settings or EvalSettings()
    check_model(model, sizes, methods, decoder)
    rows = []
    g = model.patch_size * (decoder.downsample if decoder else 1)
    for h, w in sizes:
        ref = classify(classifier, reference_images(h, w, settings.reference_count))[1]
        measured: dict[bytes, Row] = {}
        for m in methods:
            key = _tables_key(model, m, h // g, w // g)
            if key in measured:
                first = measured[key]
                rows.append(Row(h, w, first.tokens, m, first.accuracy, first.fd, same_as=first.method))
                continue
            images, labels = generate(model, h, w, m, settings, decoder)
            pred, feats = classify(classifier, images)
            row = Row(h, w, (h // g) * (w // g), m, class_accuracy(pred, labels), frechet_distance_of(feats, ref))
            measured[key] = row
            rows.append(row)
            if progress:
                progress(f"{w}x{h} {m}: accuracy {row.accuracy:.3f}, FD {row.fd:.2f}")
    return rows


def describe(settings: EvalSettings) -> str:
    """One line naming how the numbers were made: sampler, its steps (dopri5: tolerances) and time shift,
    guidance, samples per class, seed and the reference images of the FD."""
    s = settings.sampler
    steps = f"atol {s.atol:g}, rtol {s.rtol:g}" if s.method == "dopri5" else f"{s.steps} step{'s' * (s.steps != 1)}"
    shift = f", time shift {s.time_shift:g}" if s.method in SHIFTED else ""
    shift += f", tail compression {s.tail_compression:g}" if s.tail_compression else ""
    return (f"Sampler {s.method} ({steps}{shift}), guidance {settings.cfg_scale:g}, {settings.num_per_class} "
            f"samples per class, seed {settings.seed}; FD against {settings.reference_count} procedural images.")


def format_table(rows: Sequence[Row], budget: Optional[int] = None, settings: Optional[EvalSettings] = None) -> str:
    """Markdown table: one line per size (WIDTHxHEIGHT) and method, accuracy (%) and FD (lower is better); with
    ``settings``, headed by the line that :func:`describe` gives and a blank line."""
    lines = [describe(settings), ""] if settings else []
    lines += ["| size (WxH) | tokens | method | accuracy % | FD |", "|---|---:|---|---:|---:|"]
    for r in rows:
        tokens = f"{r.tokens}" + (" (beyond budget)" if budget and r.tokens > budget else "")
        note = f" (= {METHOD_TITLES.get(r.same_as, r.same_as)})" if r.same_as else ""
        lines.append(f"| {r.width}x{r.height} | {tokens} | {METHOD_TITLES.get(r.method, r.method)}{note} | "
                     f"{100 * r.accuracy:.1f} | {r.fd:.2f} |")
    return "\n".join(lines)
