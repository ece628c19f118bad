"""numpy samplers (engines.sampler) against the torch reference (fit.flow) and against exact solutions."""
import math

import numpy as np
import pytest

from engines import sampler as ns

torch = pytest.importorskip("torch")
from fit import flow  # noqa: E402

A = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
X0 = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)


def field_torch(x, t):
    return torch.sin(3 * t.view(-1, 1, 1) + x) * torch.from_numpy(A) - 0.5 * x


def field_numpy(x, t):
    return np.sin(3 * t.reshape(-1, 1, 1) + x) * A - np.float32(0.5) * x


def counted(fn):
    def wrapped(x, t):
        wrapped.calls += 1
        return fn(x, t)
    wrapped.calls = 0
    return wrapped


@pytest.mark.parametrize("method,steps", [("euler", 1), ("euler", 7), ("heun", 7), ("dopri5", 0)])
def test_matches_torch_on_an_analytic_field(method, steps):
    vt, vn = counted(field_torch), counted(field_numpy)
    ref = flow.integrate(vt, torch.from_numpy(X0), flow.SamplerSettings(method, steps=max(steps, 1))).numpy()
    out = ns.integrate(vn, X0, ns.SamplerSettings(method, steps=max(steps, 1)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
    assert vn.calls == vt.calls                      # same steps (dopri5: same accepted/rejected sequence)


@pytest.mark.parametrize("shift,tail", [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (1.0, 1.0), (6.0, 1.0), (4.0, 0.3)])
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
@pytest.mark.parametrize("method", ["euler", "heun", "ab2", "unipc"])
def test_shifted_grid_samplers_match_torch(method, steps, shift, tail):
    vt, vn = counted(field_torch), counted(field_numpy)
    settings = dict(method=method, steps=steps, time_shift=shift, tail_compression=tail)
    ref = flow.integrate(vt, torch.from_numpy(X0), flow.SamplerSettings(**settings)).numpy()
    out = ns.integrate(vn, X0, ns.SamplerSettings(**settings))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
    assert vn.calls == vt.calls == ns.SamplerSettings(**settings).evaluations()


def test_time_shift_bends_the_grid_towards_noise():
    """t = u / (u + s (1 - u)): shift 1 is the even grid, shift 3 takes shorter steps near t = 0, both end at 1."""
    even = list(ns.time_grid(4))
    assert even == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    bent = list(ns.time_grid(4, 3.0))
    assert bent[0] == (0.0, 0.25 / (0.25 + 3 * 0.75)) and bent[-1][1] == 1.0
    sizes = [t1 - t0 for t0, t1 in bent]
    assert sizes == sorted(sizes) and sizes[0] < 0.25 < sizes[-1]
    assert all(a[1] == b[0] for a, b in zip(bent, bent[1:]))


def test_tail_compression_bends_the_grid_towards_data():
    """t + c t (1 - t) after the shift: c = 0 leaves the grid alone, c = 1 is 1 - (1 - t)^2 (the last step of 4 even
    ones is 1/16 long instead of 1/4), c = 0.5 lies between; both ends stay 0 and 1 exactly."""
    assert list(ns.time_grid(4, 3.0, 0.0)) == list(ns.time_grid(4, 3.0))
    squared = list(ns.time_grid(4, 1.0, 1.0))
    assert squared == [(0.0, 0.4375), (0.4375, 0.75), (0.75, 0.9375), (0.9375, 1.0)]
    half = list(ns.time_grid(4, 1.0, 0.5))
    assert [t for _, t in half] == [0.25 + 0.5 * 0.25 * 0.75, 0.5 + 0.5 * 0.5 * 0.5, 0.75 + 0.5 * 0.75 * 0.25, 1.0]
    shifted = list(ns.time_grid(5, 6.0, 1.0))
    assert shifted[0][0] == 0.0 and shifted[-1][1] == 1.0
    assert [b for _, b in shifted] == pytest.approx([1 - (1 - t1) ** 2 for _, t1 in ns.time_grid(5, 6.0)], abs=1e-15)
    assert all(a[1] == b[0] for a, b in zip(shifted, shifted[1:]))


@pytest.mark.parametrize("shift", [ns.MIN_TIME_SHIFT, 1.0, ns.MAX_TIME_SHIFT])
@pytest.mark.parametrize("tail", [0.0, 0.5, ns.MAX_TAIL_COMPRESSION])
def test_every_step_of_an_extreme_grid_moves_forward(shift, tail):
    """At the ends of both ranges and the largest step count, every step still has a positive length (ab2 and unipc
    divide by step lengths)."""
    ends = [t1 for _, t1 in ns.time_grid(ns.MAX_STEPS, shift, tail)]
    assert ends[-1] == 1.0 and all(b > a for a, b in zip([0.0] + ends, ends))


def test_sde_matches_torch_with_the_same_noise():
    g = torch.Generator().manual_seed(5)
    ref = flow.integrate(field_torch, torch.from_numpy(X0), flow.SamplerSettings("sde", steps=7), g).numpy()
    g = torch.Generator().manual_seed(5)

    def torch_noise(shape):                          # replays torch.randn in the reference's order
        return torch.randn(shape, generator=g).numpy()

    out = ns.integrate(field_numpy, X0, ns.SamplerSettings("sde", steps=7), draw=torch_noise)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale_pow", [0.0, 2.0])
@pytest.mark.parametrize("guided", [12, 16])
def test_guidance_matches_torch(scale_pow, guided):
    out = np.random.default_rng(2).standard_normal((6, 5, 16)).astype(np.float32)
    t = np.array([0.0, 0.5, 1.0], np.float32)
    ref = flow.guide(torch.from_numpy(out), 4.0, torch.from_numpy(t), guided, scale_pow=scale_pow).numpy()
    np.testing.assert_allclose(ns.guide(out, 4.0, t, guided, scale_pow=scale_pow), ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ns.guidance_scale(4.0, t, scale_pow),
                               flow.guidance_scale(4.0, torch.from_numpy(t), scale_pow).numpy(), atol=1e-6)


def test_guide_keeps_unguided_channels_conditional():
    cond = np.ones((1, 2, 8), np.float32)
    uncond = np.zeros((1, 2, 8), np.float32)
    out = ns.guide(np.concatenate([cond, uncond]), 3.0, np.array([0.5], np.float32), guided=4)
    np.testing.assert_array_equal(out[..., :4], 3.0)
    np.testing.assert_array_equal(out[..., 4:], 1.0)


def test_power_cosine_schedule_ramps_from_one_to_cfg():
    s = ns.guidance_scale(4.0, np.array([0.0, 1.0], np.float32), scale_pow=1.0)
    np.testing.assert_allclose(s, [4.0, 1.0], atol=1e-6)   # official: full scale at t = 0 side of (1 - t)^pow


@pytest.mark.parametrize("method,steps,tol", [("euler", 200, 5e-3), ("heun", 20, 1e-3), ("dopri5", 1, 1e-3)])
def test_converges_to_the_exact_solution(method, steps, tol):
    """dx/dt = t - x has x(t) = (x0 + 1) e^-t + t - 1, so x(1) = (x0 + 1) / e."""
    x0 = np.linspace(-2, 2, 12, dtype=np.float32).reshape(1, 3, 4)
    exact = (x0 + 1) / math.e
    out = ns.integrate(lambda x, t: -x + t.reshape(-1, 1, 1), x0, ns.SamplerSettings(method, steps=steps))
    np.testing.assert_allclose(out, exact, atol=tol)


def test_callback_reports_every_step():
    seen = []
    ns.integrate(field_numpy, X0, ns.SamplerSettings("heun", steps=4), callback=lambda d, n, t: seen.append((d, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    ns.integrate(field_numpy, X0, ns.SamplerSettings("dopri5"), callback=lambda d, n, t: seen.append((d, n, t)))
    assert seen and seen[-1][2] == 1.0 and all(n is None for _, n, _ in seen)


def test_time_grid_is_not_built_up_front():
    """The fixed-grid samplers compute each step's times as they go: a huge step count allocates nothing before
    step 1."""
    class FirstCall(Exception):
        pass

    def v(x, t):
        raise FirstCall

    for sampler in (ns.euler, ns.heun, ns.ab2, ns.unipc):
        with pytest.raises(FirstCall):
            sampler(v, X0, 10 ** 12, shift=3.0)


@pytest.mark.parametrize("kwargs", [dict(method="rk4"), dict(steps=0), dict(steps=2.5), dict(atol=0),
                                    dict(steps=ns.MAX_STEPS + 1), dict(steps=10 ** 20)])
def test_settings_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        ns.SamplerSettings(**kwargs)


GRID_SETTINGS = {"time_shift": ("a number from 0.01 to 100", 1.0, 2.0),       # (range, neutral value, another)
                 "tail_compression": ("a number from 0 to 1", 0.0, 0.5)}


@pytest.mark.parametrize("name,value", [("time_shift", v) for v in (0, 0.0, -1.0, 0.0099, 1e-300, 100.5, 1e300,
                                                                     math.nan, math.inf, -math.inf, "2", None, True,
                                                                     [2.0])]
                         + [("tail_compression", v) for v in (-0.1, 1.0000001, 2, math.nan, math.inf, "1", None,
                                                              False, [0.5])])
def test_settings_refuse_a_time_grid_setting_outside_its_range(name, value):
    with pytest.raises(ns.SettingError) as caught:
        ns.SamplerSettings("euler", **{name: value})
    message = str(caught.value)
    assert message == f"{name} must be {GRID_SETTINGS[name][0]}, got {value!r}" and "\n" not in message
    assert caught.value.parameter == name


@pytest.mark.parametrize("name", GRID_SETTINGS)
@pytest.mark.parametrize("method", ["dopri5", "sde"])
def test_settings_refuse_a_time_grid_setting_for_samplers_with_their_own_schedule(method, name):
    _, neutral, other = GRID_SETTINGS[name]
    with pytest.raises(ns.SettingError) as caught:
        ns.SamplerSettings(method, **{name: other})
    message = str(caught.value)
    assert message == f"{name} applies to euler, heun, ab2, unipc, not {method}, which keeps its own schedule"
    assert "\n" not in message and caught.value.parameter == name
    assert getattr(ns.SamplerSettings(method, **{name: int(neutral)}), name) == neutral     # the neutral value is fine


@pytest.mark.parametrize("method", ns.SHIFTED)
def test_settings_keep_a_tail_compression_in_range(method):
    assert ns.SamplerSettings(method, tail_compression=1).tail_compression == 1.0
    assert ns.SamplerSettings(method, tail_compression=np.float32(0.25)).tail_compression == 0.25


@pytest.mark.parametrize("method", ns.SHIFTED)
def test_settings_keep_a_positive_time_shift(method):
    assert ns.SamplerSettings(method, time_shift=0.5).time_shift == 0.5
    assert ns.SamplerSettings(method, time_shift=np.float32(3)).time_shift == 3.0
