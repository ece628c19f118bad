"""fit_serve without Ray: the packing rule, request parsing and checking, and that a request's image does not
depend on what it shares an engine call with (the property the server's batching relies on)."""
import json

import numpy as np
import pytest

import engines
from engines.pipeline import Limits, Request
from fit_serve.api import FIELDS, MAX_BODY_BYTES, BadRequest, parse_body, resolve
from fit_serve.batching import Item, bucket_budget, group_key, padded_tokens, plan_calls


SERVER = Limits(max_steps=1000, max_cfg=1000.0)        # fit-serve's default policy


@pytest.fixture(scope="module")
def pipe():
    with engines.load(None, threads=1) as p:
        yield p


def test_plan_packs_longest_first_within_count_and_token_budget():
    items = [Item("a", 4), Item("a", 25), Item("b", 9), Item("a", 16), Item("a", 25), Item("a", 4)]
    calls = plan_calls(items, max_batch_size=3, max_batch_tokens=64)
    # group "a" longest first: 25, 25 (2 x 25 = 50 <= 64; a third row would be 75), then 16, 4, 4; group "b" alone
    assert calls == [[1, 4], [3, 0, 5], [2]]
    assert [padded_tokens(items, c) for c in calls] == [50, 48, 9]
    assert plan_calls(items, max_batch_size=1, max_batch_tokens=64) == [[1], [4], [3], [0], [5], [2]]
    assert plan_calls([Item("a", 100), Item("a", 1)], 8, 64) == [[0], [1]]    # too long alone: a call of its own
    with pytest.raises(ValueError):
        plan_calls(items, 0, 64)


def test_group_key_separates_loops_and_batch_dependent_samplers(pipe):
    heun, heun_cfg3 = pipe.settings(sampler="heun", steps=4, cfg=2.0), pipe.settings(sampler="heun", steps=4, cfg=3.0)
    ntk = pipe.settings(sampler="heun", steps=4, cfg=2.0, extrapolation="ntk-aware")
    assert group_key(heun, True, 25, 0) == group_key(heun_cfg3, True, 25, 1) == group_key(ntk, True, 25, 2)
    assert group_key(heun, True, 25, 0) != group_key(heun, False, 25, 1)             # no class: no cond/uncond
    assert group_key(heun, True, 25, 0) != group_key(heun, True, 64, 1)              # another bucket
    assert group_key(heun, True, 25, 0) != group_key(pipe.settings(sampler="heun", steps=5, cfg=2.0), True, 25, 1)
    assert group_key(heun, True, 25, 0) != group_key(pipe.settings(sampler="heun", steps=4, cfg=1.0), True, 25, 1)
    for method in ("sde", "dopri5"):
        s = pipe.settings(sampler=method, steps=4)
        assert group_key(s, True, 25, 0) != group_key(s, True, 25, 1)


def test_bucket_budget_is_the_smallest_bucket_holding_the_request():
    assert [bucket_budget([64, 25], 100, t) for t in (1, 25, 26, 64, 65)] == [25, 25, 64, 64, 100]


@pytest.mark.parametrize("threads", [1, 2])
def test_image_does_not_depend_on_batch_mates(threads):
    """What the server relies on: the fixed-grid samplers (euler, heun, ab2, unipc; on bent grids too) give a row bit
    for bit what it gives alone, whatever sizes, guidance scales and extrapolation methods share its padded batch
    (ONNX Runtime CPU, measured: a 6-token row alone, and padded to 64 tokens among 4 rows)."""
    target = Request(48, 32, 2, 11)
    mates = [Request(128, 128, 1, 3), Request(96, 64, 5, 4), Request(32, 32, 0, 9)]
    with engines.load(None, threads=threads) as pipe:
        for method, shift, tail in (("euler", 1.0, 0.0), ("heun", 1.0, 0.5), ("ab2", 3.0, 0.0), ("ab2", 6.0, 1.0),
                                    ("unipc", 2.0, 1.0)):
            job = pipe.prepare(target.width, target.height, target.label, target.seed, sampler=method, steps=3,
                               cfg=2.0, time_shift=shift, tail_compression=tail)[0]
            mate_jobs = [pipe.prepare(m.width, m.height, m.label, m.seed, sampler=method, steps=3, cfg=c,
                                      extrapolation=e, time_shift=shift, tail_compression=tail)[0]
                         for m, (c, e) in zip(mates, ((5.0, "ntk-aware"), (1.5, None), (2.0, "linear")))]
            alone = pipe.sample_latents([job])[0]
            mixed = pipe.sample_latents(mate_jobs[:2] + [job] + mate_jobs[2:])[2]
            np.testing.assert_array_equal(mixed, alone)


BAD_BODIES = [
    (b"not json", 400), (b"[1, 2]", 400), (b'"text"', 400), (b'{"cfg": NaN}', 400), (b"{" * 5000, 400),
    (b"x" * (MAX_BODY_BYTES + 1), 413),
    (b'{"width": 97}', 422), (b'{"width": 4096, "height": 4096}', 422), (b'{"width": 0}', 422),
    (b'{"width": "64"}', 422), (b'{"width": 64.0}', 422), (b'{"height": true}', 422),
    (b'{"class": "dragon"}', 422), (b'{"class": 99}', 422), (b'{"class": 1.5}', 422),
    (b'{"steps": 0}', 422), (b'{"steps": 1000000}', 422), (b'{"steps": 2.5}', 422),
    (b'{"cfg": -1}', 422), (b'{"cfg": "high"}', 422), (b'{"cfg": 1e309}', 422), (b'{"cfg": 1e30}', 422),
    (b'{"seed": -1}', 422), (b'{"seed": 18446744073709551616}', 422), (b'{"seed": "1"}', 422),
    (b'{"sampler": "ddim"}', 422), (b'{"sampler": 3}', 422),
    (b'{"time_shift": 0}', 422), (b'{"time_shift": -2.5}', 422), (b'{"time_shift": "3"}', 422),
    (b'{"time_shift": 1e999}', 422), (b'{"time_shift": 2, "sampler": "dopri5"}', 422),
    (b'{"tail_compression": -1}', 422), (b'{"tail_compression": 1.01}', 422), (b'{"tail_compression": "1"}', 422),
    (b'{"tail_compression": 0.5, "sampler": "sde"}', 422),
    (b'{"extrapolation": "bogus"}', 422), (b'{"extrapolation": 5}', 422),
    (b'{"widht": 64}', 422), (b'{"prompt": "a cat"}', 422),
]


@pytest.mark.parametrize("body,status", BAD_BODIES, ids=[b[:30].decode() for b, _ in BAD_BODIES])
def test_bad_bodies_are_refused_with_one_line(pipe, body, status):
    with pytest.raises(BadRequest) as info:
        resolve(pipe, parse_body(body), SERVER)
    assert info.value.status == status
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message and len(message) < 300


def test_unset_fields_take_the_package_defaults_like_fit_run(pipe):
    job = resolve(pipe, parse_body(b"{}"), SERVER)
    assert job.request == Request(*pipe.default_size, None, 0)
    assert job.settings == pipe.settings()
    job = resolve(pipe, parse_body(json.dumps(
        {"width": 96, "height": 64, "class": "Star", "seed": 7, "steps": 5, "sampler": "euler", "cfg": 3,
         "extrapolation": "ntk"}).encode()), SERVER)
    assert job.request == Request(96, 64, 7, 7)
    assert job.settings == pipe.settings(steps=5, sampler="euler", cfg=3.0, extrapolation="ntk")
    assert set(FIELDS) == {"width", "height", "class", "seed", "steps", "sampler", "cfg", "extrapolation",
                           "time_shift", "tail_compression"}
