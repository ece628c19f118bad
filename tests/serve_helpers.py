"""HTTP client helpers of the fit-serve tests (standard library only, localhost)."""
from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int                     # 0: no HTTP answer (connection refused or dropped)
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def json(self):
        return json.loads(self.body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", body: bytes | dict | None = None, headers: dict | None = None,
         timeout: float = 60) -> Answer:
    """One HTTP request; never raises for connection problems (status 0 and the error instead)."""
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


def generate(base: str, fields: dict, accept_json: bool = False, timeout: float = 60) -> Answer:
    headers = {"Content-Type": "application/json"}
    if accept_json:
        headers["Accept"] = "application/json"
    return call(base + "/v1/generate", "POST", fields, headers, timeout)


def burst(base: str, bodies: list[dict], accept_json: bool = False, timeout: float = 60) -> list[Answer]:
    """All ``bodies`` at once, each on its own connection; the answers in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: generate(base, b, accept_json, timeout), bodies))


def wait_until_healthy(base: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if call(base + "/healthz", timeout=2).status == 200:
            return True
        time.sleep(0.2)
    return False
