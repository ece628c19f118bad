"""The model deployment of ``fit-serve``: replicas that load the pipeline and generate, called by the ingress
(fit_serve.app) and the job store (fit_serve.jobs) through Ray Serve deployment handles, never over HTTP.

Each replica checks a request's fields with the engine (fit_serve.api.resolve), collects the requests that arrive
within ``batch_wait_ms`` (``@serve.batch``), packs them into padded engine calls (fit_serve.batching) and runs the
calls one after another on one engine thread; the PNG bytes are engines.png.png_bytes, the same bytes fit-run
writes. A request whose caller went away (its HTTP client disconnected, so Ray Serve cancelled it) is dropped from
a batch not yet started, and an engine call all of whose requests are gone stops at its next step.

Imports Ray; never torch.
"""
from __future__ import annotations

import asyncio
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import AsyncIterator, Callable, Optional

from ray import serve
from ray.serve.metrics import Gauge

from engines.pipeline import Job, load
from engines.png import png_bytes
from fit_serve.api import BadRequest, model_info, resolve
from fit_serve.batching import Item, bucket_budget, group_key, padded_tokens, plan_calls
from fit_serve.config import ServeConfig
from fit_serve.metrics import Histogram

MODEL_NAME = "FitModel"


class Cancelled(Exception):
    """Every request of an engine call is gone: the call stops at its next step."""


@dataclass
class Queued:
    """A checked job waiting for its engine call. ``cancelled``: its caller went away; ``on_progress(done,
    total)``: called on the engine thread after each step (jobs)."""

    job: Job
    arrived: float
    cancelled: bool = False
    on_progress: Optional[Callable[[int, Optional[int]], None]] = None


@dataclass
class Outcome:
    """What the model gives one request: the PNG and its parameters, or a refusal (4xx) or failure (500) line."""

    status: int = 200
    png: bytes = b""
    parameters: Optional[dict] = None
    timing: Optional[dict] = None
    error: Optional[str] = None


@dataclass
class Counts:
    """What a replica has done (``stats()``, for tests and diagnosis): requests answered, engine calls run, engine
    calls stopped because every request in them was gone, requests dropped before their call, network
    evaluations (steps)."""

    requests: int = 0
    calls: int = 0
    stopped_calls: int = 0
    dropped: int = 0
    steps: int = 0


@serve.deployment(name=MODEL_NAME)
class FitModel:
    """One replica: a loaded pipeline and a single worker thread that runs the engine calls one after another."""

    def __init__(self, config: dict):
        self.config = ServeConfig.from_dict(config)
        self.pipe = load(self.config.package, backend=self.config.backend, precision=self.config.precision,
                         threads=self.config.threads)
        self.limits = self.config.limits
        self.max_batch_tokens = self.config.max_batch_tokens or self.config.max_batch_size * self.pipe.max_tokens
        if self.max_batch_tokens < self.pipe.max_tokens:
            raise ValueError(f"max_batch_tokens {self.max_batch_tokens} is below the package's "
                             f"{self.pipe.max_tokens} tokens per request")
        self.buckets = [b.tokens for b in self.pipe.manifest.sizes.buckets]
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="fit-engine")
        self._generate_batch.set_max_batch_size(self.config.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self.waiting: set[int] = set()
        self.counts = Counts()
        self.queue_length = Gauge("fit_serve_queue_length", "requests in this replica waiting for an engine call")
        self.batch_requests = Histogram("fit_serve_batch_requests", "requests per engine call",
                                        boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.batch_tokens = Histogram("fit_serve_batch_tokens", "padded tokens per engine call",
                                      boundaries=[16, 32, 64, 128, 256, 512, 1024, 4096, 16384])

    # -- called through deployment handles ----------------------------------------------------------------------
    async def generate(self, fields: dict) -> Outcome:
        """One image of a request's fields (fit_serve.api.FIELDS), or the engine's refusal (422)."""
        try:
            queued = Queued(resolve(self.pipe, fields, self.limits), time.perf_counter())
        except BadRequest as err:
            return Outcome(status=err.status, error=str(err))
        return await self._generate(queued)

    async def generate_stream(self, fields: dict) -> AsyncIterator:
        """As :meth:`generate`, streamed: ``{"state": "queued"}`` once the fields are accepted, then ``{"steps_done",
        "steps_total"}`` after each step (``steps_total`` None for dopri5), then the Outcome. A refusal is the only
        item."""
        try:
            queued = Queued(resolve(self.pipe, fields, self.limits), time.perf_counter())
        except BadRequest as err:
            yield Outcome(status=err.status, error=str(err))
            return
        yield {"state": "queued"}
        steps: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        queued.on_progress = lambda done, total: loop.call_soon_threadsafe(steps.put_nowait, (done, total))
        answer = asyncio.ensure_future(self._generate(queued))
        try:
            while True:
                step = asyncio.ensure_future(steps.get())
                await asyncio.wait({step, answer}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    break
                done, total = step.result()
                yield {"steps_done": done, "steps_total": total}
            yield answer.result()
        finally:
            answer.cancel()

    async def info(self) -> dict:
        """``GET /v1/model`` of this replica's pipeline."""
        return {**model_info(self.pipe, self.limits), "max_batch_size": self.config.max_batch_size,
                "max_batch_tokens": self.max_batch_tokens}

    async def stats(self) -> dict:
        """This replica's process id, peak resident memory (MB) and :class:`Counts`."""
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"pid": os.getpid(), "max_rss_mb": round(peak_kib / 1024, 1), **asdict(self.counts)}

    # -- batching -----------------------------------------------------------------------------------------------
    async def _generate(self, queued: Queued) -> Outcome:
        self._waiting(add=[queued])
        try:
            return await self._generate_batch(queued)
        except asyncio.CancelledError:
            queued.cancelled = True                     # the caller went away: its row stops costing
            raise
        finally:
            self._waiting(remove=[queued])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, batch: list[Queued]) -> list[Outcome]:
        """Ray Serve's batch of requests (sizes set from the config in __init__) -> one outcome each."""
        self._waiting(remove=batch)
        return await asyncio.get_running_loop().run_in_executor(self.worker, self._run, batch)

    def _run(self, batch: list[Queued]) -> list[Outcome]:
        """The engine calls of one batch (fit_serve.batching.plan_calls), one after another."""
        jobs = [queued.job for queued in batch]
        items = []
        for i, job in enumerate(jobs):
            tokens = self.pipe.tokens(job.request.width, job.request.height)
            bucket = bucket_budget(self.buckets, self.pipe.max_tokens, tokens)
            items.append(Item(group_key(job.settings, job.request.label is not None, bucket, i), tokens))
        outcomes = [Outcome() for _ in jobs]
        self.counts.requests += len(jobs)
        for call in plan_calls(items, self.config.max_batch_size, self.max_batch_tokens):
            members = [batch[i] for i in call]
            if all(queued.cancelled for queued in members):
                self.counts.dropped += len(call)
                for i in call:
                    outcomes[i] = Outcome(status=499, error="cancelled: the client went away")
                continue
            call_start = time.perf_counter()
            tokens = padded_tokens(items, call)
            self.batch_requests.observe(len(call))
            self.batch_tokens.observe(tokens)
            self.counts.calls += 1
            try:
                latents = self.pipe.sample_latents([jobs[i] for i in call], self._step_callback(members))
                for i, latent in zip(call, latents):
                    outcomes[i].parameters = self.pipe.parameters(jobs[i])
                    outcomes[i].png = png_bytes(self.pipe.decode(latent), outcomes[i].parameters)
            except Cancelled:
                self.counts.stopped_calls += 1
                for i in call:
                    outcomes[i] = Outcome(status=499, error="cancelled: the client went away")
            except Exception as err:   # a backend failure: every request of this call gets the one line
                message = (str(err).strip().splitlines() or [type(err).__name__])[0]
                for i in call:
                    outcomes[i] = Outcome(status=500, error=f"generation failed: {message}")
            compute = time.perf_counter() - call_start
            for i in call:
                outcomes[i].timing = {"queue_s": round(call_start - batch[i].arrived, 4), "compute_s": round(compute, 4),
                                      "batch_requests": len(call), "batch_tokens": tokens}
        return outcomes

    def _step_callback(self, members: list[Queued]):
        """The engine's step callback of one call: progress to the requests that want it; :class:`Cancelled` once
        every request of the call is gone."""
        def step(done: int, total: Optional[int], _t: float) -> None:
            self.counts.steps += 1
            if all(queued.cancelled for queued in members):
                raise Cancelled
            for queued in members:
                if queued.on_progress is not None:
                    queued.on_progress(done, total)
        return step

    def _waiting(self, add=(), remove=()) -> None:
        """Track the requests that wait for an engine call (the queue-length gauge)."""
        self.waiting.update(id(queued) for queued in add)
        self.waiting.difference_update(id(queued) for queued in remove)
        self.queue_length.set(len(self.waiting))

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()
