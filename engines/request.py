"""What one generation call asks for, and the types its checks produce (docs/runtime-spec.md §2).

A request is checked once, by :meth:`engines.pipeline.Pipeline.prepare`, into :class:`Job` objects (a checked
:class:`Request` plus its resolved :class:`GenerationSettings`); generation takes jobs and never checks again.
Command lines, the server, the web page and ``node fit-run`` only translate their input into ``prepare``'s
arguments and render its :class:`GenerationError` (parameter -> flag or field, hint -> the option that fixes it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

from engines.rope import RopeSettings
from engines.sampler import MAX_CFG, MAX_STEPS, SamplerSettings, SettingError


class GenerationError(SettingError):
    """A request the package cannot serve (size off the grid or too large, unknown class, bad settings).

    ``parameter``: the request parameter at fault (``width``, ``cfg``, ...) when one is; the message then starts
    with its name, which a command line replaces with its flag (``cli.common.user_errors``). ``mentions``: other
    parameters the message names, each as ``NAME VALUE``. ``hint``: the name of an option that would make the
    request valid (``snap`` for a size off the pixel grid); a front end that has that option adds it to the message.
    """

    def __init__(self, message: str, parameter: Optional[str] = None, *, hint: Optional[str] = None,
                 mentions: tuple[str, ...] = ()):
        super().__init__(message, parameter)
        self.hint = hint
        self.mentions = tuple(mentions)


@dataclass(frozen=True)
class Limits:
    """The largest step count and guidance scale a request may ask for. The engine's own limits are the defaults
    (:data:`engines.sampler.MAX_STEPS`, :data:`engines.sampler.MAX_CFG`, where the reasons are given); a server may
    set lower ones as its policy, and its refusals then read exactly as the engine's, with its numbers."""

    max_steps: int = MAX_STEPS
    max_cfg: float = MAX_CFG

    def __post_init__(self):
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) \
                or not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be a whole number from 1 to {MAX_STEPS:,}, got {self.max_steps!r}")
        if isinstance(self.max_cfg, bool) or not isinstance(self.max_cfg, (int, float)) \
                or not 0 <= self.max_cfg <= MAX_CFG:
            raise ValueError(f"max_cfg must be a number from 0 to {MAX_CFG:g}, got {self.max_cfg!r}")

    def to_dict(self) -> dict:
        return {"max_steps": self.max_steps, "max_cfg": float(self.max_cfg)}


ENGINE_LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    """One image: pixel size, class id (``None`` = unconditional) and the seed of its initial noise."""

    width: int
    height: int
    label: Optional[int]
    seed: int


@dataclass(frozen=True)
class GenerationSettings:
    """Everything besides the request that decides an image, resolved once from the request and the package
    defaults (:meth:`engines.pipeline.Pipeline.settings`); it drives the sampler and is what the PNG metadata
    records."""

    sampler: SamplerSettings
    cfg: float
    extrapolation: str                  # canonical name of the RoPE method used
    rope: RopeSettings
    scale_pow: float = 0.0

    @property
    def guided(self) -> bool:
        """Whether the network runs cond and uncond halves (classifier-free guidance on)."""
        return self.cfg != 1.0

    def loop_key(self) -> tuple:
        """Requests whose settings share this key can share one step loop (and so one padded batch): same
        integrator, steps and tolerances, guidance on or off. Scale and extrapolation may differ per row."""
        return (self.sampler, self.guided, self.scale_pow)


@dataclass(frozen=True)
class Job:
    """One image to generate: a checked request (size on the grid, class id resolved, seed in range) and its
    settings. Made by :meth:`engines.pipeline.Pipeline.prepare`; what generation, batching and the PNG metadata
    take."""

    request: Request
    settings: GenerationSettings


class Jobs(Sequence):
    """The jobs of one checked request, made on access (so ``num`` may be any size): image ``i`` (0-based) has the
    size, class ``labels[i % len(labels)]`` and seed ``seed + i``, all with the same settings."""

    def __init__(self, width: int, height: int, labels: Sequence[Optional[int]], seed: int, num: int,
                 settings: GenerationSettings):
        self.width, self.height, self.labels, self.seed, self.num = width, height, tuple(labels), seed, num
        self.settings = settings

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.num))]
        i = index + self.num if index < 0 else index
        if not 0 <= i < self.num:
            raise IndexError(f"job {index} of {self.num}")
        request = Request(self.width, self.height, self.labels[i % len(self.labels)], self.seed + i)
        return Job(request, self.settings)


__all__ = ["GenerationError", "Limits", "ENGINE_LIMITS", "Request", "GenerationSettings", "Job", "Jobs"]
