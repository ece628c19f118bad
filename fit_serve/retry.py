"""Retrying a model call whose replica died (docs/serving.md, "Faults").

An image is a deterministic function of its request's fields, so running a request again on another replica is
always safe and gives the identical PNG. A call is tried at most :data:`ATTEMPTS` times, only when Ray reports
that the replica holding it died or cannot be reached.
"""
from __future__ import annotations

import asyncio

from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

RETRIED = (RayActorError, ReplicaUnavailableError)     # ActorDiedError and ActorUnavailableError included
ATTEMPTS = 3


async def backoff(attempt: int) -> None:
    """Wait before try ``attempt + 2``: Ray's routers learn of a dead replica within a fraction of a second."""
    await asyncio.sleep(0.25 * (attempt + 1))


async def call_with_retry(method, *args, on_retry=None):
    """``await method.remote(*args)`` (a deployment handle's method), again when its replica died (calling
    ``on_retry()`` first); the last error when every attempt failed."""
    for attempt in range(ATTEMPTS):
        try:
            return await method.remote(*args)
        except RETRIED:
            if attempt == ATTEMPTS - 1:
                raise
            if on_retry is not None:
                on_retry()
            await backoff(attempt)
