"""engines.metrics: the one cosine and PSNR used by validation, tests and benchmarks."""
import math

import numpy as np
import pytest

from engines.metrics import cosine, psnr


def test_cosine():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    assert cosine(a, a) == pytest.approx(1.0, abs=1e-15)
    assert cosine(a, -2 * a) == pytest.approx(-1.0, abs=1e-15)
    assert cosine([1, 0], [0, 3]) == 0.0
    assert cosine([3, 4], [4, 3]) == pytest.approx(24 / 25, abs=1e-15)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_psnr():
    a = np.array([0, 255, 10], np.uint8)
    assert psnr(a, a, 255) == math.inf
    b = a.astype(np.int64) + np.array([1, -1, 1])                 # mse 1, no uint8 wrap-around
    assert psnr(a, b, 255) == pytest.approx(20 * math.log10(255), abs=1e-12)
    assert psnr(np.zeros(4), np.full(4, 0.5), 2.0) == pytest.approx(10 * math.log10(4 / 0.25), abs=1e-12)
