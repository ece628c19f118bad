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
    """The largest step count and guidance scale a request may ask for, and the largest cost of one of its images
    (:func:`image_cost`; None: no limit). The engine's own limits are the defaults (:data:`engines.sampler.MAX_STEPS`,
    :data:`engines.sampler.MAX_CFG`, where the reasons are given; no cost limit); a server may set lower ones as its
    policy, and its refusals then read exactly as the engine's, with its numbers."""

    max_steps: int = MAX_STEPS
    max_cfg: float = MAX_CFG
    max_cost: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) \
                or not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be a whole number from 1 to {MAX_STEPS:,}, got {self.max_steps!r}")
        if isinstance(self.max_cfg, bool) or not isinstance(self.max_cfg, (int, float)) \
                or not 0 <= self.max_cfg <= MAX_CFG:
            raise ValueError(f"max_cfg must be a number from 0 to {MAX_CFG:g}, got {self.max_cfg!r}")
        if self.max_cost is not None and (isinstance(self.max_cost, bool) or not isinstance(self.max_cost, int)
                                          or self.max_cost < 1):
            raise ValueError(f"max_cost must be a whole number of at least 1 or None, got {self.max_cost!r}")

    def to_dict(self) -> dict:
        return {"max_steps": self.max_steps, "max_cfg": float(self.max_cfg), "max_cost": self.max_cost}


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


def max_evaluations(sampler: SamplerSettings) -> int:
    """Network evaluations of one sampling loop, at most: the fixed-step samplers' own count (euler, ab2, unipc,
    sde: steps; heun: 2 x steps); dopri5's worst case under the step limit it runs with (:data:`MAX_STEPS`,
    ``engines.sampler.dopri5``): 2 (the first velocity and the initial step size), then 6 per attempted step,
    accepted or rejected."""
    return 2 + 6 * MAX_STEPS if sampler.method == "dopri5" else sampler.evaluations()


def image_cost(tokens: int, settings: GenerationSettings, conditional: bool) -> int:
    """The network work of one image, in token evaluations: :func:`max_evaluations` x its tokens (``tokens``:
    (W/g) x (H/g) for the pixel granularity g), x 2 when the network runs the cond and uncond halves (guidance on
    and ``conditional``: a class given). Batching and padding are left out: the cost of a request is its own."""
    return max_evaluations(settings.sampler) * tokens * (2 if settings.guided and conditional else 1)


def check_cost(tokens: int, settings: GenerationSettings, conditional: bool, limits: Limits) -> None:
    """GenerationError when an image costs more than ``limits.max_cost`` (:func:`image_cost`)."""
    if limits.max_cost is None:
        return
    cost = image_cost(tokens, settings, conditional)
    if cost > limits.max_cost:
        evaluations = max_evaluations(settings.sampler)
        bound = " at most (dopri5)" if settings.sampler.method == "dopri5" else ""
        halves = " x 2 (guidance)" if settings.guided and conditional else ""
        raise GenerationError(f"this request costs {cost:,} ({evaluations:,} network evaluations{bound} x {tokens} "
                              f"tokens{halves}), more than the limit of {limits.max_cost:,}; ask for fewer steps, "
                              f"a smaller size or another sampler")


__all__ = ["GenerationError", "Limits", "ENGINE_LIMITS", "Request", "GenerationSettings", "Job", "Jobs",
           "max_evaluations", "image_cost", "check_cost"]
