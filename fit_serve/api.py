"""The HTTP API's request and response bodies, without the HTTP server: parse a ``POST /v1/generate`` body into
an engines request and its settings, describe the model for ``GET /v1/model`` (docs/serving.md, "API").

Every refusal is a :class:`BadRequest` with an HTTP status and one line; fields left out take the package
defaults exactly as ``fit-run`` does (size: the package default; class: unconditional; seed: 0; steps, sampler,
cfg, extrapolation: the package's).
"""
from __future__ import annotations

import json
import math
from engines.pipeline import GenerationError, GenerationSettings, Pipeline, Request
from engines.sampler import SAMPLERS

MAX_BODY_BYTES = 16 * 1024
MAX_STEPS = 1000
MAX_CFG = 1000.0
MAX_SEED = 2 ** 64 - 1

# field -> (JSON types accepted, what the error says it must be)
FIELDS = {
    "width": ((int,), "a whole number of pixels"),
    "height": ((int,), "a whole number of pixels"),
    "class": ((int, str, type(None)), "a class id, a class name or null"),
    "seed": ((int,), "a whole number"),
    "steps": ((int, type(None)), "a whole number"),
    "sampler": ((str, type(None)), "a sampler name"),
    "cfg": ((int, float, type(None)), "a number"),
    "extrapolation": ((str, type(None)), "an extrapolation method name"),
}


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body with every field type-checked; raises BadRequest."""
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
    for name, value in fields.items():
        types, what = FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadRequest(422, f"{name} must be {what}, got {json.dumps(value)[:60]}")
    return fields


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def resolve(pipe: Pipeline, fields: dict) -> tuple[Request, GenerationSettings]:
    """The checked request and its settings, defaults filled in as fit-run fills them; raises BadRequest."""
    steps, cfg, seed = fields.get("steps"), fields.get("cfg"), fields.get("seed", 0)
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise BadRequest(422, f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if cfg is not None and not (math.isfinite(cfg) and 0 <= cfg <= MAX_CFG):
        raise BadRequest(422, f"cfg must be a number from 0 to {MAX_CFG:g}, got {cfg}")
    if not 0 <= seed <= MAX_SEED:
        raise BadRequest(422, f"seed must be between 0 and 2**64 - 1, got {seed}")
    width = fields.get("width", pipe.default_size[0])
    height = fields.get("height", pipe.default_size[1])
    try:
        settings = pipe.settings(steps=steps, sampler=fields.get("sampler"), cfg=cfg,
                                 extrapolation=fields.get("extrapolation"))
        request = pipe.check_request(Request(width, height, fields.get("class"), seed))
    except GenerationError as err:
        raise BadRequest(422, str(err).splitlines()[0].replace(" (or pass --snap)", "")) from None
    return request, settings


def model_info(pipe: Pipeline) -> dict:
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
                     "cfg": manifest.guidance.default_scale, "extrapolation": pipe.settings().extrapolation},
        "backend": pipe.backend_name,
        "variant": pipe.variant,
        "limits": {"max_steps": MAX_STEPS, "max_cfg": MAX_CFG, "max_body_bytes": MAX_BODY_BYTES},
    }

