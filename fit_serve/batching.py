"""Which requests share an engine call: the packing rule of the server (docs/serving.md, "Batching").

Ray Serve's ``@serve.batch`` hands the replica the requests that arrived within ``--batch-wait-ms`` (at most
``--max-batch-size``). :func:`plan_calls` splits them into groups that can share one step loop and packs each
group into padded batches:

1. Group key (:func:`group_key`): ``GenerationSettings.loop_key()`` (integrator, step count and tolerances,
   guidance on or off), whether the network runs the cond/uncond halves for this request (guidance on and a
   class given), and the request's bucket (:func:`bucket_budget`: the smallest of the package's buckets that
   holds its tokens), so a call's padding stays within one bucket (one TensorRT profile). Samplers whose rows
   depend on the whole batch (dopri5: one adaptive step size for the batch; sde: one noise stream for the
   batch) get one loop per request, so their images never depend on batch mates.
2. Inside a group, requests are taken longest first (token count, then arrival) and added to the current call
   while it holds fewer than ``max_batch_size`` requests and (requests + 1) x longest sequence stays within
   ``max_batch_tokens`` padded tokens; otherwise a new call starts.

Guidance scale and extrapolation method may differ inside one call; the size may differ freely (padding masks).
Plain Python: no Ray, no numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from engines.buckets import Bucket, BucketError, smallest_bucket


@dataclass(frozen=True)
class Item:
    """What packing needs to know of one request: its group key and its token count."""

    key: Hashable
    tokens: int


def bucket_budget(bucket_tokens: Sequence[int], max_tokens: int, tokens: int) -> int:
    """Token budget of the smallest bucket that holds ``tokens`` (engines.buckets.smallest_bucket); the
    package's ``max_tokens`` for a request beyond every bucket."""
    try:
        return smallest_bucket([Bucket(t) for t in bucket_tokens], tokens).tokens
    except (BucketError, ValueError):
        return max_tokens


def group_key(settings, conditional: bool, bucket: int, index: int) -> tuple:
    """The key under which a request (``index`` in the arrival order) may share an engine call with others.

    settings: its engines.pipeline.GenerationSettings; conditional: whether it names a class; bucket: its
    :func:`bucket_budget`.
    """
    key = (settings.loop_key(), settings.guided and conditional, bucket)
    return key if settings.sampler.rows_independent else key + (index,)


def plan_calls(items: Sequence[Item], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices into ``items`` of each engine call, in the order the calls run (groups by first arrival).

    A single request longer than ``max_batch_tokens`` still gets a call of its own.
    """
    if max_batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("max_batch_size and max_batch_tokens must be positive")
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.key, []).append(index)
    calls: list[list[int]] = []
    for members in groups.values():
        current: list[int] = []
        for index in sorted(members, key=lambda i: (-items[i].tokens, i)):
            longest = items[current[0]].tokens if current else items[index].tokens
            if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > max_batch_tokens):
                calls.append(current)
                current = []
            current.append(index)
        calls.append(current)
    return calls


def padded_tokens(items: Sequence[Item], call: Sequence[int]) -> int:
    """Tokens one call computes: its requests x its longest sequence (padding included)."""
    return len(call) * max(items[i].tokens for i in call)
