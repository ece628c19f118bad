"""A minimal HTTP client of the fit-serve API (standard library only), used by the tests and
benchmarks/serve_load.py; any HTTP client works (docs/serving.md has curl examples).

    from fit_serve.client import generate
    answer = generate("http://127.0.0.1:8000", {"width": 96, "height": 64, "class": "star", "seed": 3})
    open("star.png", "wb").write(answer.body)          # answer.status == 200
"""
from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Optional, Union
from urllib.parse import urlsplit


@dataclass
class Answer:
    """One HTTP answer: status (0 when there was none: connection refused or dropped), body, lower-case headers,
    seconds from sending to the last byte, and the connection error if any."""

    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def json(self):
        return json.loads(self.body)


def call(url: str, method: str = "GET", body: Union[bytes, dict, None] = None, headers: Optional[dict] = None,
         timeout: float = 60) -> Answer:
    """One HTTP request; connection problems give status 0 and the error, never an exception."""
    parts = urlsplit(url)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=data, headers=headers or {})
        response = conn.getresponse()
        content = response.read()
        return Answer(response.status, content, {k.lower(): v for k, v in response.getheaders()},
                      time.perf_counter() - start)
    except (OSError, http.client.HTTPException) as err:
        return Answer(0, seconds=time.perf_counter() - start, error=f"{type(err).__name__}: {err}")
    finally:
        conn.close()


def generate(base: str, fields: dict, accept_json: bool = False, timeout: float = 60,
             headers: Optional[dict] = None) -> Answer:
    """POST /v1/generate with ``fields``: a PNG, or with ``accept_json`` the JSON answer (base64 PNG, parameters,
    timing). ``headers``: more request headers (e.g. Authorization)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    if accept_json:
        headers["Accept"] = "application/json"
    return call(base + "/v1/generate", "POST", fields, headers, timeout)


def wait_until_healthy(base: str, seconds: float) -> bool:
    """Poll GET /healthz until it answers 200 (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if call(base + "/healthz", timeout=2).status == 200:
            return True
        time.sleep(0.2)
    return False
