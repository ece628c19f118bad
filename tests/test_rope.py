"""RoPE tables (engines.rope): official tables, an independent float64 formula, and the table properties."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from engines.rope import (METHODS, RopeSettings, attention_scale, grid_frequencies, image_grid, resolve_method,
                          rope_tables, rope_tables_from_grid)

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official_rope.json").read_text())
OFFICIAL_TABLES = load_file(FIXTURES / "official_rope.safetensors")
CASES = {c["name"]: c for c in OFFICIAL["cases"]}


def _settings(case) -> RopeSettings:
    return RopeSettings(case["head_dim"], 10000.0, case["custom_freqs"], case.get("decouple", False),
                        case.get("ori_max_pe_len"))


# ---------------------------------------------------------------------------------------------------------------
# Against the official tables
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_match_the_official_tables(name):
    case = CASES[name]
    grid = OFFICIAL_TABLES[f"{name}/grid"]
    if case["online"]:
        cos, sin = rope_tables_from_grid(_settings(case), grid, sizes=OFFICIAL_TABLES[f"{name}/size"])
    else:
        cos, sin = rope_tables_from_grid(_settings(case), grid, target_hw=(case["height"], case["width"]))
    assert cos.dtype == np.float32 and cos.shape == OFFICIAL_TABLES[f"{name}/cos"].shape
    # float32 precision: angles reach ~40 rad, one ulp of which is ~4e-6
    np.testing.assert_allclose(cos, OFFICIAL_TABLES[f"{name}/cos"], rtol=0, atol=4e-6)
    np.testing.assert_allclose(sin, OFFICIAL_TABLES[f"{name}/sin"], rtol=0, atol=4e-6)


def test_official_cases_cover_every_method():
    assert {c["custom_freqs"] for c in CASES.values()} == set(METHODS)
    assert any(c["online"] and c.get("decouple") for c in CASES.values())


# ---------------------------------------------------------------------------------------------------------------
# Against an independent float64 formula (FiTv2 paper section 3 / YaRN, written out here)
# ---------------------------------------------------------------------------------------------------------------

def _ramp_mask(low_rot, high_rot, dim, theta, train_len):
    """1 where a frequency is kept (many rotations over the training length), 0 where it is interpolated."""
    def boundary(rotations):
        return dim * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(boundary(low_rot)), 0)
    high = min(math.ceil(boundary(high_rot)), dim - 1)
    if low == high:
        high += 0.001
    k = np.arange(dim // 2, dtype=np.float64)
    return 1 - np.clip((k - low) / (high - low), 0, 1)


def reference_freqs(method, dim, theta, target_len, train_len):
    """Per-axis frequencies (dim/2,) in float64."""
    exps = np.arange(0, dim, 2, dtype=np.float64) / dim
    base = theta ** -exps
    if method == "normal":
        return base
    s = max(target_len / train_len, 1.0)
    interpolated = base / s                                          # PI
    ntk = (theta * s ** (dim / (dim - 2))) ** -exps                  # NTK-aware base change
    if method == "linear":
        return interpolated
    if method.startswith("ntk-aware"):
        return ntk
    if method == "ntk-by-parts":
        keep = _ramp_mask(1.25, 0.75, dim, theta, train_len)
        mixed = interpolated * (1 - keep) + ntk * keep
        keep = _ramp_mask(16, 2, dim, theta, train_len)
        return mixed * (1 - keep) + base * keep
    if method == "yarn":
        keep = _ramp_mask(32, 1, dim, theta, train_len)
        return interpolated * (1 - keep) + base * keep
    raise AssertionError(method)


def reference_scale(method, h, w, train_len):
    if method == "yarn":
        s = max(h, w) / train_len
        return 1.0 if s <= 1 else 0.1 * math.log(s) + 1
    if method in ("ntk-aware-pro1", "ntk-aware-pro2"):
        test, train = (max(h, w), train_len) if method == "ntk-aware-pro1" else (h * w, train_len ** 2)
        return 1.0 if 2 * test / train <= 1 else math.sqrt(math.log(2 * test) / math.log(train))
    return 1.0


def reference_tables(method, head_dim, h, w, train_len, decouple, rows, cols, theta=10000.0):
    """cos, sin (N, head_dim) for tokens at (rows, cols) of an h x w target grid."""
    dim = head_dim // 2
    len_h, len_w = (h, w) if decouple else (max(h, w), max(h, w))
    fh = reference_freqs(method, dim, theta, len_h, train_len)
    fw = reference_freqs(method, dim, theta, len_w, train_len)
    ang = np.concatenate([np.repeat(np.outer(rows, fh), 2, axis=1), np.repeat(np.outer(cols, fw), 2, axis=1)], 1)
    scale = reference_scale(method, h, w, train_len)
    return np.cos(ang) * scale, np.sin(ang) * scale


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head_dim, h, w, decouple", [
    (72, 24, 32, False), (72, 24, 32, True), (96, 40, 18, True), (64, 12, 20, False), (72, 10, 8, False)])
def test_tables_match_an_independent_float64_formula(method, head_dim, h, w, decouple):
    settings = RopeSettings(head_dim, 10000.0, method, decouple, 16 if method != "normal" else None)
    cos, sin = rope_tables(settings, h, w)
    rows, cols = np.divmod(np.arange(h * w), w)
    ref_cos, ref_sin = reference_tables(method, head_dim, h, w, 16, decouple, rows, cols)
    assert cos.shape == (h * w, head_dim)
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=2e-5)
    np.testing.assert_allclose(sin, ref_sin, rtol=0, atol=2e-5)


def test_reference_formula_can_tell_the_methods_apart():
    """Guards the test above: at an extrapolated size the methods give different tables."""
    rows, cols = np.divmod(np.arange(24 * 32), 32)
    tables = {m: reference_tables(m, 72, 24, 32, 16, False, rows, cols)[0] for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            if a < b:
                assert np.abs(tables[a] - tables[b]).max() > 1e-3, (a, b)


# ---------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------

def _rotate(x, cos, sin):
    """The attention's rotation with interleaved pairs: x * cos + rotate_half(x) * sin."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = np.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(x.shape)
    return x * cos + rotated * sin


def test_rotated_dot_products_depend_only_on_relative_position():
    settings = RopeSettings(32)
    cos, sin = rope_tables(settings, 6, 6)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 32))
    qr = _rotate(np.broadcast_to(q, (36, 32)), cos, sin)
    kr = _rotate(np.broadcast_to(k, (36, 32)), cos, sin)
    dots = qr @ kr.T                                                  # (36, 36)
    at = lambda r, c: r * 6 + c
    assert dots[at(1, 2), at(3, 1)] == pytest.approx(dots[at(2, 4), at(4, 3)], abs=1e-5)
    assert dots[at(0, 0), at(2, 2)] == pytest.approx(dots[at(3, 3), at(5, 5)], abs=1e-5)
    assert abs(dots[at(0, 0), at(2, 1)] - dots[at(0, 0), at(1, 2)]) > 1e-3   # rows and columns are not mixed up


def test_first_half_rotates_with_the_row_second_with_the_column():
    cos, sin = rope_tables(RopeSettings(16), 3, 5)
    by_row = cos.reshape(3, 5, 16)
    assert np.all(by_row[:, :, :8] == by_row[:, :1, :8])                 # height half constant along a row
    assert np.all(by_row[:, :, 8:] == by_row[:1, :, 8:])                 # width half constant along a column
    assert np.all(cos[:, 0::2] == cos[:, 1::2])                          # interleaved pairs share a frequency


@pytest.mark.parametrize("method", ["linear", "ntk-aware", "ntk-by-parts", "yarn"])
def test_inside_the_training_grid_every_method_is_plain_rope(method):
    plain = rope_tables(RopeSettings(72), 16, 12)
    tables = rope_tables(RopeSettings(72, method=method, ori_max_pe_len=16), 16, 12)
    np.testing.assert_array_equal(tables[0], plain[0])
    np.testing.assert_array_equal(tables[1], plain[1])


def test_decouple_scales_each_axis_by_its_own_length():
    coupled = RopeSettings(72, method="ntk-aware", ori_max_pe_len=16)
    fh, fw, _ = grid_frequencies(coupled, 16, 48)
    np.testing.assert_array_equal(fh, fw)                                # both axes use the longer side
    fh, fw, _ = grid_frequencies(RopeSettings(72, method="ntk-aware", decouple=True, ori_max_pe_len=16), 16, 48)
    np.testing.assert_array_equal(fh, grid_frequencies(RopeSettings(72), 1, 1)[0])   # 16 = training side
    assert fw[-1] < fh[-1]


def test_attention_scales():
    yarn = RopeSettings(72, method="yarn", ori_max_pe_len=16)
    assert attention_scale(yarn, 32, 8) == pytest.approx(0.1 * math.log(2) + 1)
    assert attention_scale(yarn, 8, 8) == 1
    pro2 = RopeSettings(72, method="ntk-aware-pro2", ori_max_pe_len=16)
    assert attention_scale(pro2, 32, 32) == pytest.approx(math.sqrt(math.log(2048) / math.log(256)), rel=1e-6)
    np.testing.assert_allclose(attention_scale(pro2, np.array([32, 8]), np.array([32, 8])),
                               [math.sqrt(math.log(2048) / math.log(256)), 1.0], rtol=1e-6)


def test_per_sample_sizes_equal_one_table_per_sample():
    settings = RopeSettings(72, method="ntk-aware", decouple=True, ori_max_pe_len=16)
    sizes = [(24, 32), (16, 16), (10, 40)]
    n = max(h * w for h, w in sizes)
    grid = np.zeros((3, 2, n), dtype=np.int64)
    for i, (h, w) in enumerate(sizes):
        grid[i, :, : h * w] = image_grid(h, w)
    cos, sin = rope_tables_from_grid(settings, grid, sizes=np.array(sizes)[:, None, :])
    for i, (h, w) in enumerate(sizes):
        one_cos, one_sin = rope_tables(settings, h, w)
        np.testing.assert_array_equal(cos[i, : h * w], one_cos)
        np.testing.assert_array_equal(sin[i, : h * w], one_sin)


def test_image_grid_is_the_official_layout():
    grid = image_grid(2, 3)
    np.testing.assert_array_equal(grid, [[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]])   # row 0 width, row 1 height


def test_tables_are_cached_and_read_only():
    settings = RopeSettings(16, method="yarn", ori_max_pe_len=4)
    first = rope_tables(settings, 5, 7)
    assert rope_tables(settings, 5, 7)[0] is first[0]
    with pytest.raises(ValueError):
        first[0][0, 0] = 2.0
    assert rope_tables(settings, 7, 5)[0].shape == (35, 16)


def test_method_names_and_aliases():
    assert resolve_method("VisionNTK") == ("ntk-aware", True)
    assert resolve_method("vision-yarn") == ("yarn", True)
    assert resolve_method("pi") == ("linear", False)
    assert resolve_method("ntk-by-parts") == ("ntk-by-parts", False)
    settings = RopeSettings(72).with_method("vision-ntk", 16)
    assert (settings.method, settings.decouple, settings.ori_max_pe_len) == ("ntk-aware", True, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_dim=72, method="dynamic"), "unknown RoPE method"),
    (dict(head_dim=72, method="yarn"), "ori_max_pe_len"),
    (dict(head_dim=18), "multiple of 4"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RopeSettings(**kwargs)
    with pytest.raises(ValueError):
        resolve_method("dynamic-ntk")


def test_empty_grid_is_refused():
    with pytest.raises(ValueError, match="at least 1x1"):
        rope_tables(RopeSettings(16), 0, 4)


def test_rope_module_does_not_import_torch():
    code = "import sys, engines.rope; assert 'torch' not in sys.modules, 'engines.rope imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
