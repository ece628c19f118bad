"""The HTTP API's request and response bodies, without the HTTP server: parse a ``POST /v1/generate`` or an
OpenAI-style ``POST /v1/images/generations`` body into engine fields, describe the model for ``GET /v1/model``,
and the JSON Schemas of every body for ``/openapi.json`` (docs/serving.md, "API").

The server checks nothing about a request itself: a body's fields are ``Pipeline.prepare``'s arguments, and every
refusal is the engine's :class:`GenerationError`, in the engine's words, as a :class:`BadRequest` (422). What this
module adds is HTTP: the body size, JSON syntax, the field names, and the server's policy limits (lower steps and
guidance caps than the engine's, passed to ``prepare`` as :class:`engines.request.Limits`). Fields left out take
the package defaults exactly as ``fit-run`` does (size: the package default; class: unconditional; seed: 0;
steps, sampler, cfg, extrapolation, time_shift, tail_compression: the package's).

:data:`FIELDS` is the one list of the generation fields: parsing, the engine call and the OpenAPI schemas all
read it. The schemas take their ranges from :func:`model_info` (a package's sizes, classes, samplers and the
server's limits), so they say what this server accepts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from engines.noise import SEED_LIMIT
from engines.pipeline import GenerationError, Job, Limits, Pipeline
from engines.sampler import MAX_TAIL_COMPRESSION, MAX_TIME_SHIFT, MIN_TIME_SHIFT, SAMPLERS, SHIFTED

MAX_BODY_BYTES = 16 * 1024


@dataclass(frozen=True)
class Field:
    """One generation field: the ``Pipeline.prepare`` argument it sets and its JSON Schema (from model_info)."""

    argument: str
    schema: Callable[[dict], dict]


def _size(info: dict, name: str) -> dict:
    g = info["pixel_granularity"]
    return {"type": "integer", "minimum": g, "maximum": g * info["max_tokens"], "multipleOf": g,
            "description": f"{name} in pixels, a multiple of {g}; width x height at most {info['max_tokens']} "
                           f"tokens of {g}x{g} pixels (default {info['default_size'][name == 'height']})"}


FIELDS = {
    "width": Field("width", lambda info: _size(info, "width")),
    "height": Field("height", lambda info: _size(info, "height")),
    "class": Field("label", lambda info: {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": info["num_classes"] - 1},
                  {"type": "string", "minLength": 1, "description": "a class name (any case) or an id in digits"},
                  {"type": "null"}],
        "description": "class id or name; null or absent: unconditional", "examples": info["classes"][:3]}),
    "seed": Field("seed", lambda info: {"type": "integer", "minimum": 0, "maximum": SEED_LIMIT - 1,
                                        "description": "seed of the initial noise (default 0)"}),
    "steps": Field("steps", lambda info: {"type": "integer", "minimum": 1, "maximum": info["limits"]["max_steps"],
                                          "description": f"sampler steps (default {info['defaults']['steps']})"}),
    "sampler": Field("sampler", lambda info: {"type": "string", "enum": list(info["samplers"]),
                                              "description": f"default {info['defaults']['sampler']}"}),
    "cfg": Field("cfg", lambda info: {"type": "number", "minimum": 0, "maximum": info["limits"]["max_cfg"],
                                      "description": f"guidance scale, 1 = off (default {info['defaults']['cfg']})"}),
    "extrapolation": Field("extrapolation", lambda info: {
        "type": "string", "minLength": 1, "examples": list(info["extrapolations"]),
        "description": f"RoPE extrapolation, one of {', '.join(info['extrapolations'])} or an alias (any case); "
                       f"default {info['defaults']['extrapolation']}"}),
    "time_shift": Field("time_shift", lambda info: {
        "type": "number", "minimum": MIN_TIME_SHIFT, "maximum": MAX_TIME_SHIFT,
        "description": f"time shift of the step grid, only for {', '.join(SHIFTED)} (default "
                       f"{info['defaults']['time_shift']})"}),
    "tail_compression": Field("tail_compression", lambda info: {
        "type": "number", "minimum": 0, "maximum": MAX_TAIL_COMPRESSION,
        "description": f"tail compression of the step grid (0 = off), only for {', '.join(SHIFTED)} (default "
                       f"{info['defaults']['tail_compression']})"}),
}

# OpenAI-style images API: its own fields, then the generation fields it takes as documented extensions (the size
# and class come from ``size`` and ``prompt``). Any other field is refused, as OpenAI refuses unknown parameters.
OPENAI_EXTENSIONS = tuple(name for name in FIELDS if name not in ("width", "height", "class"))
OPENAI_FIELDS = ("prompt", "model", "n", "size", "response_format", "output_format", "user") + OPENAI_EXTENSIONS
_SIZE = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_object(body: bytes, known=tuple(FIELDS)) -> dict:
    """The JSON object of a request body, with only ``known`` field names; raises BadRequest."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        fields = json.loads(body or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise BadRequest(400, f"request body is not JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(fields, dict):
        raise BadRequest(400, f"request body must be a JSON object, not {type(fields).__name__}")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BadRequest(422, f"unknown field {unknown[0]!r}; fields: {', '.join(known)}")
    return fields


def parse_body(body: bytes) -> dict:
    """The fields of a ``POST /v1/generate`` body; raises BadRequest."""
    return parse_object(body)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_openai(body: bytes, max_images: int) -> list[dict]:
    """The generation fields of each image of a ``POST /v1/images/generations`` body: ``prompt`` is the class (a
    name or id; empty or absent: unconditional), ``size`` ``"WxH"``, ``n`` images with seeds ``seed``,
    ``seed + 1``, ...; ``model`` and ``user`` are accepted and ignored. Raises BadRequest (422)."""
    fields = parse_object(body, OPENAI_FIELDS)
    n = fields.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_images:
        raise BadRequest(422, f"n must be a whole number from 1 to {max_images}, got {n!r}")
    for name, allowed in (("response_format", "b64_json"), ("output_format", "png")):
        if fields.get(name, allowed) != allowed:
            raise BadRequest(422, f"{name} must be {allowed!r} (the only one this server offers), got "
                                  f"{fields[name]!r}")
    for name in ("model", "user"):
        if not isinstance(fields.get(name, ""), str):
            raise BadRequest(422, f"{name} must be a string, got {fields[name]!r}")
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest(422, f"prompt must be a class name or id as a string, got {prompt!r}")
    one = {name: fields[name] for name in OPENAI_EXTENSIONS if name in fields}
    if prompt and prompt.strip():
        one["class"] = prompt
    if "size" in fields:
        size = fields["size"]
        match = _SIZE.fullmatch(size) if isinstance(size, str) else None
        if match is None:
            raise BadRequest(422, f"size must be \"WIDTHxHEIGHT\" in pixels, e.g. \"64x64\", got {size!r}")
        one["width"], one["height"] = int(match[1]), int(match[2])
    seed = one.get("seed", 0)
    if n == 1 or isinstance(seed, bool) or not isinstance(seed, int):
        return [one] * n                # one image, or a seed the engine refuses in its own words
    if seed + n - 1 >= SEED_LIMIT:
        raise BadRequest(422, f"seed {seed} with n {n} needs seeds up to {seed + n - 1}; seeds must be below 2**64")
    return [dict(one, seed=seed + i) for i in range(n)]


def resolve(pipe: Pipeline, fields: dict, limits: Limits) -> Job:
    """The job of a request body (its one image), checked by the engine under the server's limits; raises
    BadRequest (422) with the engine's message. A field's name is the parameter's name in every message."""
    arguments = {FIELDS[name].argument: value for name, value in fields.items()}
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


# -- JSON Schemas of the bodies (for /openapi.json) -------------------------------------------------------------
ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string", "description": "one line saying what is wrong"}}}

OPENAI_ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string", "description": "one line saying what is wrong"},
        "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
        "param": {"type": "null"}, "code": {"type": "integer", "description": "the HTTP status"}}}}}


def generate_schema(info: dict) -> dict:
    """The body of ``POST /v1/generate`` and ``POST /v1/jobs``: every field optional, no others."""
    return {"type": "object", "additionalProperties": False,
            "properties": {name: field.schema(info) for name, field in FIELDS.items()}}


def openai_schema(info: dict, max_images: int) -> dict:
    """The body of ``POST /v1/images/generations``."""
    extensions = {name: dict(FIELDS[name].schema(info), description="extension: "
                             + FIELDS[name].schema(info).get("description", name)) for name in OPENAI_EXTENSIONS}
    extensions["seed"]["description"] = "extension: seed of the first image; image i gets seed + i (default 0)"
    g = info["pixel_granularity"]
    return {"type": "object", "additionalProperties": False, "properties": {
        "prompt": {"type": ["string", "null"], "description": "a class name or id (e.g. "
                   f"{info['classes'][0]!r} or \"0\"); empty or absent: unconditional"},
        "model": {"type": "string", "description": "accepted and ignored (the server has one model)"},
        "user": {"type": "string", "description": "accepted and ignored"},
        "n": {"type": "integer", "minimum": 1, "maximum": max_images, "description": "images (default 1)"},
        "size": {"type": "string", "pattern": r"^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$",
                 "description": f"\"WIDTHxHEIGHT\" in pixels, multiples of {g} (default "
                                f"{info['default_size'][0]}x{info['default_size'][1]})"},
        "response_format": {"type": "string", "enum": ["b64_json"]},
        "output_format": {"type": "string", "enum": ["png"]},
        **extensions}}


OPENAI_ANSWER_SCHEMA = {
    "type": "object", "required": ["created", "data"],
    "properties": {"created": {"type": "integer", "description": "Unix time of the answer"},
                   "data": {"type": "array", "items": {
                       "type": "object", "required": ["b64_json"],
                       "properties": {"b64_json": {"type": "string", "description": "the PNG, base64"},
                                      "revised_prompt": {"type": "string",
                                                         "description": "the class name used ('' unconditional)"},
                                      "seed": {"type": "integer"}}}}}}

GENERATE_JSON_SCHEMA = {
    "type": "object", "required": ["image_png_base64", "parameters", "timing"],
    "properties": {"image_png_base64": {"type": "string"}, "parameters": {"type": "object"},
                   "timing": {"type": "object"}}}
