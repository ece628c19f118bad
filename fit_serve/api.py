"""The HTTP API's request and response bodies, without the HTTP server: parse a ``POST /v1/generate`` body into an
engines job, describe the model for ``GET /v1/model`` (docs/serving.md, "API").

The server checks nothing about a request itself: a body's fields are ``Pipeline.prepare``'s arguments, and every
refusal is the engine's :class:`GenerationError`, in the engine's words, as a :class:`BadRequest` (422). What this
module adds is HTTP: the body size, JSON syntax, the field names, and the server's policy limits (lower steps and
guidance caps than the engine's, passed to ``prepare`` as :class:`engines.request.Limits`). Fields left out take
the package defaults exactly as ``fit-run`` does (size: the package default; class: unconditional; seed: 0;
steps, sampler, cfg, extrapolation, time_shift, tail_compression: the package's).
"""
from __future__ import annotations

import json

from engines.pipeline import GenerationError, Job, Limits, Pipeline
from engines.sampler import SAMPLERS

MAX_BODY_BYTES = 16 * 1024
# field -> the Pipeline.prepare argument it sets
FIELDS = {"width": "width", "height": "height", "class": "label", "seed": "seed", "steps": "steps",
          "sampler": "sampler", "cfg": "cfg", "extrapolation": "extrapolation", "time_shift": "time_shift",
          "tail_compression": "tail_compression"}


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body, with only known field names; raises BadRequest."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        fields = json.loads(body or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise BadRequest(400, f"request body is not JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(fields, dict):
        raise BadRequest(400, f"request body must be a JSON object, not {type(fields).__name__}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise BadRequest(422, f"unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    return fields


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def resolve(pipe: Pipeline, fields: dict, limits: Limits) -> Job:
    """The job of a request body (its one image), checked by the engine under the server's limits; raises
    BadRequest (422) with the engine's message. A field's name is the parameter's name in every message."""
    arguments = {FIELDS[name]: value for name, value in fields.items()}
    try:
        return pipe.prepare(**arguments, limits=limits)[0]
    except GenerationError as err:
        raise BadRequest(422, str(err).splitlines()[0]) from None


def model_info(pipe: Pipeline, limits: Limits) -> dict:
    """``GET /v1/model``: what a client needs to form requests."""
    manifest = pipe.manifest
    return {
        "name": pipe.name,
        "classes": pipe.class_names,
        "num_classes": pipe.num_classes,
        "default_size": list(pipe.default_size),
        "pixel_granularity": pipe.granularity,
        "max_tokens": pipe.max_tokens,
        "buckets": [{"tokens": b.tokens, "sizes": [list(s) for s in b.sizes]} for b in manifest.sizes.buckets],
        "samplers": list(SAMPLERS),
        "extrapolations": list(pipe.extrapolations),
        "defaults": {"sampler": manifest.sampler.method, "steps": manifest.sampler.steps,
                     "time_shift": manifest.sampler.time_shift, "tail_compression": manifest.sampler.tail_compression,
                     "cfg": manifest.guidance.default_scale, "extrapolation": pipe.settings().extrapolation},
        "backend": pipe.backend_name,
        "variant": pipe.variant,
        "limits": {**limits.to_dict(), "max_body_bytes": MAX_BODY_BYTES},
    }
