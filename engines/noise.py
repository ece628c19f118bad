"""Portable Gaussian noise: the same float32 values from a seed in any language (docs/runtime-spec.md, *Noise*).

A seed (0 <= seed < 2**64) names one stream of 64-bit words, the outputs of SplitMix64 started at the seed:

    word(seed, k) = mix64(seed + (k + 1) * 0x9E3779B97F4A7C15 mod 2**64)          k = 0, 1, 2, ...
    mix64(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >> 27)) * 0x94D049BB133111EB;  z ^ (z >> 31)

Block ``b`` of the stream starts at counter ``b * 2**32``: block 0 is a request's initial noise, block ``s + 1`` the
noise of sde step ``s``. Normal number ``j`` of a block comes from the pair of words ``a = 2 (j // 2)``, ``a + 1``
by Box-Muller in float64, then rounded to float32:

    u1 = ((word_a >> 11) + 1) / 2**53      in (0, 1]
    u2 = (word_{a+1} >> 11) / 2**53        in [0, 1)
    z  = sqrt(-2 ln u1) * (cos(2 pi u2) if j is even else sin(2 pi u2))

Every value depends only on (seed, block, j), so an image never depends on what shares its batch. numpy only.
"""
from __future__ import annotations

import numpy as np

SEED_LIMIT = 1 << 64
BLOCK = 1 << 32
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def check_seed(seed) -> int:
    """The seed as an int; ValueError unless it is a whole number with 0 <= seed < 2**64."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")
    return int(seed)


def words(seed: int, start: int, count: int) -> np.ndarray:
    """``count`` words of the stream of ``seed`` from counter ``start`` (uint64)."""
    k = np.arange(start + 1, start + 1 + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(check_seed(seed)) + k * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def normals(seed: int, count: int, block: int = 0) -> np.ndarray:
    """``count`` float32 standard normals of block ``block`` of the stream of ``seed``."""
    pairs = (count + 1) // 2
    w = words(seed, block * BLOCK, 2 * pairs).reshape(pairs, 2)
    u1 = ((w[:, 0] >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0 ** -53
    u2 = (w[:, 1] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    out = np.empty((pairs, 2), dtype=np.float64)
    out[:, 0] = r * np.cos(angle)
    out[:, 1] = r * np.sin(angle)
    return out.reshape(-1)[:count].astype(np.float32)


def standard_normal(seed: int, shape, block: int = 0) -> np.ndarray:
    """float32 array of ``shape`` filled row-major with :func:`normals`."""
    shape = tuple(int(s) for s in shape)
    return normals(seed, int(np.prod(shape)), block).reshape(shape)


def sde_draw(seeds, lengths):
    """draw(shape) for the sde sampler of a padded batch (B, N, D) whose row i holds ``lengths[i]`` tokens of a
    request seeded ``seeds[i]``: call s (s = 0, 1, ...) gives row i block s + 1 of its seed's stream as
    (lengths[i], D) row-major, zeros on padding (docs/runtime-spec.md, *Noise*). Used by the runtime and by the
    PyTorch reference alike."""
    calls = 0

    def draw(shape) -> np.ndarray:
        nonlocal calls
        calls += 1
        out = np.zeros(shape, dtype=np.float32)
        for i, (seed, length) in enumerate(zip(seeds, lengths)):
            out[i, :length] = standard_normal(seed, (length, shape[-1]), block=calls)
        return out
    return draw
