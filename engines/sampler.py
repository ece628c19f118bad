"""Rectified-flow samplers and classifier-free guidance in numpy, numerically matching ``fit/flow.py``.

Convention: x_t = t * data + (1 - t) * noise; t = 0 is noise, t = 1 is data; the network predicts the velocity
v = data - noise. Sampling integrates dx/dt = v(x, t) from t = 0 to t = 1. The state x is float32 and keeps its
layout (B, N, C); times are float64 on the host and reach the network as float32 (B,) arrays, as in torch.

Every sampler takes ``v(x, t) -> velocity`` and an optional ``callback(done, total, t)`` called after each
completed step (``total`` is None for the adaptive dopri5, whose step count is not known in advance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

Velocity = Callable[[np.ndarray, np.ndarray], np.ndarray]       # v(x (B, N, C), t (B,)) -> (B, N, C)
Draw = Callable[[tuple], np.ndarray]                             # draw(shape) -> float32 standard normals
Callback = Callable[[int, Optional[int], float], None]           # (steps done, total steps or None, t reached)

F32 = np.float32
SAMPLERS = ("euler", "heun", "dopri5", "sde", "ab2", "unipc")
# The samplers that step along a fixed time grid, which the time shift and the tail compression bend; dopri5 chooses
# its own steps and sde keeps the official schedule.
SHIFTED = ("euler", "heun", "ab2", "unipc")
# Limits of a request (docs/runtime.md, "Limits and interruptions"). Steps: Euler's error falls as 1/steps and
# Heun's as 1/steps^2, so a few hundred steps (the official SDE sampler uses 250) already give the 8-bit image
# they converge to; 10,000 is far beyond that and is also dopri5's step limit. Guidance: a scale s multiplies
# the cond - uncond velocity difference in float32; s <= 1000 keeps s * |v| and the latents it integrates far
# below float32's 3.4e38 for any velocity a working model predicts (a broken graph is caught by the finiteness
# check on the sampled latents instead).
MAX_STEPS = 10_000
MAX_CFG = 1000.0
# Time shift: the useful range is about 0.5 to 6 (SD3 uses 3; benchmarks/sampler_quality.py); far outside it the
# grid collapses onto t = 0 or t = 1 and steps of zero length would divide by zero.
MIN_TIME_SHIFT = 0.01
MAX_TIME_SHIFT = 100.0
# Tail compression c, from 0 (none) to 1: above 1 the warp t + c t (1 - t) would pass t = 1 and come back.
MAX_TAIL_COMPRESSION = 1.0


class SettingError(ValueError):
    """A sampler or guidance setting out of range. ``parameter`` names the setting (``steps``, ``cfg``), so a
    command line can name its flag instead; the message starts with that name."""

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


def check_steps(steps, maximum: int = MAX_STEPS) -> int:
    """``steps`` as an int if it is a whole number from 1 to ``maximum`` (at most :data:`MAX_STEPS`); SettingError
    otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= maximum:
        raise SettingError(f"steps must be a whole number from 1 to {maximum:,}, got {steps!r}", "steps")
    return int(steps)


def check_time_shift(shift) -> float:
    """``shift`` as a float if it is a number from :data:`MIN_TIME_SHIFT` to :data:`MAX_TIME_SHIFT`; SettingError
    otherwise (nan too)."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float, np.integer, np.floating)) \
            or not MIN_TIME_SHIFT <= shift <= MAX_TIME_SHIFT:
        raise SettingError(f"time_shift must be a number from {MIN_TIME_SHIFT:g} to {MAX_TIME_SHIFT:g}, got "
                           f"{shift!r}", "time_shift")
    return float(shift)


def check_tail_compression(compression) -> float:
    """``compression`` as a float if it is a number from 0 to :data:`MAX_TAIL_COMPRESSION`; SettingError otherwise
    (nan too)."""
    if isinstance(compression, bool) or not isinstance(compression, (int, float, np.integer, np.floating)) \
            or not 0 <= compression <= MAX_TAIL_COMPRESSION:
        raise SettingError(f"tail_compression must be a number from 0 to {MAX_TAIL_COMPRESSION:g}, got "
                           f"{compression!r}", "tail_compression")
    return float(compression)


def check_cfg(cfg, maximum: float = MAX_CFG) -> float:
    """``cfg`` as a float if it is a guidance scale from 0 to ``maximum`` (at most :data:`MAX_CFG`); SettingError
    otherwise (nan too)."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float, np.integer, np.floating)) \
            or not 0 <= cfg <= maximum:
        raise SettingError(f"cfg must be a number from 0 to {maximum:g}, got {cfg!r}", "cfg")
    return float(cfg)


@dataclass(frozen=True)
class SamplerSettings:
    """How to integrate from noise to data. ``method``: euler | heun | ab2 | unipc (on a time grid bent by
    ``time_shift``, 1 = even steps, and ``tail_compression``, 0 = none: :func:`time_grid`) | dopri5 | sde (official
    SDE defaults)."""

    method: str = "euler"
    steps: int = 50
    atol: float = 1e-6
    rtol: float = 1e-3
    diffusion_norm: float = 1.0
    last_step_size: float = 0.04
    time_shift: float = 1.0
    tail_compression: float = 0.0

    def __post_init__(self):
        if self.method not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.method!r}; choose one of {', '.join(SAMPLERS)}")
        integral = isinstance(self.steps, float) and self.steps.is_integer()
        check_steps(int(self.steps) if integral else self.steps)
        if self.atol <= 0 or self.rtol <= 0:
            raise ValueError("dopri5 tolerances atol and rtol must be positive")
        object.__setattr__(self, "time_shift", check_time_shift(self.time_shift))     # a float, as recorded
        object.__setattr__(self, "tail_compression", check_tail_compression(self.tail_compression))
        for name, neutral in (("time_shift", 1.0), ("tail_compression", 0.0)):
            if getattr(self, name) != neutral and self.method not in SHIFTED:
                raise SettingError(f"{name} applies to {', '.join(SHIFTED)}, not {self.method}, which keeps its own "
                                   f"schedule", name)

    @property
    def rows_independent(self) -> bool:
        """Whether a row sampled in a shared batch comes out as it would alone. Fixed-step euler and heun: yes.
        dopri5 adapts its step size to the error norm of the whole batch, and sde draws its noise from one
        stream for the whole batch, so their rows depend on the batch they share."""
        return self.method in SHIFTED

    def evaluations(self) -> Optional[int]:
        """Network evaluations the sampler makes (None for dopri5: adaptive)."""
        return None if self.method == "dopri5" else 2 * self.steps if self.method == "heun" else self.steps


def _full(t: float, x: np.ndarray) -> np.ndarray:
    return np.full((x.shape[0],), t, dtype=F32)


def _notify(callback: Optional[Callback], done: int, total: Optional[int], t: float) -> None:
    if callback is not None:
        callback(done, total, float(t))


# ----------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------------------------

def guidance_scale(cfg_scale, t: np.ndarray, scale_pow: float = 0.0) -> np.ndarray:
    """Per-sample guidance scale (B,) float32; ``cfg_scale`` is one number or one per sample. With ``scale_pow`` > 0
    the official power-cosine schedule lowers it from ``cfg_scale`` at t = 0 (noise) to 1 at t = 1 (data):
    s(t) = (cfg - 1) (1 - cos(pi (1 - t)^pow)) / 2 + 1."""
    t = np.asarray(t, dtype=F32)
    cfg = np.broadcast_to(np.asarray(cfg_scale, dtype=np.float64), t.shape)
    if scale_pow == 0.0:
        return cfg.astype(F32)
    # pow and cos go through float64, rounded once (reproducible in any language; docs/runtime-spec.md §7)
    angle = np.power((F32(1) - np.minimum(t, F32(1))).astype(np.float64), float(F32(scale_pow))).astype(F32)
    step = (F32(1) - np.cos((angle * F32(math.pi)).astype(np.float64)).astype(F32)) / F32(2)
    return ((cfg - 1).astype(F32) * step + F32(1)).astype(F32)


def guide(out: np.ndarray, cfg_scale: float, t: np.ndarray, guided: int, scale_pow: float = 0.0) -> np.ndarray:
    """Combine a [cond; uncond] network output (2B, N, C) into (B, N, C).

    The first ``guided`` channels become uncond + s (cond - uncond); the others keep the conditional output
    (the official rule: guided = cfg_channels * p * p, e.g. 3 of 4 latent channels).
    """
    cond, uncond = np.split(out, 2, axis=0)
    s = guidance_scale(cfg_scale, t, scale_pow).astype(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
    mixed = uncond + s * (cond - uncond)
    if guided >= out.shape[-1]:
        return mixed
    return np.concatenate([mixed[..., :guided], cond[..., guided:]], axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Fixed-step samplers
# ----------------------------------------------------------------------------------------------------------

def shift_time(u: float, shift: float) -> float:
    """u / (u + shift (1 - u)) in float64: the time at fraction u of the steps (u itself when shift is 1). With
    shift > 1 the steps are shorter near noise (t = 0), as in SD3 and Flux; u = 0 and 1 stay 0 and 1. Arithmetic
    only, so it also bends a tensor of training times (fit.train's ``timestep_shift``)."""
    return u if shift == 1.0 else u / (u + shift * (1.0 - u))


def compress_tail(t: float, compression: float) -> float:
    """t + c t (1 - t) in float64 (t itself when c = 0): with c > 0 the steps are shorter near data (t = 1), where
    the long last step of a shifted grid costs the most; c = 1 gives 1 - (1 - t)^2. 0 and 1 stay 0 and 1."""
    return t if compression == 0.0 else t + compression * t * (1.0 - t)


def time_grid(steps: int, shift: float = 1.0, tail: float = 0.0) -> Iterator[tuple[float, float]]:
    """The (t0, t1) of each of ``steps`` steps from 0 to 1, computed as they are needed (nothing is built up
    front): u_i = i * (1 / steps) in float64, u_steps = 1 (the values of ``numpy.linspace(0, 1, steps + 1)``),
    and t_i = compress_tail(shift_time(u_i, shift), tail)."""
    h = 1.0 / steps

    def at(u: float) -> float:
        return compress_tail(shift_time(u, shift), tail)

    for i in range(steps):
        yield at(i * h), at(1.0 if i + 1 == steps else (i + 1) * h)


def euler(v: Velocity, x: np.ndarray, steps: int, callback: Optional[Callback] = None,
          shift: float = 1.0, tail: float = 0.0) -> np.ndarray:
    """x <- x + (t1 - t0) v(x, t0); one evaluation per step."""
    for i, (t0, t1) in enumerate(time_grid(steps, shift, tail)):
        x = x + F32(t1 - t0) * v(x, _full(t0, x))
        _notify(callback, i + 1, steps, t1)
    return x


def heun(v: Velocity, x: np.ndarray, steps: int, callback: Optional[Callback] = None,
         shift: float = 1.0, tail: float = 0.0) -> np.ndarray:
    """Explicit trapezoidal rule (second order), two evaluations per step."""
    for i, (t0, t1) in enumerate(time_grid(steps, shift, tail)):
        h = t1 - t0
        k1 = v(x, _full(t0, x))
        k2 = v(x + F32(h) * k1, _full(t1, x))
        x = x + F32(0.5 * h) * (k1 + k2)
        _notify(callback, i + 1, steps, t1)
    return x


def ab2(v: Velocity, x: np.ndarray, steps: int, callback: Optional[Callback] = None,
        shift: float = 1.0, tail: float = 0.0) -> np.ndarray:
    """Two-step Adams-Bashforth for uneven steps (second order), one evaluation per step: with h = t1 - t0 and
    r = h / (t0 - t_prev), x <- x + h (1 + r/2) v(x, t0) - h (r/2) v_prev; the first step is Euler's."""
    previous = None                                    # (h, k) of the step before
    for i, (t0, t1) in enumerate(time_grid(steps, shift, tail)):
        h = t1 - t0
        k = v(x, _full(t0, x))
        if previous is None:
            x = x + F32(h) * k
        else:
            r = h / previous[0]
            x = (x + F32(h * (1.0 + 0.5 * r)) * k) - F32(0.5 * h * r) * previous[1]
        previous = (h, k)
        _notify(callback, i + 1, steps, t1)
    return x


# UniPC's scalars come from log(1 + x) computed with +, -, * and / alone, so that every runtime, in any language and
# on any platform, computes the same bits (the C library's log and expm1 and JavaScript's differ in the last bit
# for some inputs, and a coefficient rounded to float32 the other way changes the image).
_LN2 = 0.6931471805599453                              # float64 nearest log 2
_SQRT2 = 1.4142135623730951                            # float64 nearest sqrt 2
_ATANH = tuple(1.0 / n for n in range(23, 0, -2))      # 1/23, 1/21, ..., 1/3, 1


def _log1p(x: float) -> float:
    """log(1 + x) for x >= 0 (a few ulp): 1 + x = m 2^k with m in [sqrt(1/2), sqrt(2)) and log m = 2 atanh(f),
    f = (m - 1) / (m + 1), |f| < 0.172, summed to f^23; below sqrt(2) - 1, m - 1 is x itself (no rounding of 1 + x)."""
    k, d = 0, x                                        # d = m - 1
    if x >= _SQRT2 - 1.0:
        m = 1.0 + x
        while m >= _SQRT2:
            m *= 0.5                                   # exact
            k += 1
        d = m - 1.0                                    # exact: m is within a factor of 2 of 1
    f = d / (2.0 + d)
    f2 = f * f
    total = 0.0
    for c in _ATANH:
        total = total * f2 + c
    return k * _LN2 + 2.0 * f * total


def _log_snr_step(s: float, t: float) -> float:
    """lambda(t) - lambda(s) for 0 <= s < t <= 1, lambda(t) = log(t / (1 - t)) the log signal-to-noise ratio of the
    linear path (alpha = t, sigma = 1 - t): log1p((t - s) / (s (1 - t))), which keeps its precision for close s and
    t; inf when s = 0 or t = 1."""
    return math.inf if s <= 0.0 or t >= 1.0 else _log1p((t - s) / (s * (1.0 - t)))


def _unipc_scalars(s: float, t: float, before: Optional[float]) -> tuple:
    """The float64 coefficients of one UniPC step s -> t (B(h) = e^h - 1), shared by the numpy and torch twins:
    (a, b, r, rho1, rho2) with base = a x_s - b m_s; r, rho1, rho2 are None at first order, which is when there is
    no earlier point ``before`` (its time), it is t = 0, or h is infinite (s = 0 or t = 1)."""
    h = _log_snr_step(s, t)
    phi = (s - t) / (t * (1.0 - s))                                 # e^-h - 1 (-1 when h is inf)
    a, b = (1.0 - t) / (1.0 - s), t * phi
    if before is None or not before > 0.0 or not math.isfinite(h):
        return a, b, None, None, None
    r = -_log_snr_step(before, s) / h
    hh = -h
    b1 = (phi / hh - 1.0) / phi
    b2 = ((phi / hh - 1.0) / hh - 0.5) * 2.0 / phi
    rho1 = (b1 - b2) / (1.0 - r)
    return a, b, r, rho1, b1 - rho1


def _unipc_update(x_s: np.ndarray, s: float, t: float, m_s: np.ndarray, before: Optional[tuple],
                  m_t: Optional[np.ndarray]) -> np.ndarray:
    """One UniPC step s -> t in data prediction: the predictor UniP-2 when ``m_t`` is None, else the corrector UniC
    with the data prediction ``m_t`` at t. ``before``: (time, data prediction) of the point before s, or None."""
    a, b, r, rho1, rho2 = _unipc_scalars(s, t, None if before is None else before[0])
    base = F32(a) * x_s - F32(b) * m_s
    if r is not None:
        d1 = (before[1] - m_s) / F32(r)
    if m_t is None:
        return base - F32(b * 0.5) * d1 if r is not None else base
    if r is None:
        return base - F32(b * 0.5) * (m_t - m_s)
    return base - F32(b) * (F32(rho1) * d1 + F32(rho2) * (m_t - m_s))


def unipc(v: Velocity, x: np.ndarray, steps: int, callback: Optional[Callback] = None,
          shift: float = 1.0, tail: float = 0.0) -> np.ndarray:
    """UniPC (Zhao et al. 2023), second order, for velocity models: each evaluation v(x, t_i) gives the data
    prediction m_i = x + (1 - t_i) v; it first corrects the step that led to t_i (UniC, using m_i: no extra
    evaluation), then predicts the next point (UniP-2). One evaluation per step; the last step is first order
    (it lands on the data prediction)."""
    previous = None                                    # (x_s, s, m_s, before) of the step that led here
    before = None
    for i, (t0, t1) in enumerate(time_grid(steps, shift, tail)):
        k = v(x, _full(t0, x))
        m = x + F32(1.0 - t0) * k
        if previous is not None:
            x_s, s, m_s, before_s = previous
            x = _unipc_update(x_s, s, t0, m_s, before_s, m)
            before = (s, m_s)
        previous = (x, t0, m, before)
        x = _unipc_update(x, t0, t1, m, before, None)
        _notify(callback, i + 1, steps, t1)
    return x


def sde(v: Velocity, x: np.ndarray, steps: int, diffusion_norm: float = 1.0, last_step_size: float = 0.04,
        draw: Optional[Draw] = None, callback: Optional[Callback] = None) -> np.ndarray:
    """The official SDE sampler on the linear path.

    score = (t v - x) / (1 - t), diffusion w(t) = norm (1 - t), drift = v + w score; Euler-Maruyama over
    ``steps - 1`` steps on [0, 1 - last_step_size] with x += drift dt + sqrt(2 w) noise sqrt(dt), then one
    deterministic step of size ``last_step_size``. ``draw(x.shape)`` gives each step's noise (float32), once per step
    in order; without it numpy's default generator is used.
    """
    if draw is None:
        rng = np.random.default_rng()
        draw = lambda shape: rng.standard_normal(shape, dtype=F32)  # noqa: E731
    t_end = 1.0 - last_step_size
    ts = np.linspace(0.0, t_end, steps, dtype=np.float64)
    dt = float(ts[1] - ts[0]) if steps > 1 else 0.0

    def drift(x, t):
        tt = t.reshape(-1, *([1] * (x.ndim - 1)))
        vel = v(x, t)
        score = (tt * vel - x) / (F32(1) - tt)
        w = F32(diffusion_norm) * (F32(1) - tt)
        return vel + w * score, w

    for i, t in enumerate(ts[:-1].tolist()):
        d, w = drift(x, _full(t, x))
        noise = np.asarray(draw(x.shape), dtype=F32)
        x = x + d * F32(dt) + np.sqrt(F32(2) * w) * noise * F32(math.sqrt(dt))
        _notify(callback, i + 1, steps, float(ts[i + 1]))
    if last_step_size > 0:
        x = x + drift(x, _full(t_end, x))[0] * F32(last_step_size)
    _notify(callback, steps, steps, 1.0)
    return x


# ----------------------------------------------------------------------------------------------------------
# Adaptive Dormand-Prince 5(4)
# ----------------------------------------------------------------------------------------------------------
# The algorithm of torchdiffeq's ``dopri5`` (the reference sampler's integrator), step for step: Hairer's initial
# step selection, RMS error norm, safety 0.9, growth <= 10, shrink >= 0.2 on rejection, steps may overshoot t = 1
# and the answer is read from the 4th-order dense output. Times are float64; each step runs in float32.

_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_C_ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
            -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0)
_C_MID = (6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
          187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2)


def _rms(a: np.ndarray) -> float:
    """Root mean square, summed in float64 and rounded to float32 (order-independent to float32 rounding)."""
    return float(F32(np.sqrt(np.mean(np.square(a, dtype=np.float64)))))


def _combine(y0: np.ndarray, ks: list[np.ndarray], coeffs, dt: np.float32) -> np.ndarray:
    """y0 + sum_i k_i (coeff_i dt), the coefficients rounded to float32 like torchdiffeq's tableau."""
    total = np.zeros_like(y0)
    for k, c in zip(ks, coeffs):
        if c:
            total += k * (F32(c) * dt)
    return y0 + total


def _initial_step(v: Velocity, x: np.ndarray, f0: np.ndarray, atol: float, rtol: float, order: int = 4) -> float:
    scale = F32(atol) + np.abs(x) * F32(rtol)
    d0, d1 = _rms(x / scale), _rms(f0 / scale)
    h0 = F32(1e-6) if d0 < 1e-5 or d1 < 1e-5 else F32(0.01) * F32(d0) / F32(d1)
    f1 = v(x + h0 * f0, _full(float(h0), x))
    d2 = abs(F32(_rms((f1 - f0) / scale)) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(F32(1e-6), h0 * F32(1e-3))
    else:
        h1 = F32(float(F32(0.01) / F32(max(d1, float(d2)))) ** float(F32(1.0 / (order + 1))))
    return float(min(F32(100) * h0, h1))


def dopri5(v: Velocity, x: np.ndarray, atol: float = 1e-6, rtol: float = 1e-3, max_steps: int = MAX_STEPS,
           callback: Optional[Callback] = None) -> np.ndarray:
    """Adaptive Dormand-Prince 5(4) from t = 0 to 1 (the paper's FID setting: atol 1e-6, rtol 1e-3)."""
    f0 = v(x, _full(0.0, x))
    dt = _initial_step(v, x, f0, atol, rtol)
    t0, t1 = 0.0, 0.0
    y, f, interp = x, f0, None
    accepted = 0
    for _ in range(max_steps):
        if t1 >= 1.0:
            break
        t_start = t1
        t_end = t_start + dt
        dt32, ts32, te32 = F32(dt), F32(t_start), F32(t_end)
        ks = [f]
        for alpha, beta in zip(_ALPHA, _BETA):
            # Stages at alpha = 1 run just before the step end (torchdiffeq's Perturb.PREV).
            ti = np.nextafter(te32, F32(-np.inf)) if alpha == 1.0 else ts32 + F32(alpha) * dt32
            yi = _combine(y, ks, beta, dt32)
            ks.append(v(yi, np.full((x.shape[0],), ti, dtype=F32)))
        y_new, f_new = yi, ks[-1]
        error = _combine(np.zeros_like(y), ks, _C_ERROR, dt32)
        tolerance = F32(atol) + F32(rtol) * np.maximum(np.abs(y), np.abs(y_new))
        ratio = _rms(error / tolerance)
        if ratio <= 1:
            y_mid = _combine(y, ks, _C_MID, dt32)
            interp = _dense_output(y, y_new, y_mid, ks[0], ks[-1], dt32)
            t0, t1 = t_start, t_end
            y, f = y_new, f_new
            accepted += 1
            _notify(callback, accepted, None, min(t1, 1.0))
        dt = _next_step(dt, ratio)
    else:
        raise RuntimeError(f"dopri5 did not reach t = 1 in {max_steps} steps; loosen atol/rtol")
    s = F32((1.0 - t0) / (t1 - t0))
    total = interp[0] + s * interp[1]
    power = s
    for coefficient in interp[2:]:
        power = power * s
        total = total + power * coefficient
    return total


def _dense_output(y0, y1, y_mid, f0, f1, dt):
    """Coefficients [e, d, c, b, a] of the quartic through the step (torchdiffeq's ``_interp_fit``)."""
    a = F32(2) * dt * (f1 - f0) - F32(8) * (y1 + y0) + F32(16) * y_mid
    b = dt * (F32(5) * f0 - F32(3) * f1) + F32(18) * y0 + F32(14) * y1 - F32(32) * y_mid
    c = dt * (f1 - F32(4) * f0) - F32(11) * y0 - F32(5) * y1 + F32(16) * y_mid
    return [y0, dt * f0, c, b, a]


def _next_step(dt: float, ratio: float, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2,
               order: int = 5) -> float:
    if ratio == 0:
        return dt * ifactor
    if ratio < 1:
        dfactor = 1.0
    return dt * min(ifactor, max(safety / ratio ** (1.0 / order), dfactor))


# ----------------------------------------------------------------------------------------------------------

def integrate(v: Velocity, x: np.ndarray, settings: SamplerSettings, draw: Optional[Draw] = None,
              callback: Optional[Callback] = None) -> np.ndarray:
    """Run the sampler ``settings.method`` from noise x (B, N, C) float32 at t = 0 to data at t = 1."""
    x = np.asarray(x, dtype=F32)
    if settings.method in SHIFTED:
        fixed = {"euler": euler, "heun": heun, "ab2": ab2, "unipc": unipc}[settings.method]
        return fixed(v, x, settings.steps, callback, settings.time_shift, settings.tail_compression)
    if settings.method == "dopri5":
        return dopri5(v, x, settings.atol, settings.rtol, callback=callback)
    return sde(v, x, settings.steps, settings.diffusion_norm, settings.last_step_size, draw, callback)
