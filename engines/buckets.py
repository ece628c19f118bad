"""Resolution buckets — the one place that decides which shapes an engine is built for and which it runs.

A *bucket* is a token budget (the longest sequence it holds) and the image sizes it was declared for. An image
of W x H pixels is (W/g) * (H/g) tokens, g = the package's ``pixel_granularity`` (VAE downsample x patch size;
16 for the SD VAE with patch 2, so 256x256 px = 256 tokens). A request goes to the smallest bucket that holds
it; every aspect ratio with at most that many tokens fits, because the graph takes a padded sequence.

Every tool writes sizes WIDTHxHEIGHT in pixels (:func:`parse_size`, :func:`parse_sizes`). Buckets are written
the way ``--profiles`` takes them: pixel sizes ``256x256,320x320,224x448`` or token counts ``64,256,1024``,
mixed freely. Sizes with the same token count share one bucket.

The graph batch is images x 2 when classifier-free guidance runs (cond and uncond halves in one call), so with
CFG a ``--batch 1:4`` image range becomes a graph batch range of 2..8 (an unguided call is padded up with masked
rows; build without CFG when most calls are unguided). Each bucket becomes one TensorRT optimization profile with,
for every dynamic input, ``batch`` and ``seq`` ranges:

    seq:    min = previous bucket's budget + 1 (1 for the first), opt = max = budget
    batch:  images min/opt/max, each x 2 with CFG

With ``static`` every bucket's seq is exactly its budget (min = opt = max): the runtime pads requests up to it
(padding is masked, so results do not change) and, when the batch range is a single value too, replays a CUDA
graph. Imports only the standard library and the graph contract: training, export and the runtime all use it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from engines.contract import GraphContract, TensorSpec


class BucketError(ValueError):
    """Bucket specification or request a user gave cannot be used; the message says what to change."""


# ----------------------------------------------------------------------------------------------------------
# Ranges
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """An inclusive min/opt/max range of one axis (TensorRT's optimization-profile triple)."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise BucketError(f"a range needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def covers(self, value: int) -> bool:
        return self.min <= value <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class BatchRange:
    """How many *images* one call carries (min/opt/max), and whether calls are guided (graph batch x 2)."""

    images_min: int = 1
    images_opt: int = 1
    images_max: int = 1
    cfg: bool = True

    def __post_init__(self):
        if not 1 <= self.images_min <= self.images_opt <= self.images_max:
            raise BucketError(f"batch range needs 1 <= MIN <= OPT <= MAX images, got "
                              f"{self.images_min}:{self.images_opt}:{self.images_max}")

    @property
    def graph(self) -> Range:
        """Range of the graph's ``batch`` axis: guided calls carry 2B rows (cond + uncond), unguided B."""
        factor = 2 if self.cfg else 1
        return Range(self.images_min * factor, self.images_opt * factor, self.images_max * factor)

    def to_dict(self) -> dict:
        return {"images": [self.images_min, self.images_opt, self.images_max], "cfg": self.cfg,
                "graph": self.graph.as_list()}


def parse_batch(text: str, cfg: bool = True) -> BatchRange:
    """``"N"``, ``"MIN:MAX"`` or ``"MIN:OPT:MAX"`` images per call (OPT defaults to MIN) -> BatchRange."""
    parts = str(text).strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BucketError(f"--batch must be N, MIN:MAX or MIN:OPT:MAX images (integers), got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    elif len(values) == 2:
        values = [values[0], values[0], values[1]]
    elif len(values) != 3:
        raise BucketError(f"--batch must be N, MIN:MAX or MIN:OPT:MAX images, got {text!r}")
    try:
        return BatchRange(*values, cfg=cfg)
    except BucketError:
        raise BucketError(f"--batch {text}: need 1 <= MIN <= OPT <= MAX images") from None


# ----------------------------------------------------------------------------------------------------------
# Buckets
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bucket:
    """A token budget and the pixel sizes (width, height) declared for it (empty when given as a count)."""

    tokens: int
    sizes: tuple[tuple[int, int], ...] = ()

    @property
    def name(self) -> str:
        """Short stable label, used in engine file names: ``t256``."""
        return f"t{self.tokens}"

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "sizes": [list(s) for s in self.sizes]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Bucket":
        return cls(int(data["tokens"]), tuple((int(w), int(h)) for w, h in data.get("sizes", ())))


def tokens_for_size(width: int, height: int, granularity: int) -> int:
    """Sequence length of a width x height pixel image; sides must be positive multiples of ``granularity``."""
    if width <= 0 or height <= 0:
        raise BucketError(f"image size must be positive, got {width}x{height}")
    if width % granularity or height % granularity:
        raise BucketError(f"{width}x{height} is off the pixel grid: sides must be multiples of {granularity}; "
                          f"nearest valid: {nearest_on_grid(width, granularity)}x{nearest_on_grid(height, granularity)}")
    return (width // granularity) * (height // granularity)


def nearest_on_grid(value: int, granularity: int) -> int:
    return max(granularity, int(round(value / granularity)) * granularity)


_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_COUNT = re.compile(r"^\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> (320, 240): the one size syntax of every tool, WIDTHxHEIGHT in pixels (``x``, ``X`` or
    ``×``, spaces allowed). BucketError for anything else or a zero side."""
    size = _SIZE.match(str(text))
    if not size:
        raise BucketError(f"size {str(text).strip()!r} is not WIDTHxHEIGHT in pixels (e.g. 256x256)")
    width, height = int(size.group(1)), int(size.group(2))
    if width < 1 or height < 1:
        raise BucketError(f"size {width}x{height}: width and height must be positive")
    return width, height


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Comma-separated WIDTHxHEIGHT sizes -> [(width, height), ...] in the given order."""
    sizes = [parse_size(item) for item in str(text).split(",") if item.strip()]
    if not sizes:
        raise BucketError(f"no size in {text!r}: give WIDTHxHEIGHT sizes such as 256x256,448x224")
    return sizes


def parse_profiles(text: str | Iterable[str], granularity: int) -> tuple[Bucket, ...]:
    """Buckets from ``--profiles``: comma-separated WIDTHxHEIGHT pixel sizes and/or token counts.

    Returns buckets sorted by token budget; sizes with equal token counts are merged into one bucket.
    """
    entries = [e for e in (text.split(",") if isinstance(text, str) else list(text)) if str(e).strip()]
    if not entries:
        raise BucketError("--profiles is empty: give pixel sizes like 256x256,320x320 or token counts like 64,256")
    by_tokens: dict[int, list[tuple[int, int]]] = {}
    for entry in entries:
        entry = str(entry)
        if _SIZE.match(entry):
            w, h = parse_size(entry)
            sizes = by_tokens.setdefault(tokens_for_size(w, h, granularity), [])
            if (w, h) not in sizes:
                sizes.append((w, h))
            continue
        count = _COUNT.match(entry)
        if count and int(count.group(1)) > 0:
            by_tokens.setdefault(int(count.group(1)), [])
            continue
        raise BucketError(f"cannot read profile {entry.strip()!r}: use WIDTHxHEIGHT pixels (e.g. 256x256) "
                          f"or a positive token count (e.g. 256)")
    return tuple(Bucket(t, tuple(s)) for t, s in sorted(by_tokens.items()))


# ----------------------------------------------------------------------------------------------------------
# Plans: buckets x batch range -> per-input min/opt/max shapes
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BucketProfile:
    """Everything an optimization profile needs: its bucket and the batch/seq ranges."""

    bucket: Bucket
    batch: Range
    seq: Range

    def shapes(self, inputs: Sequence[TensorSpec]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """input name -> (min shape, opt shape, max shape) of graph inputs (``engines.contract.TensorSpec``: dynamic
        axes given by name, ``"batch"``/``"seq"``)."""
        out = {}
        for spec in inputs:
            dims = []
            for dim in spec.shape:
                if dim == GraphContract.BATCH:
                    dims.append(self.batch.as_list())
                elif dim == GraphContract.SEQ:
                    dims.append(self.seq.as_list())
                elif isinstance(dim, int) and dim > 0:
                    dims.append([dim] * 3)
                else:
                    raise BucketError(f"input {spec.name!r} has axis {dim!r}; the graph contract allows only "
                                      f"'{GraphContract.BATCH}', '{GraphContract.SEQ}' and fixed sizes — re-export "
                                      f"the package")
            out[spec.name] = tuple(tuple(d[i] for d in dims) for i in range(3))
        return out

    @property
    def is_static(self) -> bool:
        return self.batch.is_static and self.seq.is_static

    def to_dict(self, inputs: Sequence[TensorSpec] = ()) -> dict:
        data = {"bucket": self.bucket.to_dict(), "batch": self.batch.as_list(), "seq": self.seq.as_list()}
        if inputs:
            data["shapes"] = {name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                              for name, (lo, opt, hi) in self.shapes(inputs).items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "BucketProfile":
        return cls(Bucket.from_dict(data["bucket"]), Range(*data["batch"]), Range(*data["seq"]))


def plan_profiles(buckets: Sequence[Bucket], batch: BatchRange, static: bool = False) -> tuple[BucketProfile, ...]:
    """One profile per bucket (sorted by budget). Without ``static``, bucket i serves sequences longer than
    bucket i-1's budget; with it, exactly its budget (requests are padded up)."""
    ordered = sorted(buckets, key=lambda b: b.tokens)
    if len({b.tokens for b in ordered}) != len(ordered):
        raise BucketError("two buckets have the same token budget; merge them")
    profiles, previous = [], 0
    for bucket in ordered:
        seq = Range(bucket.tokens, bucket.tokens, bucket.tokens) if static else Range(previous + 1, bucket.tokens,
                                                                                         bucket.tokens)
        profiles.append(BucketProfile(bucket, batch.graph, seq))
        previous = bucket.tokens
    return tuple(profiles)


def smallest_bucket(buckets: Sequence[Bucket], tokens: int) -> Bucket:
    """The smallest bucket whose budget holds ``tokens``; BucketError naming the largest when none does."""
    for bucket in sorted(buckets, key=lambda b: b.tokens):
        if tokens <= bucket.tokens:
            return bucket
    largest = max(b.tokens for b in buckets)
    raise BucketError(f"a request of {tokens} tokens is larger than the largest bucket ({largest} tokens); "
                      f"build with a larger profile or choose a smaller size")


def bucket_for_size(buckets: Sequence[Bucket], width: int, height: int, granularity: int) -> Bucket:
    """The smallest bucket that holds a width x height pixel image."""
    return smallest_bucket(buckets, tokens_for_size(width, height, granularity))


# ----------------------------------------------------------------------------------------------------------
# Runtime choice
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileChoice:
    """Which profile runs a request, and the (batch, seq) the request is padded to for it."""

    index: int
    batch: int
    seq: int


def choose_profile(profiles: Sequence[tuple[Range, Range]], batch: int, seq: int) -> ProfileChoice:
    """Pick the profile for a call of ``batch`` rows and ``seq`` tokens.

    profiles: (batch range, seq range) per profile, in engine order. A profile holds the call when the call fits
    under its max; a call below a profile's min is padded up to it (padding rows/tokens are masked). The choice
    minimises padded work (rows x tokens) and then the distance to the profile's opt, so a profile that covers
    the call exactly wins, and among those the nearest opt. Ties go to the lower index.
    """
    best, best_key = None, None
    for index, (b_range, s_range) in enumerate(profiles):
        if batch > b_range.max or seq > s_range.max:
            continue
        b, s = max(batch, b_range.min), max(seq, s_range.min)
        key = (b * s, abs(b_range.opt - b) + abs(s_range.opt - s), index)
        if best_key is None or key < best_key:
            best, best_key = ProfileChoice(index, b, s), key
    if best is None:
        limits = ", ".join(f"batch<={b.max} seq<={s.max}" for b, s in profiles) or "none"
        raise BucketError(f"no optimization profile holds a call of batch {batch} and {seq} tokens "
                          f"(profiles: {limits}); rebuild the engine with larger --profiles or --batch")
    return best
