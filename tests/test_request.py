"""A request is checked once, by Pipeline.prepare (engines/request.py types): the jobs it makes, its limits, and
how front ends render its errors (parameter -> flag, hint -> option) without checking anything themselves."""
import json

import click
import pytest

import engines
from cli.common import render
from engines.backends import create_backend
from engines.pipeline import GenerationError, Job, Limits, Request
from engines.request import image_cost, max_evaluations
from engines.sampler import MAX_STEPS, SAMPLERS
from fit_serve.api import BadRequest, model_info, parse_body, resolve


@pytest.fixture(scope="module")
def pipe():
    with engines.load(None, threads=1) as p:
        yield p


def test_prepare_makes_one_job_per_image_with_cycled_classes_and_consecutive_seeds(pipe):
    jobs = pipe.prepare(96, 64, "star,1", 7, num=5, steps=3)
    assert len(jobs) == 5
    assert [j.request for j in jobs] == [Request(96, 64, 7, 7), Request(96, 64, 1, 8), Request(96, 64, 7, 9),
                                         Request(96, 64, 1, 10), Request(96, 64, 7, 11)]
    assert all(j.settings == pipe.settings(steps=3) for j in jobs)
    assert jobs[-1] == jobs[4] and jobs[1:3] == [jobs[1], jobs[2]]
    assert [j.request.label for j in pipe.prepare(96, 64, [None, "circle"], num=3)] == [None, 0, None]
    default = pipe.prepare()[0]
    assert default == Job(Request(*pipe.default_size, None, 0), pipe.settings())


def test_jobs_are_made_on_access_so_any_num_starts_at_once(pipe):
    jobs = pipe.prepare(32, 32, num=10 ** 12)
    assert len(jobs) == 10 ** 12 and jobs[10 ** 12 - 1].request.seed == 10 ** 12 - 1
    with pytest.raises(IndexError):
        jobs[10 ** 12]


@pytest.mark.parametrize("kwargs,parameter,text", [
    (dict(num=0), "num", "num must be a whole number of at least 1, got 0"),
    (dict(num=1.5), "num", "num must be a whole number of at least 1, got 1.5"),
    (dict(width=1.5), "width", "width must be a whole number of pixels, got 1.5"),
    (dict(seed=2 ** 64 - 1, num=2), "seed", "seed 18446744073709551615 with num 2 needs seeds up to"),
    (dict(sampler=3), "sampler", "unknown sampler 3; choose one of euler, heun, dopri5, sde, ab2, unipc"),
    (dict(time_shift=0), "time_shift", "time_shift must be a number from 0.01 to 100, got 0"),
    (dict(time_shift=2.0, sampler="sde"), "time_shift", "time_shift applies to euler, heun, ab2, unipc, not sde"),
    (dict(tail_compression=1.5), "tail_compression", "tail_compression must be a number from 0 to 1, got 1.5"),
    (dict(tail_compression="1"), "tail_compression", "tail_compression must be a number from 0 to 1, got '1'"),
    (dict(tail_compression=0.5, sampler="dopri5"), "tail_compression",
     "tail_compression applies to euler, heun, ab2, unipc, not dopri5"),
    (dict(extrapolation=5), "extrapolation", "unknown extrapolation 5; choose one of"),
    (dict(label="star,bogus"), None, "unknown class 'bogus'"),
])
def test_prepare_refuses_with_the_parameter_named(pipe, kwargs, parameter, text):
    with pytest.raises(GenerationError) as err:
        pipe.prepare(**{"width": 32, "height": 32, **kwargs})
    assert str(err.value).startswith(text) and err.value.parameter == parameter


def test_a_size_off_the_grid_carries_a_hint_not_a_flag(pipe):
    with pytest.raises(GenerationError) as err:
        pipe.prepare(90, 64)
    assert str(err.value) == "90x64 is not on the model's 16-pixel grid; nearest valid sizes: 96x64, 80x64"
    assert err.value.hint == "snap"
    assert pipe.prepare(90, 64, snap=True)[0].request.width == 96


def test_front_ends_render_parameters_and_hints_as_their_own_options(pipe):
    @click.command()
    @click.option("--width", "-W")
    @click.option("--seed")
    @click.option("--num", "-n")
    @click.option("--snap", is_flag=True)
    def cli(**_):
        errors = []
        for kwargs in (dict(width=90, height=64), dict(width=32, height=32, seed=2 ** 64 - 1, num=3),
                       dict(width=0, height=32)):
            try:
                pipe.prepare(**kwargs)
            except GenerationError as err:
                errors.append(render(err))
        click.echo(json.dumps(errors))

    from click.testing import CliRunner

    lines = json.loads(CliRunner().invoke(cli, []).output)
    assert lines[0].endswith("nearest valid sizes: 96x64, 80x64 (or pass --snap)")
    assert lines[1].startswith("--seed 18446744073709551615 with --num 3 needs seeds up to")
    assert lines[2] == "--width must be positive, got 0"
    # a front end without the option keeps the engine's words, with no other layer's flag in them
    with pytest.raises(BadRequest) as err:
        resolve(pipe, parse_body(b'{"width": 90, "height": 64}'), Limits())
    assert err.value.status == 422 and str(err.value).endswith("nearest valid sizes: 96x64, 80x64")


def test_server_policy_limits_read_as_the_engines_own(pipe):
    policy = Limits(max_steps=1000, max_cfg=20.0)
    with pytest.raises(BadRequest, match=r"^steps must be a whole number from 1 to 1,000, got 1001$"):
        resolve(pipe, parse_body(b'{"steps": 1001}'), policy)
    with pytest.raises(BadRequest, match=r"^cfg must be a number from 0 to 20, got 21$"):
        resolve(pipe, parse_body(b'{"cfg": 21}'), policy)
    assert resolve(pipe, parse_body(b'{"steps": 1001}'), Limits()).settings.sampler.steps == 1001
    with pytest.raises(GenerationError, match=f"from 1 to {MAX_STEPS:,}"):
        pipe.prepare(32, 32, steps=MAX_STEPS + 1)
    assert model_info(pipe, policy)["limits"] == {"max_steps": 1000, "max_cfg": 20.0, "max_cost": None,
                                                  "max_body_bytes": 16384}
    sampler = pipe.manifest.sampler
    assert {k: model_info(pipe, policy)["defaults"][k] for k in ("sampler", "steps", "time_shift", "tail_compression")} \
        == {"sampler": sampler.method, "steps": sampler.steps, "time_shift": sampler.time_shift,
            "tail_compression": sampler.tail_compression}
    with pytest.raises(ValueError, match="max_steps"):
        Limits(max_steps=MAX_STEPS + 1)


@pytest.mark.parametrize("method", SAMPLERS)
def test_max_evaluations_counts_the_network_calls_of_each_sampler(method):
    """The fixed-step samplers call the network exactly max_evaluations times; dopri5 at most 2 + 6 per attempted
    step: run with a step limit of 3 and a tolerance no step meets, it makes exactly 2 + 6 x 3 calls."""
    import numpy as np

    from engines import sampler as samplers

    calls = []

    def velocity(x, t):
        calls.append(t)
        return -x

    x = np.ones((1, 4, 2), dtype=np.float32)
    if method == "dopri5":
        with pytest.raises(RuntimeError, match="did not reach t = 1 in 3 steps"):
            samplers.dopri5(velocity, x, atol=1e-30, rtol=1e-30, max_steps=3)
        assert len(calls) == 2 + 6 * 3
        assert max_evaluations(samplers.SamplerSettings("dopri5")) == 2 + 6 * MAX_STEPS   # the limit integrate uses
    else:
        settings = samplers.SamplerSettings(method, steps=5)
        samplers.integrate(velocity, x, settings, draw=lambda shape: np.zeros(shape, dtype=np.float32))
        assert len(calls) == max_evaluations(settings) == (10 if method == "heun" else 5)


def test_cost_limit_is_refused_by_the_engine_before_any_work(pipe):
    """Cost of an image = evaluations x tokens, x 2 when guidance runs the cond/uncond halves (a class given)."""
    default = pipe.settings()                                     # the package's: ab2 (one evaluation a step), cfg 4
    evaluations = default.sampler.evaluations()
    assert default.sampler.method == "ab2" and evaluations == default.sampler.steps
    assert image_cost(25, default, conditional=False) == evaluations * 25
    assert image_cost(25, default, conditional=True) == evaluations * 25 * 2
    policy = Limits(max_cost=800)
    assert len(pipe.prepare(80, 80, "star", steps=16, limits=policy)) == 1             # exactly at the limit
    assert pipe.prepare(80, 80, "star", steps=32, cfg=1, limits=policy)                 # guidance off: no halves
    assert pipe.prepare(80, 80, None, steps=32, limits=policy)                          # unconditional: no halves
    with pytest.raises(BadRequest) as err:
        resolve(pipe, parse_body(b'{"class": "star", "steps": 17}'), policy)
    assert err.value.status == 422 and str(err.value) == (
        "this request costs 850 (17 network evaluations x 25 tokens x 2 (guidance)), more than the limit of 800; "
        "ask for fewer steps, a smaller size or another sampler")
    with pytest.raises(GenerationError, match=r"^this request costs 1,500,050 \(60,002 network evaluations at most "
                                              r"\(dopri5\) x 25 tokens\), more than the limit of 1,500,049;"):
        pipe.prepare(80, 80, sampler="dopri5", limits=Limits(max_cost=1_500_049))
    assert pipe.prepare(80, 80, sampler="dopri5", limits=Limits(max_cost=1_500_050))
    assert pipe.prepare(128, 128, 1, sampler="dopri5", cfg=1000)                         # the engine: no cost limit
    assert model_info(pipe, policy)["limits"]["max_cost"] == 800
    for bad in (0, 2.5, True, "800"):
        with pytest.raises(ValueError, match="max_cost"):
            Limits(max_cost=bad)


def test_threads_reach_every_backend_that_takes_them(tmp_path, monkeypatch):
    seen = {}

    class CpuBackend:
        def __init__(self, package, *, threads: int = 0, **_):
            seen["cpu"] = threads

    class GpuBackend:
        def __init__(self, package, *, manifest=None, verify=True, graph="transformer", precision=None):
            seen["gpu"] = "created"

    import engines.backends as backends

    for name, factory in (("test-cpu", CpuBackend), ("test-gpu", GpuBackend)):
        monkeypatch.setitem(backends._REGISTRY, name, factory)
    create_backend("test-cpu", tmp_path, threads=3)
    create_backend("test-gpu", tmp_path, threads=3)            # no CPU threads: ignored, not an error
    assert seen == {"cpu": 3, "gpu": "created"}
    with engines.load(None, threads=1) as p:
        assert p.backend.session.get_session_options().intra_op_num_threads == 1
        assert p.vae.session.get_session_options().intra_op_num_threads == 1
