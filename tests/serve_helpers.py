"""Helpers of the fit-serve tests: a free localhost port, a burst of concurrent requests, the process ids of a
deployment's replicas, and a model replica's counts."""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fit_serve.client import Answer, generate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def burst(base: str, bodies: list[dict], accept_json: bool = False, timeout: float = 60,
          headers: dict | None = None) -> list[Answer]:
    """All ``bodies`` at once, each on its own connection; the answers in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: generate(base, b, accept_json, timeout, headers), bodies))


def replica_pids(app: str, deployment: str = "FitModel") -> set[int]:
    """Process ids of the running replicas of ``deployment`` in ``app`` (Ray names their processes
    ``ray::ServeReplica:APP:DEPLOYMENT``), from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if command.startswith(f"ray::ServeReplica:{app}:{deployment}"):
                pids.add(int(entry.name))
    return pids


def model_stats(app: str) -> dict:
    """One model replica's ``stats()`` (pid, peak RSS, counts) through a deployment handle."""
    from ray import serve

    return serve.get_deployment_handle("FitModel", app).stats.remote().result(timeout_s=60)
