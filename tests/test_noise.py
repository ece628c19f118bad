"""The portable noise generator (engines/noise.py, docs/runtime-spec.md §3): SplitMix64 words, Box-Muller normals,
the seed range, and images that depend only on their own seed."""
import math

import numpy as np
import pytest

from engines import noise
from engines.pipeline import GenerationError, Request, load
from tests.runtime_helpers import jobs


def test_words_are_splitmix64():
    # SplitMix64 seeded with 1234567: the published first outputs of the reference implementation.
    assert noise.words(1234567, 0, 3).tolist() == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert noise.words(1234567, 2, 1).tolist() == [9817491932198370423]


def test_normals_follow_box_muller_on_the_words():
    w = noise.words(42, 5 * noise.BLOCK, 2)
    u1 = ((int(w[0]) >> 11) + 1) * 2.0 ** -53
    u2 = (int(w[1]) >> 11) * 2.0 ** -53
    r = math.sqrt(-2 * math.log(u1))
    expected = np.array([r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)], np.float32)
    np.testing.assert_array_equal(noise.normals(42, 2, block=5), expected)
    assert noise.normals(42, 3, block=5)[:2].tolist() == expected.tolist()        # odd counts drop the last sine


def test_normals_are_standard_normal():
    z = noise.normals(7, 200_000)
    assert z.dtype == np.float32
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert not np.array_equal(noise.normals(7, 100, block=1), z[:100])           # blocks are separate streams


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5, "3", True])
def test_seeds_outside_the_range_are_refused(seed):
    with pytest.raises(ValueError, match="seed must be"):
        noise.check_seed(seed)


def test_largest_seed_works():
    assert np.isfinite(noise.normals(2 ** 64 - 1, 10)).all()


def test_an_image_depends_only_on_its_seed():
    with load(None) as pipe:
        alone = pipe.generate_many(jobs(pipe, [Request(96, 64, 1, 3)], steps=3, sampler="sde", cfg=2.0))[0]
        batch = pipe.generate_many(jobs(pipe, [Request(128, 128, 2, 8), Request(96, 64, 1, 3),
                                               Request(64, 64, None, 4)], steps=3, sampler="sde", cfg=2.0))
        assert np.abs(alone.astype(int) - batch[1].astype(int)).max() <= 1
        with pytest.raises(GenerationError, match=r"seed must be a whole number from 0 to 2\*\*64 - 1, got -1"):
            pipe.generate(width=96, height=64, seed=-1)
