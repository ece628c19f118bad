"""2D rotary position tables for FiT — the one implementation shared by training, export and the runtime.

An image of h x w patches is a sequence of h*w tokens; token i sits at (row, col). Each attention head of
``head_dim`` channels is split in two halves: the first half rotates with the row index, the second with the
column index. Inside a half, channel pairs (2k, 2k+1) rotate together at frequency ``freqs[k]`` (interleaved
layout, matching the official ``rotate_half``). The tables returned here are what the attention multiplies by:

    q_rot = q * cos + rotate_half(q) * sin        cos, sin: (N, head_dim)

Extrapolation methods change the per-axis frequencies and, for some, scale the tables:

    normal          plain RoPE
    linear          position interpolation (PI): freqs / s
    ntk-aware       NTK-aware base change: base * s^(d/(d-2))
    ntk-by-parts    blend of PI, NTK and plain RoPE by wavelength
    yarn            YaRN: blend of PI and plain RoPE, tables scaled by 0.1 ln s + 1
    ntk-aware-pro1  NTK-aware, tables scaled by sqrt(ln(2L)/ln(L_train)) (longest side)
    ntk-aware-pro2  NTK-aware, same attention scale computed on the token count

where s = max(1, L_target / ori_max_pe_len). With ``decouple`` the height and width axes get their own scale;
without it both use the longer side.

Extrapolation names (what users choose, :data:`EXTRAPOLATIONS`): each official method above, coupled
(``decouple`` off), plus two decoupled ones, ``vision-ntk`` = ntk-aware + decouple and ``vision-yarn`` = yarn +
decouple. :func:`canonical_extrapolation` also accepts the spellings in :data:`EXTRAPOLATION_ALIASES`.

Arithmetic follows the official float32 formulas step by step so the tables agree with it to float32
rounding; powers, logarithms and cos/sin go through float64 and are rounded once, so any language reproduces the
tables bit for bit (docs/runtime-spec.md §5). This module imports only numpy; the torch model reuses
:func:`assemble_tables` with ``xp=torch``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The official ``custom_freqs`` methods: the formulas of this module.
METHODS = ("normal", "linear", "ntk-aware", "ntk-by-parts", "yarn", "ntk-aware-pro1", "ntk-aware-pro2")

# The decoupled extrapolations (FiTv2's VisionNTK, VisionYaRN): canonical name -> official method.
_DECOUPLED = {"vision-ntk": "ntk-aware", "vision-yarn": "yarn"}

# Canonical extrapolation names, the only ones command lines show.
EXTRAPOLATIONS = METHODS + tuple(_DECOUPLED)

# Other spellings accepted for them (lower case) -> canonical name.
EXTRAPOLATION_ALIASES = {
    "none": "normal",
    "pi": "linear",
    "ntk": "ntk-aware",
    "ntk-parts": "ntk-by-parts",
    "ntk-pro1": "ntk-aware-pro1",
    "ntk-pro2": "ntk-aware-pro2",
    "visionntk": "vision-ntk",
    "visionyarn": "vision-yarn",
}

F32 = np.float32


@dataclass(frozen=True)
class RopeSettings:
    """Everything that decides a table besides the image size."""

    head_dim: int
    theta: float = 10000.0
    method: str = "normal"
    decouple: bool = False
    ori_max_pe_len: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown RoPE method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim must be a multiple of 4 for 2D RoPE, got {self.head_dim}")
        if self.method != "normal" and not self.ori_max_pe_len:
            raise ValueError(f"RoPE method {self.method!r} needs ori_max_pe_len (the training grid side in patches)")

    @property
    def axis_dim(self) -> int:
        """Channels per axis (the official ``dim``)."""
        return self.head_dim // 2

    def with_method(self, name: str, ori_max_pe_len: int | None = None) -> "RopeSettings":
        """Same settings with the extrapolation ``name`` (canonical or alias), which sets method and decouple."""
        method, decouple = resolve_method(name)
        return RopeSettings(self.head_dim, self.theta, method, decouple, ori_max_pe_len or self.ori_max_pe_len)


def canonical_extrapolation(name: str) -> str:
    """The canonical extrapolation name (one of :data:`EXTRAPOLATIONS`) of ``name``, an alias or a canonical
    name in any case; ValueError naming the canonical names otherwise."""
    key = str(name).strip().lower()
    key = EXTRAPOLATION_ALIASES.get(key, key)
    if key not in EXTRAPOLATIONS:
        raise ValueError(f"unknown RoPE method {name!r}; choose one of {', '.join(EXTRAPOLATIONS)}")
    return key


def resolve_method(name: str) -> tuple[str, bool]:
    """Map an extrapolation name to (official custom_freqs, decouple)."""
    key = canonical_extrapolation(name)
    return (_DECOUPLED[key], True) if key in _DECOUPLED else (key, False)


def extrapolation_name(settings: RopeSettings) -> str:
    """The extrapolation name of ``settings``' method and decouple: the inverse of :func:`resolve_method` (a
    decoupled method without a canonical name, which only a custom config can have, is reported as
    ``METHOD+decouple``)."""
    if not settings.decouple:
        return settings.method
    named = [name for name, method in _DECOUPLED.items() if method == settings.method]
    return named[0] if named else f"{settings.method}+decouple"


# --------------------------------------------------------------------------------------------------------------
# Per-axis frequencies
# --------------------------------------------------------------------------------------------------------------

def _pow(base, exponent) -> np.ndarray:
    """float32 power through float64 (correctly rounded in practice; numpy's float32 kernels are not), so any
    language computes the same tables."""
    return np.power(np.asarray(base, np.float64), np.asarray(exponent, np.float64)).astype(F32)


def _log(x) -> np.ndarray:
    """float32 natural logarithm through float64 (see :func:`_pow`)."""
    return np.log(np.asarray(x, np.float64)).astype(F32)


def _exponents(dim: int) -> np.ndarray:
    return np.arange(0, dim, 2, dtype=F32) / F32(dim)                     # (dim/2,)


def _correction_range(low_rot: float, high_rot: float, dim: int, base: float, max_len: int) -> tuple[int, int]:
    """Dimension range whose wavelengths fall between ``low_rot`` and ``high_rot`` rotations over ``max_len``."""
    def factor(rot):
        return (dim * math.log(max_len / (rot * 2 * math.pi))) / (2 * math.log(base))
    return max(math.floor(factor(low_rot)), 0), min(math.ceil(factor(high_rot)), dim - 1)


def _ramp(low: float, high: float, n: int) -> np.ndarray:
    if low == high:
        high += 0.001
    return np.clip((np.arange(n, dtype=F32) - F32(low)) / F32(high - low), F32(0), F32(1))


def _scale(max_pe_len, ori_max_pe_len) -> np.ndarray:
    return np.maximum(np.asarray(max_pe_len, dtype=F32) / F32(ori_max_pe_len), F32(1))


def axis_frequencies(settings: RopeSettings, max_pe_len) -> np.ndarray:
    """Rotation frequencies of one axis. max_pe_len: scalar or (B,) target lengths -> (dim/2,) or (B, dim/2)."""
    dim, theta = settings.axis_dim, settings.theta
    exps = _exponents(dim)
    base_freqs = F32(1) / _pow(F32(theta), exps)
    if settings.method == "normal":
        return base_freqs if np.ndim(max_pe_len) == 0 else np.broadcast_to(base_freqs, (len(max_pe_len), dim // 2))
    s = _scale(max_pe_len, settings.ori_max_pe_len)[..., None]               # (..., 1)
    linear = F32(1) / (s * _pow(F32(theta), exps))
    ntk_base = F32(theta) * _pow(s, F32(dim / (dim - 2)))
    ntk = F32(1) / _pow(ntk_base, exps)
    method = settings.method
    if method == "linear":
        out = linear
    elif method.startswith("ntk-aware"):
        out = ntk
    elif method == "ntk-by-parts":
        low, high = _correction_range(1.25, 0.75, dim, theta, settings.ori_max_pe_len)
        blend = F32(1) - _ramp(low, high, dim // 2)
        out = linear * (F32(1) - blend) + ntk * blend
        low, high = _correction_range(16, 2, dim, theta, settings.ori_max_pe_len)
        blend = F32(1) - _ramp(low, high, dim // 2)
        out = out * (F32(1) - blend) + base_freqs * blend
    elif method == "yarn":
        low, high = _correction_range(32, 1, dim, theta, settings.ori_max_pe_len)
        blend = F32(1) - _ramp(low, high, dim // 2)
        out = linear * (F32(1) - blend) + base_freqs * blend
    else:  # pragma: no cover - RopeSettings validates the name
        raise ValueError(method)
    return out.astype(F32)


def _proportion(l_test, l_train) -> np.ndarray:
    l_test = np.asarray(l_test, dtype=np.float64) * 2
    ratio = (l_test / l_train).astype(F32)
    value = np.sqrt(_log(l_test.astype(F32)) / F32(math.log(l_train)))
    return np.where(ratio <= 1, F32(1), value).astype(F32)


def attention_scale(settings: RopeSettings, height, width) -> np.ndarray:
    """Factor the tables are multiplied by (YaRN mscale, pro1/pro2 proportions); 1 for the other methods.

    height, width: target grid in patches, scalars or (B,) arrays.
    """
    h = np.asarray(height)
    w = np.asarray(width)
    if settings.method == "yarn":
        s = _scale(np.maximum(h, w), settings.ori_max_pe_len)
        return np.where(s <= 1, F32(1), F32(0.1) * _log(s) + F32(1)).astype(F32)
    if settings.method == "ntk-aware-pro1":
        return _proportion(np.maximum(h, w), settings.ori_max_pe_len)
    if settings.method == "ntk-aware-pro2":
        return _proportion(h * w, settings.ori_max_pe_len ** 2)
    return np.ones(np.broadcast(h, w).shape, dtype=F32)


def grid_frequencies(settings: RopeSettings, height, width):
    """(freqs_h, freqs_w, scale) for a target grid of height x width patches (scalars or (B,) arrays)."""
    if settings.decouple:
        len_h, len_w = height, width
    else:
        len_h = len_w = np.maximum(np.asarray(height), np.asarray(width))
    return (axis_frequencies(settings, len_h), axis_frequencies(settings, len_w),
            attention_scale(settings, height, width))


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------

def assemble_tables(grid_w, grid_h, freqs_h, freqs_w, scale, xp=np):
    """cos/sin tables from token positions. Works for numpy and torch (pass ``xp=torch``).

    grid_w, grid_h: (B, N) column and row index of each token (float32)
    freqs_h, freqs_w: (B or 1, 1, F) per-axis frequencies, F = head_dim / 4
    scale: (B or 1, 1, 1) attention scale
    returns cos, sin: (B, N, head_dim)
    """
    ang_h = grid_h[..., None] * freqs_h                                       # (B, N, F)
    ang_w = grid_w[..., None] * freqs_w                                       # (B, N, F)
    ang_h = xp.stack((ang_h, ang_h), -1).reshape(*ang_h.shape[:-1], -1)       # (B, N, 2F) interleaved
    ang_w = xp.stack((ang_w, ang_w), -1).reshape(*ang_w.shape[:-1], -1)
    ang = xp.concatenate((ang_h, ang_w), -1)                                  # (B, N, head_dim)
    if xp is np:   # float32 cos/sin correctly rounded (through float64), so any language gets the same tables
        wide = ang.astype(np.float64)
        return np.cos(wide).astype(F32) * scale, np.sin(wide).astype(F32) * scale
    return xp.cos(ang) * scale, xp.sin(ang) * scale


def _as_batched(freqs: np.ndarray) -> np.ndarray:
    return freqs[None, None, :] if freqs.ndim == 1 else freqs[:, None, :]


def rope_tables_from_grid(settings: RopeSettings, grid, target_hw=None, sizes=None):
    """Tables for tokens at arbitrary positions.

    grid: (B, 2, N) — row 0 column (width) index, row 1 row (height) index (the official layout)
    target_hw: (h, w) grid the extrapolation is computed for (the official max_pe_len_h/w); used when ``sizes``
        is None. Defaults to the extent of the grid.
    sizes: (B, 2) per-sample (h, w) in patches — the online RoPE of high-resolution post-training.
    returns cos, sin: (B, N, head_dim) float32
    """
    grid = np.asarray(grid)
    if sizes is not None:
        sizes = np.asarray(sizes).reshape(-1, 2)
        fh, fw, scale = grid_frequencies(settings, sizes[:, 0], sizes[:, 1])
        scale = scale.reshape(-1, 1, 1)
    else:
        if target_hw is None:
            target_hw = (int(grid[:, 1].max()) + 1, int(grid[:, 0].max()) + 1)
        fh, fw, scale = grid_frequencies(settings, *target_hw)
        scale = np.asarray(scale, dtype=F32).reshape(1, 1, 1)
    cos, sin = assemble_tables(grid[:, 0].astype(F32), grid[:, 1].astype(F32),
                               _as_batched(np.asarray(fh)), _as_batched(np.asarray(fw)), scale)
    return cos.astype(F32), sin.astype(F32)


def image_grid(height: int, width: int) -> np.ndarray:
    """(2, h*w) int64 positions of a row-major h x w patch grid: row 0 column index, row 1 row index."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([cols.reshape(-1), rows.reshape(-1)]).astype(np.int64)


@lru_cache(maxsize=256)
def _cached_tables(settings: RopeSettings, height: int, width: int):
    cos, sin = rope_tables_from_grid(settings, image_grid(height, width)[None], target_hw=(height, width))
    cos, sin = cos[0], sin[0]
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def rope_tables(settings: RopeSettings, height: int, width: int):
    """cos, sin tables (h*w, head_dim) float32 for an h x w patch image; cached per (settings, h, w), read-only."""
    if height < 1 or width < 1:
        raise ValueError(f"image grid must be at least 1x1 patches, got {height}x{width}")
    return _cached_tables(settings, int(height), int(width))
