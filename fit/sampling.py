"""``sample``: latents for a list of :class:`LatentRequest` (latent height, width, label), mixed sizes in one
padded batch. The runtime's pixel-space request is :class:`engines.pipeline.Request` (width, height, label, seed)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from engines import noise as portable_noise
from engines.rope import rope_tables
from fit.ddpm import ddpm_sample
from fit.flow import SamplerSettings, guide, integrate, patchify, unpatchify
from fit.model import FiT


@dataclass(frozen=True)
class LatentRequest:
    """One latent to generate: latent height and width (multiples of the patch size) and a class label."""

    height: int
    width: int
    label: int


def request_noise(model: FiT, req: LatentRequest, seed: int) -> torch.Tensor:
    """Initial noise (C, H, W) of one request, independent of what else shares its batch: the runtimes' portable
    generator (:mod:`engines.noise`, docs/runtime-spec.md), so one seed starts from the same noise here, in
    fit-run and in the JavaScript runtime."""
    return torch.from_numpy(portable_noise.standard_normal(seed, (model.in_channels, req.height, req.width)))


class PaddedBatch:
    """Requests packed as one (B, N_max) token batch with masks and RoPE tables."""

    def __init__(self, model: FiT, requests: Sequence[LatentRequest], rope_method: Optional[str], noise, device,
                 dtype):
        p = model.patch_size
        settings = model.config.rope_settings(rope_method)
        self.grids = []
        for r in requests:
            if r.height % p or r.width % p or r.height < p or r.width < p:
                raise ValueError(f"latent size {r.height}x{r.width} is not a positive multiple of the patch size {p}")
            if not 0 <= r.label <= model.num_classes:
                raise ValueError(f"label {r.label} is outside 0..{model.num_classes}")
            self.grids.append((r.height // p, r.width // p))
        self.lengths = [h * w for h, w in self.grids]
        n = max(self.lengths)
        b = len(requests)
        self.x = torch.zeros(b, n, model.config.token_dim, dtype=dtype)
        self.mask = torch.zeros(b, n, dtype=dtype)
        self.cos = torch.zeros(b, n, settings.head_dim, dtype=torch.float32)
        self.sin = torch.zeros_like(self.cos)
        for i, ((h, w), length) in enumerate(zip(self.grids, self.lengths)):
            self.x[i, :length] = patchify(noise[i], p).to(dtype)
            self.mask[i, :length] = 1
            cos, sin = rope_tables(settings, h, w)
            self.cos[i, :length] = torch.from_numpy(np.array(cos))
            self.sin[i, :length] = torch.from_numpy(np.array(sin))
        self.y = torch.tensor([r.label for r in requests], dtype=torch.long)
        for name in ("x", "mask", "cos", "sin", "y"):
            setattr(self, name, getattr(self, name).to(device))

    def unpack(self, x: torch.Tensor, p: int) -> list[torch.Tensor]:
        return [unpatchify(x[i, :length].float().cpu(), h, w, p)
                for i, ((h, w), length) in enumerate(zip(self.grids, self.lengths))]


@torch.no_grad()
def sample(model: FiT, requests: Sequence, *, sampler: SamplerSettings | None = None, cfg_scale: float = 1.0,
           scale_pow: float = 0.0, rope_method: Optional[str] = None, seed: int = 0,
           noise: Optional[Sequence[torch.Tensor]] = None, device=None) -> list[torch.Tensor]:
    """Generate latents (C, H, W) for ``requests``: :class:`LatentRequest` or (height, width, label) tuples, in
    latent pixels.

    FiTv2 models integrate the rectified-flow ODE/SDE given by ``sampler`` (method, steps, time shift: the
    torch twins of the runtime's samplers, :func:`fit.flow.integrate`); FiT v1 models (learned sigma) run the
    respaced DDPM sampler with ``sampler.steps`` steps. ``rope_method`` picks an extrapolation method
    (default: the model's own), computed for each request's own grid. Request i starts from
    ``noise[i]`` or from the portable noise of seed ``seed + i`` (the runtimes' generator, so the same seed gives
    the same image as fit-run up to float32 rounding); the sde sampler draws its steps' noise from that seed too.
    Results do not depend on how requests are batched.
    """
    requests = [r if isinstance(r, LatentRequest) else LatentRequest(*r) for r in requests]
    sampler = sampler or SamplerSettings()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if noise is None:
        noise = [request_noise(model, r, seed + i) for i, r in enumerate(requests)]
    batch = PaddedBatch(model, requests, rope_method, noise, device, dtype)
    use_cfg = cfg_scale != 1.0
    p = model.patch_size
    guided = (model.config.cfg_channels or model.in_channels) * p * p
    layout_dim = -1 if model.use_sit else 1

    def net(x, t):
        """Network output for state x (B, N, C) at t (B,), guided when CFG is on."""
        cond = dict(mask=batch.mask, rope_cos=batch.cos, rope_sin=batch.sin)
        xin = x if model.use_sit else x.transpose(1, 2)
        if not use_cfg:
            out = model(xin, t, batch.y, **cond)
        else:
            null = torch.full_like(batch.y, model.num_classes)
            out = model(torch.cat([xin, xin]), torch.cat([t, t]), torch.cat([batch.y, null]),
                        **{k: torch.cat([v, v]) for k, v in cond.items()})
            out = guide(out, cfg_scale, t, guided, channel_dim=layout_dim, scale_pow=scale_pow)
        return out if model.use_sit else out.transpose(1, 2)

    generator = torch.Generator(device=device).manual_seed(int(seed))
    if model.learn_sigma:
        x = ddpm_sample(net, batch.x, sampler.steps, channel_dim=-1, generator=generator)
    else:
        draw = portable_noise.sde_draw([seed + i for i in range(len(requests))], batch.lengths)   # the runtime's
        x = integrate(net, batch.x, sampler, generator, draw=lambda shape: torch.from_numpy(draw(shape)))
    return batch.unpack(x, p)
