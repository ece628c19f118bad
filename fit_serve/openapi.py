"""The OpenAPI document of ``fit-serve`` (``GET /openapi.json``) and its offline ``/docs`` page.

The request bodies come from fit_serve.api (FIELDS and the schemas built from it) with the ranges of the model
being served (its ``GET /v1/model`` answer), so the document says what this server accepts; every route lists the
error answers it can give, each a one-line ``{"error": ...}``. ``/docs`` is Swagger UI from the ``swagger-ui-py``
package's own files, served by the ingress: nothing is loaded from another site.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from fit_serve.api import (ERROR_SCHEMA, GENERATE_JSON_SCHEMA, OPENAI_ANSWER_SCHEMA, OPENAI_ERROR_SCHEMA,
                           generate_schema, openai_schema)

ERRORS = {
    400: "the body is not JSON or not a JSON object",
    401: "no or a wrong API key (Authorization: Bearer KEY)",
    404: "no such job (or it expired)",
    408: "the body did not arrive within the body timeout",
    413: "the body is larger than the limit",
    422: "an unknown field or a value the engine refuses (the engine's message)",
    500: "the engine failed for this request's engine call",
    503: "overloaded, or no model replica answers; retry after Retry-After seconds",
}
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
JOB_SCHEMA = {
    "type": "object", "required": ["id", "state", "progress"],
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "progress": {"type": "object", "properties": {"steps_done": {"type": "integer"},
                                                      "steps_total": {"type": ["integer", "null"]}}},
        "result": GENERATE_JSON_SCHEMA, "error": {"type": "string"}}}
HEALTH_SCHEMA = {
    "type": "object", "required": ["status", "replicas"],
    "properties": {"status": {"type": "string", "enum": ["ok", "unavailable", "draining"]},
                   "model": {"type": "string"}, "replicas": {"type": "object"}, "in_flight": {"type": "integer"},
                   "requests": {"type": "integer"}, "admission_limit": {"type": "integer"}}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _answers(ok: dict, *errors: int, ok_status: int = 200, error: str = "Error") -> dict:
    answers = {str(ok_status): ok}
    for status in errors:
        answers[str(status)] = {"description": ERRORS[status], "content": _json({"$ref": f"#/components/schemas/{error}"})}
    return answers


def document(info: dict, max_images: int, keyed: bool) -> dict:
    """The OpenAPI 3.1 document of a server of the model ``info`` (GET /v1/model); ``keyed``: /v1 routes need an
    API key."""
    body = generate_schema(info)
    posted = (400, 408, 413, 422, 503) + ((401,) if keyed else ())
    secured = {"security": [{"bearer": []}]} if keyed else {}
    paths = {
        "/v1/generate": {"post": {
            "summary": "Generate one image (PNG, or JSON with Accept: application/json)",
            "requestBody": {"required": False, "content": _json(body)},
            "responses": _answers({"description": "the PNG (the same bytes fit-run writes)",
                                   "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                               **_json(GENERATE_JSON_SCHEMA)}}, *posted, 500),
            **secured}},
        "/v1/images/generations": {"post": {
            "summary": "OpenAI-style image generation: prompt = class name or id, size WxH, n images",
            "requestBody": {"required": False, "content": _json(openai_schema(info, max_images))},
            "responses": _answers({"description": "the images", "content": _json(OPENAI_ANSWER_SCHEMA)},
                                  *posted, 500, error="OpenAIError"),
            **secured}},
        "/v1/jobs": {"post": {
            "summary": "Start a job of a /v1/generate body; poll GET /v1/jobs/{id}",
            "requestBody": {"required": False, "content": _json(body)},
            "responses": _answers({"description": "the job was accepted", "content": _json(JOB_SCHEMA)}, *posted,
                                  ok_status=202),
            **secured}},
        "/v1/jobs/{job_id}": {"get": {
            "summary": "A job's state, progress and (when done) its image",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _answers({"description": "the job", "content": _json(JOB_SCHEMA)}, 404, 503,
                                  *((401,) if keyed else ())),
            **secured}},
        "/v1/model": {"get": {
            "summary": "The model: classes, sizes, samplers, defaults, limits",
            "responses": _answers({"description": "the model", "content": _json({"type": "object"})}, 503,
                                  *((401,) if keyed else ())),
            **secured}},
        "/healthz": {"get": {
            "summary": "Whether model replicas run (answered by the ingress, never queued); no key needed",
            "responses": {"200": {"description": "at least one model replica runs", "content": _json(HEALTH_SCHEMA)},
                          "503": {"description": "no model replica runs, or the server is shutting down",
                                  "content": _json(HEALTH_SCHEMA)}}}},
    }
    components = {"schemas": {"Error": ERROR_SCHEMA, "OpenAIError": OPENAI_ERROR_SCHEMA}}
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {"openapi": "3.1.0",
            "info": {"title": "fit-serve", "version": "1",
                     "description": f"FiT image generation with {info['name']} (docs/serving.md)"},
            "paths": paths, "components": components}


def assets_dir() -> Optional[Path]:
    """The folder of Swagger UI's files (the swagger-ui-py package, without importing it); None when absent."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fit-serve API</title>
<link rel="stylesheet" href="docs/swagger-ui.css"><link rel="icon" href="docs/favicon-32x32.png"></head>
<body><div id="ui"></div><script src="docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script></body></html>
"""
PLAIN_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fit-serve API</title></head>
<body><h1>fit-serve API</h1><p>The OpenAPI document is at <a href="openapi.json">/openapi.json</a>; install
<code>swagger-ui-py</code> (the serve extra) for the interactive page.</p></body></html>
"""
