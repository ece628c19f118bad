"""Samplers: exact ODE solutions (order of accuracy), the official transport/DDPM samplers, and ``sample``."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fit import LatentRequest, SamplerSettings, load_model, sample
from fit.ddpm import RespacedDiffusion, ddpm_sample, linear_betas, respaced_timesteps
from fit.flow import (ab2, dopri5, euler, guidance_scale, heun, integrate, interpolate, masked_velocity_loss, sde,
                      unipc)

FIXTURES = Path(__file__).parent / "fixtures"


# ---------------------------------------------------------------------------------------------------------------
# Analytic velocity fields
# ---------------------------------------------------------------------------------------------------------------

A, B = -1.3, 0.7


def linear_field(x, t):
    """dx/dt = a x + b t."""
    return A * x + B * t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def linear_field_solution(x0, t=1.0):
    """x(t) = e^{a t} (x0 + b / a^2) - b t / a - b / a^2."""
    return math.exp(A * t) * (x0 + B / A ** 2) - B * t / A - B / A ** 2


def _x0():
    return torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(3, 4)


def _error(sampler, steps, shift=1.0):
    x0 = _x0()
    return (sampler(linear_field, x0.clone(), steps, shift) - linear_field_solution(x0)).abs().max().item()


def test_euler_is_first_order():
    e20, e40, e80 = (_error(euler, n) for n in (20, 40, 80))
    assert 1.8 < e20 / e40 < 2.2 and 1.8 < e40 / e80 < 2.2
    assert e80 < 1e-2


def test_heun_is_second_order():
    e20, e40, e80 = (_error(heun, n) for n in (20, 40, 80))
    assert 3.6 < e20 / e40 < 4.4 and 3.6 < e40 / e80 < 4.4
    assert e80 < 1e-4
    assert _error(heun, 20) < _error(euler, 20) / 20


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("sampler", [ab2, unipc])
def test_multistep_samplers_are_second_order(sampler, shift):
    """The error falls 4x when the steps double. Both start and end with a first-order step and unipc's steps in
    log-SNR stay long near t = 0 and 1 whatever the count, so the ratio settles only after a few hundred steps."""
    e320, e640, e1280 = (_error(sampler, n, shift) for n in (320, 640, 1280))
    assert 3.5 < e320 / e640 < 4.5 and 3.5 < e640 / e1280 < 4.5
    assert e1280 < 1e-5


@pytest.mark.parametrize("sampler, order", [(euler, 1), (heun, 2)])
def test_one_step_samplers_keep_their_order_on_the_shifted_grid(sampler, order):
    e20, e40, e80 = (_error(sampler, n, 3.0) for n in (20, 40, 80))
    assert 0.9 * 2 ** order < e20 / e40 < 1.1 * 2 ** order and 0.9 * 2 ** order < e40 / e80 < 1.1 * 2 ** order


def test_dopri5_meets_its_tolerance():
    x0 = _x0()
    exact = linear_field_solution(x0)
    for atol, rtol in ((1e-6, 1e-3), (1e-9, 1e-7)):
        err = (dopri5(linear_field, x0.clone(), atol=atol, rtol=rtol) - exact).abs()
        assert torch.all(err <= 10 * (atol + rtol * exact.abs()))
    loose = (dopri5(linear_field, x0.clone(), atol=1e-3, rtol=1e-1) - exact).abs().max()
    tight = (dopri5(linear_field, x0.clone(), atol=1e-9, rtol=1e-7) - exact).abs().max()
    assert tight < loose


# The exact rectified flow between noise N(0, 1) and data N(mu, s^2): on x_t = t x1 + (1 - t) x0,
# v(x, t) = E[x1 - x0 | x_t = x] = mu + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x - t mu), which maps
# each x0 to mu + s x0.
MU, S = 1.5, 0.5


def gaussian_flow(x, t):
    tt = t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return MU + (tt * S ** 2 - (1 - tt)) / (tt ** 2 * S ** 2 + (1 - tt) ** 2) * (x - tt * MU)


@pytest.mark.parametrize("settings, tol", [
    (SamplerSettings("euler", steps=100), 3e-2),
    (SamplerSettings("heun", steps=50), 5e-4),
    (SamplerSettings("dopri5", atol=1e-8, rtol=1e-6), 1e-5),
])
def test_gaussian_flow_is_transported_exactly(settings, tol):
    x0 = torch.linspace(-3, 3, 16, dtype=torch.float64).reshape(2, 8)
    torch.testing.assert_close(integrate(gaussian_flow, x0, settings), MU + S * x0, atol=tol, rtol=0)


def test_sde_sampler_reaches_the_data_distribution():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    out = sde(gaussian_flow, x0, 100, generator=torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - MU) < 0.05
    assert abs(out.std().item() - S) < 0.05


def test_sde_sampler_is_seeded():
    x0 = _x0()
    run = lambda seed: integrate(gaussian_flow, x0.clone(), SamplerSettings("sde", steps=30),
                                 torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert (run(3) - run(4)).abs().max() > 1e-3


def test_sampler_settings_are_checked():
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSettings("rk4")
    with pytest.raises(ValueError, match="steps"):
        SamplerSettings("euler", steps=0)


# ---------------------------------------------------------------------------------------------------------------
# Against the official transport sampler (fit/scheduler/transport) on a fixed fake velocity
# ---------------------------------------------------------------------------------------------------------------

TRANSPORT = load_file(FIXTURES / "official_transport.safetensors")


def fake_velocity(x, t):
    tt = t.float().view(-1, 1, 1)
    return torch.cos(2 * tt) * x + torch.sin(x + tt) - 0.5 * tt


def test_euler_matches_official_ode_euler():
    # The official num_steps counts time points (11 points = 10 steps).
    out = euler(fake_velocity, TRANSPORT["x0"].clone(), 10)
    torch.testing.assert_close(out, TRANSPORT["ode_euler_11"], atol=1e-5, rtol=1e-5)


def test_dopri5_matches_official_ode():
    out = dopri5(fake_velocity, TRANSPORT["x0"].clone(), atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(out, TRANSPORT["ode_dopri5"], atol=1e-5, rtol=1e-5)


def test_sde_matches_official_sde_with_the_same_noise():
    # Official: Euler-Maruyama, diffusion "sigma", last step "Mean" of 0.04, 20 time points, noise from
    # torch.manual_seed(321); the same stream comes from a generator with that seed.
    out = sde(fake_velocity, TRANSPORT["x0"].clone(), 20, diffusion_norm=1.0, last_step_size=0.04,
                             generator=torch.Generator().manual_seed(321))
    torch.testing.assert_close(out, TRANSPORT["sde_euler_20"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Flow training quantities and guidance schedule
# ---------------------------------------------------------------------------------------------------------------

def test_interpolation_path_and_target():
    x0, x1 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    xt, target = interpolate(x0, x1, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(xt[0], x0[0])                            # t = 0 is noise
    torch.testing.assert_close(xt[1], x1[1])                            # t = 1 is data
    torch.testing.assert_close(target, x1 - x0)


def test_masked_loss_ignores_padding_and_rescales():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    target[1, 2:] = 100.0
    torch.testing.assert_close(masked_velocity_loss(pred, target, mask), torch.tensor([1.0, 1.0]))


def test_power_cosine_guidance_schedule():
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(guidance_scale(4.0, t), torch.full((3,), 4.0))
    scale = guidance_scale(4.0, t, scale_pow=1.0)
    torch.testing.assert_close(scale, torch.tensor([4.0, 2.5, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# FiT v1 DDPM
# ---------------------------------------------------------------------------------------------------------------

DDPM = load_file(FIXTURES / "official_ddpm.safetensors")


def improved_diffusion_spacing(num_steps, count):
    """improved-diffusion's single-section rule: accumulate a fractional stride, round each position."""
    if count == 1:
        return [0]
    stride, position, taken = (num_steps - 1) / (count - 1), 0.0, []
    for _ in range(count):
        taken.append(round(position))
        position += stride
    return sorted(set(taken))


def test_respaced_timesteps_follow_improved_diffusion():
    for count in list(range(1, 60)) + [100, 250, 999, 1000]:
        assert respaced_timesteps(1000, count) == improved_diffusion_spacing(1000, count), count
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 1001)


@pytest.mark.parametrize("steps", [25, 7, 21])
def test_respacing_matches_official(steps):
    diffusion = RespacedDiffusion(steps)
    assert diffusion.timestep_map == DDPM[f"steps{steps}/timestep_map"].tolist()
    np.testing.assert_allclose(diffusion.betas, DDPM[f"steps{steps}/betas"].numpy(), rtol=1e-12)


def test_respaced_betas_keep_the_original_noise_levels():
    base = np.cumprod(1 - linear_betas())
    assert linear_betas()[0] == pytest.approx(1e-4) and linear_betas()[-1] == pytest.approx(0.02)
    diffusion = RespacedDiffusion(50)
    np.testing.assert_allclose(np.cumprod(1 - diffusion.betas), base[diffusion.timestep_map], rtol=1e-12)
    assert len(diffusion) == 50


def ddpm_fake_net(x, t):
    """eps and variance values (channel-first) of a fixed fake network; t are original timesteps."""
    tt = t.float().view(-1, 1, 1) / 1000
    return torch.cat([0.98 * x + 0.02 * torch.sin(3 * tt + x), torch.tanh(x * (1 - tt))], dim=1)


@pytest.mark.parametrize("steps", [25, 7, 21])
def test_ddpm_sampler_matches_official_p_sample_loop(steps):
    # official: p_sample_loop(noise=x_T, clip_denoised=False) after torch.manual_seed(123)
    out = ddpm_sample(ddpm_fake_net, DDPM["x_T"].clone(), steps, channel_dim=1,
                      generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(out, DDPM[f"steps{steps}/sample"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# sample(): padded mixed-size requests
# ---------------------------------------------------------------------------------------------------------------

OFFICIAL = json.loads((FIXTURES / "official_outputs.json").read_text())
WEIGHTS = load_file(FIXTURES / "official_outputs.safetensors")


def tiny_model(name, **changes):
    model = load_model({**OFFICIAL["models"][name], **changes})
    prefix = f"{name}/weights/"
    model.load_state_dict({k[len(prefix):]: v.float() for k, v in WEIGHTS.items() if k.startswith(prefix)})
    return model


@pytest.mark.parametrize("settings, cfg_scale", [(SamplerSettings("euler", steps=2), 1.0),
                                                 (SamplerSettings("heun", steps=2), 3.0)])
def test_sample_does_not_depend_on_batching(settings, cfg_scale):
    model = tiny_model("v2")
    requests = [(8, 6, 3), (4, 10, 7), LatentRequest(4, 4, 1)]
    together = sample(model, requests, sampler=settings, cfg_scale=cfg_scale, seed=5)
    assert [tuple(z.shape) for z in together] == [(4, 8, 6), (4, 4, 10), (4, 4, 4)]
    for i, r in enumerate(requests):
        alone = sample(model, [r], sampler=settings, cfg_scale=cfg_scale, seed=5 + i)[0]
        torch.testing.assert_close(together[i], alone, atol=1e-4, rtol=1e-4)


def test_sample_follows_the_flow_from_the_given_noise():
    """One Euler step from noise z is z + v(z, 0): the model's prediction on the patchified latent."""
    model = tiny_model("v2")
    z = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    out = sample(model, [(6, 8, 2)], sampler=SamplerSettings("euler", steps=1), noise=[z])[0]
    tokens = z.reshape(4, 3, 2, 4, 2).permute(1, 3, 0, 2, 4).reshape(1, 12, 16)
    gw, gh = torch.meshgrid(torch.arange(4), torch.arange(3), indexing="xy")
    grid = torch.stack([gw.reshape(-1), gh.reshape(-1)])[None]
    with torch.no_grad():
        v = model(tokens, torch.zeros(1), torch.tensor([2]), grid, torch.ones(1, 12))
    expected = (tokens + v)[0].reshape(3, 4, 4, 2, 2).permute(2, 0, 3, 1, 4).reshape(4, 6, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_sample_runs_the_ddpm_sampler_for_fit_v1():
    model = tiny_model("v1")
    out = sample(model, [(4, 6, 1), (6, 4, 10)], sampler=SamplerSettings(steps=3), cfg_scale=2.0, seed=1)
    assert [tuple(z.shape) for z in out] == [(4, 4, 6), (4, 6, 4)]
    assert all(torch.isfinite(z).all() for z in out)


def test_sample_refuses_bad_requests():
    model = tiny_model("v2")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        sample(model, [(5, 6, 1)])
    with pytest.raises(ValueError, match="label"):
        sample(model, [(6, 6, 11)])
