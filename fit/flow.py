"""Rectified flow (FiTv2): the interpolation path, training targets, guidance and samplers in torch.

Convention (the official one): x_t = t * x1 + (1 - t) * x0, t = 0 is pure noise x0, t = 1 is data x1, and the
network predicts the velocity v = x1 - x0. Sampling integrates dx/dt = v(x, t) from t = 0 to t = 1.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from engines.sampler import SHIFTED, SamplerSettings, _unipc_scalars, time_grid  # one definition for torch and numpy

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # v(x, t) with t of shape (B,)


#################################################################################
#                              Training quantities                              #
#################################################################################

def logit_normal_t(n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Timesteps t = sigmoid(u), u ~ N(0, 1) (the official ``lognorm`` SNR sampler)."""
    u = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(u)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
    """(x_t, velocity target) for noise x0, data x1 and t (B,)."""
    tt = t.view(-1, *([1] * (x1.dim() - 1)))
    return tt * x1 + (1 - tt) * x0, x1 - x0


def masked_velocity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Official loss: mean over all positions of the masked squared error, times N / n_real, per sample -> (B,).

    pred, target: (B, N, C); mask: (B, N).
    """
    m = mask.to(pred.dtype)[..., None]
    ratio = mask.shape[-1] / mask.count_nonzero(dim=-1).clamp_min(1).to(pred.dtype)
    return (((pred - target) * m) ** 2).mean(dim=(1, 2)) * ratio


#################################################################################
#                          Classifier-free guidance                             #
#################################################################################

def guidance_scale(cfg_scale: float, t: torch.Tensor, scale_pow: float = 0.0) -> torch.Tensor:
    """Per-sample guidance scale (B,). With ``scale_pow`` > 0 the official power-cosine schedule lowers it
    from ``cfg_scale`` at t = 0 (noise) to 1 at t = 1 (data)."""
    if scale_pow == 0.0:
        return torch.full_like(t, float(cfg_scale), dtype=torch.float32)
    step = (1 - torch.cos(((1 - t.clamp_max(1.0)) ** scale_pow) * math.pi)) / 2
    return (cfg_scale - 1) * step + 1


def guide(out: torch.Tensor, cfg_scale: float, t: torch.Tensor, guided: int, scale_pow: float = 0.0,
          channel_dim: int = -1) -> torch.Tensor:
    """Combine a [cond; uncond] output (2B, ...) into (B, ...); the torch twin of :func:`engines.sampler.guide`
    (same arguments in the same order, plus ``channel_dim`` for the FiT v1 channel-first layout).

    The first ``guided`` entries along ``channel_dim`` become uncond + s (cond - uncond); the others keep the
    conditional prediction (official behaviour with guided = 3 * p * p of 4 * p * p).
    """
    cond, uncond = out.chunk(2, dim=0)
    s = guidance_scale(cfg_scale, t, scale_pow).to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
    mixed = uncond + s * (cond - uncond)
    if guided >= out.shape[channel_dim]:
        return mixed
    return torch.cat([mixed.narrow(channel_dim, 0, guided),
                      cond.narrow(channel_dim, guided, cond.shape[channel_dim] - guided)], dim=channel_dim)


#################################################################################
#                                   Samplers                                    #
#################################################################################

def _full(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def euler(v: Velocity, x: torch.Tensor, steps: int, shift: float = 1.0, tail: float = 0.0) -> torch.Tensor:
    """x <- x + (t1 - t0) v(x, t0) on ``time_grid(steps, shift, tail)``, one evaluation per step (twin of
    :func:`engines.sampler.euler`)."""
    for t0, t1 in time_grid(steps, shift, tail):
        x = x + (t1 - t0) * v(x, _full(t0, x))
    return x


def heun(v: Velocity, x: torch.Tensor, steps: int, shift: float = 1.0, tail: float = 0.0) -> torch.Tensor:
    """Explicit trapezoidal rule (second order), 2 evaluations per step (twin of :func:`engines.sampler.heun`)."""
    for t0, t1 in time_grid(steps, shift, tail):
        h = t1 - t0
        k1 = v(x, _full(t0, x))
        k2 = v(x + h * k1, _full(t1, x))
        x = x + 0.5 * h * (k1 + k2)
    return x


def ab2(v: Velocity, x: torch.Tensor, steps: int, shift: float = 1.0, tail: float = 0.0) -> torch.Tensor:
    """Two-step Adams-Bashforth for uneven steps (second order), one evaluation per step (twin of
    :func:`engines.sampler.ab2`): with h = t1 - t0 and r = h / (t0 - t_prev),
    x <- x + h (1 + r/2) v(x, t0) - h (r/2) v_prev; the first step is Euler's."""
    previous = None                                    # (h, k) of the step before
    for t0, t1 in time_grid(steps, shift, tail):
        h = t1 - t0
        k = v(x, _full(t0, x))
        if previous is None:
            x = x + h * k
        else:
            r = h / previous[0]
            x = (x + h * (1.0 + 0.5 * r) * k) - 0.5 * h * r * previous[1]
        previous = (h, k)
    return x


def _unipc_update(x_s: torch.Tensor, s: float, t: float, m_s: torch.Tensor, before: Optional[tuple],
                  m_t: Optional[torch.Tensor]) -> torch.Tensor:
    """One UniPC step s -> t in data prediction (twin of :func:`engines.sampler._unipc_update`, with its
    coefficients): the predictor UniP-2 when ``m_t`` is None, else the corrector UniC with the data prediction
    ``m_t`` at t. ``before``: (time, data prediction) of the point before s, or None."""
    a, b, r, rho1, rho2 = _unipc_scalars(s, t, None if before is None else before[0])
    base = a * x_s - b * m_s
    if r is not None:
        d1 = (before[1] - m_s) / r
    if m_t is None:
        return base - b * 0.5 * d1 if r is not None else base
    if r is None:
        return base - b * 0.5 * (m_t - m_s)
    return base - b * (rho1 * d1 + rho2 * (m_t - m_s))


def unipc(v: Velocity, x: torch.Tensor, steps: int, shift: float = 1.0, tail: float = 0.0) -> torch.Tensor:
    """UniPC-2 in data prediction, one evaluation per step (twin of :func:`engines.sampler.unipc`): each
    evaluation v(x, t_i) gives m_i = x + (1 - t_i) v, first corrects the step that led to t_i (UniC), then
    predicts the next point (UniP-2); the last step lands on the data prediction."""
    previous = None                                    # (x_s, s, m_s, before) of the step that led here
    before = None
    for t0, t1 in time_grid(steps, shift, tail):
        k = v(x, _full(t0, x))
        m = x + (1.0 - t0) * k
        if previous is not None:
            x_s, s, m_s, before_s = previous
            x = _unipc_update(x_s, s, t0, m_s, before_s, m)
            before = (s, m_s)
        previous = (x, t0, m, before)
        x = _unipc_update(x, t0, t1, m, before, None)
    return x


def dopri5(v: Velocity, x: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-3) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) through torchdiffeq (the paper's FID setting: atol 1e-6, rtol 1e-3)."""
    from torchdiffeq import odeint

    ts = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    return odeint(lambda t, y: v(y, t.expand(y.shape[0]).to(y.dtype)), x, ts, method="dopri5",
                  atol=atol, rtol=rtol)[-1]


def sde(v: Velocity, x: torch.Tensor, steps: int, diffusion_norm: float = 1.0, last_step_size: float = 0.04,
        generator: Optional[torch.Generator] = None,
        draw: Optional[Callable[[tuple], torch.Tensor]] = None) -> torch.Tensor:
    """The official SDE sampler for a velocity model on the linear path (twin of :func:`engines.sampler.sde`).

    score = (t v - x) / (1 - t), diffusion w(t) = norm (1 - t), drift = v + w score, integrated by
    Euler-Maruyama over ``steps - 1`` steps on [0, 1 - last_step_size], then one deterministic mean step.
    ``draw(x.shape)`` gives each step's noise, once per step in order (as in the runtime); without it
    ``torch.randn`` with ``generator``.
    """
    t_end = 1.0 - last_step_size
    ts = torch.linspace(0, t_end, steps, dtype=torch.float64)
    dt = float(ts[1] - ts[0]) if steps > 1 else 0.0

    def drift(x, t):
        tt = t.view(-1, *([1] * (x.dim() - 1)))
        vel = v(x, t)
        score = (tt * vel - x) / (1 - tt)
        return vel + diffusion_norm * (1 - tt) * score, diffusion_norm * (1 - tt)

    for t in ts[:-1].tolist():
        d, w = drift(x, _full(t, x))
        if draw is not None:
            noise = draw(tuple(x.shape)).to(dtype=x.dtype, device=x.device)
        else:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + d * dt + torch.sqrt(2 * w) * noise * math.sqrt(dt)
    if last_step_size > 0:
        x = x + drift(x, _full(t_end, x))[0] * last_step_size
    return x


def integrate(v: Velocity, x: torch.Tensor, settings: SamplerSettings,
              generator: Optional[torch.Generator] = None,
              draw: Optional[Callable[[tuple], torch.Tensor]] = None) -> torch.Tensor:
    """Run the sampler ``settings.method`` from noise x (B, N, C) at t = 0 to data at t = 1 (twin of
    :func:`engines.sampler.integrate`); ``draw`` or ``generator`` gives the sde sampler's noise."""
    if settings.method in SHIFTED:
        fixed = {"euler": euler, "heun": heun, "ab2": ab2, "unipc": unipc}[settings.method]
        return fixed(v, x, settings.steps, settings.time_shift, settings.tail_compression)
    if settings.method == "dopri5":
        return dopri5(v, x, settings.atol, settings.rtol)
    return sde(v, x, settings.steps, settings.diffusion_norm, settings.last_step_size, generator, draw)


#################################################################################
#                         Tokens <-> latent images                              #
#################################################################################

def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """(C, H, W) -> (H/p * W/p, C*p*p), row-major tokens, channel order (c, p1, p2)."""
    c, h, w = latent.shape
    x = latent.reshape(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4)
    return x.reshape((h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """(h*w, C*p*p) tokens of an h x w patch grid -> (C, h*p, w*p)."""
    c = tokens.shape[-1] // (p * p)
    x = tokens.reshape(h, w, c, p, p).permute(2, 0, 3, 1, 4)
    return x.reshape(c, h * p, w * p)
