"""FiT v1's Gaussian diffusion sampler: linear betas, learned-range variance, respaced ancestral sampling.

Follows improved-diffusion as configured by the official FiT-XL YAML (1000 linear steps from 1e-4 to 0.02,
epsilon prediction, ``learn_sigma``, no timestep rescaling, no clipping of x0).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch


def linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    scale = 1000 / num_steps
    return np.linspace(scale * start, scale * end, num_steps, dtype=np.float64)


def respaced_timesteps(num_steps: int, count: int) -> list[int]:
    """Evenly spaced subset of ``count`` of ``num_steps`` timesteps (improved-diffusion's single section)."""
    if count > num_steps or count < 1:
        raise ValueError(f"cannot take {count} steps from {num_steps}")
    if count == 1:
        return [0]
    stride = (num_steps - 1) / (count - 1)
    # Accumulate the stride as improved-diffusion does: round(i * stride) differs for some counts (e.g. 21).
    taken, position = set(), 0.0
    for _ in range(count):
        taken.add(round(position))
        position += stride
    return sorted(taken)


class RespacedDiffusion:
    """Posterior coefficients of a diffusion restricted to a subset of the original timesteps."""

    def __init__(self, steps: int, num_train_steps: int = 1000):
        base_cumprod = np.cumprod(1.0 - linear_betas(num_train_steps))
        self.timestep_map = respaced_timesteps(num_train_steps, steps)
        betas, last = [], 1.0
        for i in self.timestep_map:
            betas.append(1 - base_cumprod[i] / last)
            last = base_cumprod[i]
        self.betas = betas = np.array(betas)
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        self.sqrt_recip_ac = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_ac = np.sqrt(1.0 / ac - 1)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.post_log_var_clipped = np.log(np.append(post_var[1], post_var[1:]))
        self.log_betas = np.log(betas)
        self.coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)

    def __len__(self):
        return len(self.betas)

    def step(self, x: torch.Tensor, i: int, eps: torch.Tensor, var_values: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step from respaced index i with the network's eps and variance interpolation."""
        f = lambda a: float(a[i])
        x0 = f(self.sqrt_recip_ac) * x - f(self.sqrt_recipm1_ac) * eps
        mean = f(self.coef1) * x0 + f(self.coef2) * x
        frac = (var_values + 1) / 2
        log_var = frac * f(self.log_betas) + (1 - frac) * f(self.post_log_var_clipped)
        return mean + (torch.exp(0.5 * log_var) * noise if i > 0 else 0)


def ddpm_sample(model_out: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int,
                channel_dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Run ``steps`` respaced steps. ``model_out(x, t)`` returns eps and variance values concatenated along
    ``channel_dim`` (the FiT v1 output); t are original-schedule timesteps."""
    diffusion = RespacedDiffusion(steps)
    for i in reversed(range(len(diffusion))):
        t = torch.full((x.shape[0],), diffusion.timestep_map[i], dtype=torch.long, device=x.device)
        out = model_out(x, t)
        eps, var_values = out.chunk(2, dim=channel_dim)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = diffusion.step(x, i, eps, var_values, noise)
    return x
