"""Helpers of the fit-serve tests: a free localhost port and a burst of concurrent requests."""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from fit_serve.client import Answer, generate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def burst(base: str, bodies: list[dict], accept_json: bool = False, timeout: float = 60) -> list[Answer]:
    """All ``bodies`` at once, each on its own connection; the answers in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: generate(base, b, accept_json, timeout), bodies))
