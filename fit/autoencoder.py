"""A tiny SD-VAE-like autoencoder for the procedural shapes: the latent space of the latent default model.

The official pipeline trains FiTv2 in the latent space of the SD VAE (8x downsampling, 4 channels, latents scaled
by ``scaling_factor`` to unit variance). This module trains a diffusers ``AutoencoderKL`` of the same layout, only
much smaller, on :mod:`fit.data.procedural` images, and saves it with ``save_pretrained`` (the sd-vae-ft-ema folder
layout), so ``fit-train prepare --vae DIR`` and ``fit-export onnx --vae DIR`` load it like the real one.

Loss: L1 + MSE reconstruction of random square crops plus a small KL term, the recipe of the SD VAE without its
perceptual and adversarial terms (flat-coloured shapes do not need them). ``scaling_factor`` is set after training
to 1 / std of the posterior means of whole images, as Stable Diffusion computed its 0.18215.

``decoder_only`` continues a trained autoencoder with its encoder frozen, as sd-vae-ft-ema was made from the SD
VAE: the latent space (and ``scaling_factor``) stays the same, so latents prepared with the first version and a
diffusion model trained on them remain valid, while the decoder keeps improving.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from engines.atomic import atomic_file, atomic_write
from fit.data.procedural import ProceduralShapes


#################################################################################
#                                   Model                                       #
#################################################################################

@dataclass
class AutoencoderSettings:
    """The network (``block_out_channels`` .. ``norm_num_groups``) and its training run."""

    block_out_channels: tuple = (32, 64, 64, 64)   # one entry per level: 4 levels = 3 downsamplings = 8x
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    steps: int = 1200
    batch_size: int = 16
    crop: int = 48                      # training crops (pixels, a multiple of the downsampling)
    lr: float = 1e-3
    warmup_steps: int = 100             # linear warmup, then cosine decay to lr / 10
    kl_weight: float = 1e-6
    seed: int = 0
    max_tokens: int = 24                # canvases of the images the crops come from: 16..max_tokens tokens of
    token_pixels: int = 16              # token_pixels x token_pixels (= latent patch 2 x 8x downsampling)
    scale_images: int = 256             # whole images whose latents set scaling_factor
    init_from: Optional[str] = None     # a saved autoencoder folder to continue from (its network settings win)
    decoder_only: bool = False          # freeze the encoder (needs init_from): same latents, better decoder

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must be a multiple of norm_num_groups "
                             f"{self.norm_num_groups}, got {self.block_out_channels}")
        if self.crop % self.downsample or self.crop > 3 * self.token_pixels:
            raise ValueError(f"crop must be a multiple of the downsampling {self.downsample} and at most "
                             f"{3 * self.token_pixels} px (the shortest canvas side), got {self.crop}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be at least 1 and lr positive")
        if self.decoder_only and not self.init_from:
            raise ValueError("decoder-only training continues a trained autoencoder: pass init_from (--init DIR)")


def build_autoencoder(settings: AutoencoderSettings):
    """A diffusers ``AutoencoderKL`` with the SD-VAE block types at the sizes of ``settings``, or the one saved in
    ``settings.init_from``."""
    from diffusers import AutoencoderKL

    if settings.init_from:
        if not os.path.isfile(os.path.join(settings.init_from, "config.json")):
            raise ValueError(f"{settings.init_from} is not a saved autoencoder folder (no config.json)")
        return AutoencoderKL.from_pretrained(settings.init_from, local_files_only=True)
    levels = len(settings.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=settings.block_out_channels,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=settings.layers_per_block,
                         latent_channels=settings.latent_channels, norm_num_groups=settings.norm_num_groups,
                         sample_size=64, scaling_factor=1.0)


#################################################################################
#                                    Data                                       #
#################################################################################

def shapes_for(settings: AutoencoderSettings, seed: int) -> ProceduralShapes:
    return ProceduralShapes(seed=seed, patch_size=settings.token_pixels, max_tokens=settings.max_tokens,
                            min_tokens=min(16, settings.max_tokens))


def crop_batch(shapes: ProceduralShapes, start: int, batch_size: int, crop: int) -> torch.Tensor:
    """(B, 3, crop, crop) random crops of items start .. start + B; the crop position is seeded by the item."""
    out = []
    for index in range(start, start + batch_size):
        img, _ = shapes.image(index)                                   # (3, H, W) in [-1, 1]
        rng = np.random.default_rng([shapes.seed, index, 1])
        top = int(rng.integers(img.shape[1] - crop + 1))
        left = int(rng.integers(img.shape[2] - crop + 1))
        out.append(torch.from_numpy(img[:, top:top + crop, left:left + crop].copy()))
    return torch.stack(out)


#################################################################################
#                                  Training                                     #
#################################################################################

def _lr_factor(step: int, settings: AutoencoderSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def latent_scaling_factor(vae, images: list[torch.Tensor]) -> float:
    """1 / std of the posterior means of ``images`` (each (3, H, W) in [-1, 1])."""
    means = [vae.encode(x[None]).latent_dist.mean.flatten() for x in images]
    return float(1.0 / torch.cat(means).std())


@torch.no_grad()
def reconstruction_grid(vae, images: list[torch.Tensor]) -> Image.Image:
    """Originals (top row) above their reconstructions (bottom row), each image in its own size."""
    recon = [vae.decode(vae.encode(x[None]).latent_dist.mean).sample[0].clamp(-1, 1) for x in images]
    to_pil = lambda x: Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    width = sum(x.shape[2] + 4 for x in images)
    height = max(x.shape[1] for x in images)
    grid = Image.new("RGB", (width, 2 * height + 4), (128, 128, 128))
    left = 0
    for original, rebuilt in zip(images, recon):
        grid.paste(to_pil(original), (left, 0))
        grid.paste(to_pil(rebuilt), (left, height + 4))
        left += original.shape[2] + 4
    return grid


def train_autoencoder(settings: AutoencoderSettings, out_dir: str, progress: bool = True, log=print) -> dict:
    """Train, set ``scaling_factor``, and ``save_pretrained`` into ``out_dir`` (plus ``reconstructions.png`` and
    ``loss.csv``). Returns {"loss_first", "loss_last", "scaling_factor", "recon_l1", "seconds"}."""
    torch.manual_seed(settings.seed)
    vae = build_autoencoder(settings)
    log(f"autoencoder: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters "
        f"(decoder {sum(p.numel() for p in vae.decoder.parameters()) / 1e6:.2f} M), "
        f"{2 ** (len(vae.config.block_out_channels) - 1)}x downsampling, {vae.config.latent_channels} latent "
        f"channels" + (", encoder frozen" if settings.decoder_only else ""))
    if settings.decoder_only:
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    trained = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, settings))
    shapes = shapes_for(settings, settings.seed)
    noise = torch.Generator().manual_seed(settings.seed)
    os.makedirs(out_dir, exist_ok=True)
    losses, start = [], time.time()
    with open(os.path.join(out_dir, "loss.csv"), "w") as csv:
        csv.write("step,loss,l1,kl\n")
        for step in tqdm(range(settings.steps), desc="autoencoder", unit="step", disable=not progress):
            x = crop_batch(shapes, step * settings.batch_size, settings.batch_size, settings.crop)
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise)
            y = vae.decode(z).sample
            l1 = (y - x).abs().mean()
            kl = posterior.kl().mean() / x[0].numel()                # per pixel, like the reconstruction terms
            loss = l1 + F.mse_loss(y, x) + settings.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % 50 == 0 or step == settings.steps - 1:
                csv.write(f"{step},{loss.item():.5f},{l1.item():.5f},{kl.item():.3f}\n")
                csv.flush()
    vae.eval()
    held_out = shapes_for(settings, settings.seed + 1)
    images = [torch.from_numpy(held_out.image(i)[0]) for i in range(settings.scale_images)]
    scaling = vae.config.scaling_factor if settings.decoder_only else latent_scaling_factor(vae, images)
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon_l1 = float(np.mean([(vae.decode(vae.encode(x[None]).latent_dist.mean).sample[0] - x).abs().mean()
                                  for x in images[:64]]))
    vae.save_pretrained(out_dir, safe_serialization=True)
    grid = reconstruction_grid(vae, images[:8])
    with atomic_file(os.path.join(out_dir, "reconstructions.png")) as f:
        grid.save(f, format="PNG")
    atomic_write(os.path.join(out_dir, "training.txt"), "".join(f"{k}: {v}\n" for k, v in asdict(settings).items()))
    result = dict(loss_first=float(np.mean(losses[:10])), loss_last=float(np.mean(losses[-10:])),
                  scaling_factor=scaling, recon_l1=recon_l1, seconds=time.time() - start)
    log(f"autoencoder: loss {result['loss_first']:.4f} -> {result['loss_last']:.4f}, held-out L1 "
        f"{recon_l1:.4f} (images in [-1, 1]), scaling_factor {scaling:.4f}, {result['seconds']:.0f} s")
    return result
