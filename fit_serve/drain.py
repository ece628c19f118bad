"""The drain signal between ``fit-serve``'s launcher and the ingress replicas, kept in Ray's internal key-value
store (the cluster's GCS, so it reaches every ingress replica on every node, also with ``--address``):

    launcher                                    each ingress replica (every DRAIN_CHECK_S)
    clear(app)            before deploying
    request(app)          on Ctrl-C / SIGTERM   requested(app) -> True: refuse new work with a JSON 503
    wait_until_idle(...)  until every ingress   report(app, replica_id, requests in flight)
                          reports 0 (or drain_s)
    clear(app)            after deleting the application

Keys live in the namespace ``fit-serve`` under ``<app>/``; nothing here imports torch.
"""
from __future__ import annotations

import time
from typing import Callable

from ray.experimental import internal_kv

from fit_serve.config import DRAIN_CHECK_S

KV_NAMESPACE = "fit-serve"


def _draining_key(app: str) -> bytes:
    return f"{app}/draining".encode()


def _report_prefix(app: str) -> bytes:
    return f"{app}/in-flight/".encode()


def clear(app: str) -> None:
    """Forget a drain of ``app`` (a cluster keeps its store after an earlier ``fit-serve`` left)."""
    internal_kv._internal_kv_del(f"{app}/".encode(), del_by_prefix=True, namespace=KV_NAMESPACE)


def request(app: str) -> None:
    """Ask every ingress replica of ``app`` to stop taking new work."""
    internal_kv._internal_kv_put(_draining_key(app), b"1", overwrite=True, namespace=KV_NAMESPACE)


def requested(app: str) -> bool:
    """Whether the launcher asked ``app`` to drain (a blocking GCS call: run it in a thread)."""
    return internal_kv._internal_kv_get(_draining_key(app), namespace=KV_NAMESPACE) is not None


def report(app: str, replica: str, in_flight: int) -> None:
    """An ingress replica's requests in flight, written once it drains (a blocking GCS call)."""
    internal_kv._internal_kv_put(_report_prefix(app) + replica.encode(), str(in_flight).encode(),
                                 overwrite=True, namespace=KV_NAMESPACE)


def reports(app: str) -> dict[str, int]:
    """Replica id -> requests in flight, for every ingress replica of ``app`` that reported since the drain began."""
    prefix = _report_prefix(app)
    found = {}
    for key in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
        value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        if value is not None:
            found[key[len(prefix):].decode()] = int(value)
    return found


def wait_until_idle(app: str, replicas_running: Callable[[], int], seconds: float) -> bool:
    """Poll every DRAIN_CHECK_S until at least ``replicas_running()`` ingress replicas reported, none with a
    request in flight; False when ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        found = reports(app)
        if len(found) >= replicas_running() and not any(found.values()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(DRAIN_CHECK_S, max(0.0, deadline - time.monotonic())))
