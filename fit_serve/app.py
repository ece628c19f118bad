"""The Ray Serve application of ``fit-serve``: one deployment with a FastAPI ingress (OpenAPI at ``/docs``).

    POST /v1/generate   JSON request -> image/png (or JSON with base64 PNG, parameters, timing)
    GET  /v1/model      package name, classes, sizes, samplers, extrapolations, defaults, limits
    GET  /healthz       200 when the replica can serve

Ray Serve collects the requests that arrive within ``batch_wait_ms`` (``@serve.batch``); fit_serve.batching
packs them into padded engine calls; engines.pipeline does the work; the PNG bytes are engines.png.png_bytes,
the same bytes fit-run writes. Overload is Ray Serve's own back-pressure: ``max_queued_requests`` (= max_queue)
waiting requests per proxy, beyond that 503 with ``Retry-After``. Build the application with :func:`build`
(also the ``import_path`` of the Serve config that ``fit-serve --emit-config`` writes).
"""
import asyncio
import base64
import dataclasses
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.metrics import Counter, Gauge
from starlette.exceptions import HTTPException

from engines.backends import resolve_backend_name
from engines.pipeline import Job, Limits, load
from engines.png import png_bytes
from fit_serve.api import MAX_BODY_BYTES, BadRequest, model_info, parse_body, resolve
from fit_serve.batching import Item, bucket_budget, group_key, padded_tokens, plan_calls
from fit_serve.metrics import Histogram

APP_NAME = "fit"
DEPLOYMENT_NAME = "FitServer"
IMPORT_PATH = "fit_serve.app:build"
DRAIN_CHECK_S = 0.25


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``fit-serve`` passes to the application (the ``args`` of the Serve config YAML)."""

    package: Optional[str] = None           # None: the default model installed with fit-toolkit on each node
    backend: str = "onnxruntime"
    precision: Optional[str] = None         # transformer variant or precision (None: the package's default variant)
    threads: int = 0                        # CPU threads per replica (engines.load; 0 = auto)
    replicas: int = 1
    max_batch_size: int = 8                 # requests per engine call (and per @serve.batch collection)
    batch_wait_ms: float = 10.0             # how long a replica waits to fill a batch
    max_queue: int = 64                     # waiting requests per proxy before 503
    max_batch_tokens: Optional[int] = None  # padded tokens per engine call (None: max_batch_size x max tokens)
    retry_after_s: float = 1.0              # Retry-After of a 503
    replica_cpus: float = 1.0               # Ray CPUs each replica reserves
    drain_s: float = 30.0                   # on shutdown, how long a replica may take to finish its requests
    # Server policy, below the engine's own limits (engines.request.Limits): one request's cost grows with its
    # steps (and guidance only changes numbers, but a cap keeps float32 far from overflow); a shared server caps
    # steps where the image has long converged.
    max_steps: int = 1000
    max_cfg: float = 1000.0
    max_cost: Optional[int] = None          # one image's evaluations x tokens (engines.request.image_cost)

    def __post_init__(self):
        whole = {"replicas": 1, "max_batch_size": 1, "max_queue": 1, "max_batch_tokens": 1, "threads": 0}
        for name, least in whole.items():
            value = getattr(self, name)
            if name == "max_batch_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        for name in ("batch_wait_ms", "retry_after_s", "replica_cpus", "drain_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        object.__setattr__(self, "backend", resolve_backend_name(self.backend))
        if self.precision is not None and (not isinstance(self.precision, str) or not self.precision):
            raise ValueError(f"precision must be a variant name or precision, got {self.precision!r}")
        self.limits                                     # raises ValueError when out of range

    @property
    def limits(self) -> Limits:
        """The server's policy limits of a request, as engines.prepare takes them."""
        return Limits(self.max_steps, self.max_cfg, self.max_cost)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "ServeConfig":
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fit-serve setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def drain_options(self) -> dict:
        """Ray Serve's shutdown settings of a deployment: a replica being stopped waits until it holds no request,
        checking every DRAIN_CHECK_S, at most drain_s."""
        return {"graceful_shutdown_timeout_s": self.drain_s,
                "graceful_shutdown_wait_loop_s": min(DRAIN_CHECK_S, self.drain_s)}

    @property
    def max_ongoing_requests(self) -> int:
        """Requests a replica holds at once: one batch computing and one filling."""
        return 2 * self.max_batch_size


@dataclass(frozen=True)
class Queued:
    """A checked job waiting for its engine call."""

    job: Job
    arrived: float


@dataclass
class Outcome:
    """What an engine call gives one request: the PNG and its parameters, or a server-side error line."""

    png: bytes = b""
    parameters: Optional[dict] = None
    timing: Optional[dict] = None
    error: Optional[str] = None


api = FastAPI(title="fit-serve", description="FiT image generation (docs/serving.md)")


def error_response(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(_request, err: HTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class FitServer:
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
        self.requests = Counter("fit_serve_requests", "requests answered, by HTTP status", tag_keys=("status",))
        self.queue_length = Gauge("fit_serve_queue_length", "requests in this replica waiting for an engine call")
        self.batch_requests = Histogram("fit_serve_batch_requests", "requests per engine call",
                                        boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.batch_tokens = Histogram("fit_serve_batch_tokens", "padded tokens per engine call",
                                      boundaries=[16, 32, 64, 128, 256, 512, 1024, 4096, 16384])
        self.latency = Histogram("fit_serve_request_latency_s", "seconds from arrival to answer",
                                 boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60])

    # -- HTTP ---------------------------------------------------------------------------------------------------
    @api.post("/v1/generate", responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def generate(self, http: HttpRequest) -> Response:
        """Generate one image. JSON body: width, height, class (id or name), seed, steps, sampler, cfg,
        extrapolation; all optional. Answers image/png, or JSON when the request accepts application/json."""
        arrived = time.perf_counter()
        try:
            queued = Queued(resolve(self.pipe, parse_body(await self._body(http)), self.limits), arrived)
        except BadRequest as err:
            return self._answer(error_response(err.status, str(err)), arrived)
        self._waiting(add=[queued])
        try:
            outcome = await self._generate_batch(queued)
        finally:
            self._waiting(remove=[queued])              # also when the client went away before its batch
        if outcome.error is not None:
            return self._answer(error_response(500, outcome.error), arrived)
        outcome.timing["total_s"] = round(time.perf_counter() - arrived, 4)
        if "application/json" in http.headers.get("accept", ""):
            return self._answer(JSONResponse({"image_png_base64": base64.b64encode(outcome.png).decode("ascii"),
                                              "parameters": outcome.parameters, "timing": outcome.timing}), arrived)
        return self._answer(Response(outcome.png, media_type="image/png"), arrived)

    @api.get("/v1/model")
    async def model(self) -> dict:
        """The package: name, classes, default size, pixel granularity, max tokens, buckets, samplers,
        extrapolation methods, defaults and the server's limits."""
        return {**model_info(self.pipe, self.limits), "max_batch_size": self.config.max_batch_size,
                "max_batch_tokens": self.max_batch_tokens}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """200 when the replica that answers has its pipeline loaded and can serve; its process id and peak
        resident memory."""
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"status": "ok", "model": self.pipe.name, "pid": os.getpid(), "max_rss_mb": round(peak_kib / 1024, 1)}

    async def _body(self, http: HttpRequest) -> bytes:
        """The request body, refused (413) past MAX_BODY_BYTES without reading the rest."""
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in http.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        return bytes(body)

    def _answer(self, response: Response, arrived: float) -> Response:
        self.requests.inc(tags={"status": str(response.status_code)})
        self.latency.observe(time.perf_counter() - arrived)
        return response

    def _waiting(self, add=(), remove=()) -> None:
        """Track the requests that wait for an engine call (the queue-length gauge)."""
        self.waiting.update(id(queued) for queued in add)
        self.waiting.difference_update(id(queued) for queued in remove)
        self.queue_length.set(len(self.waiting))

    # -- batching -----------------------------------------------------------------------------------------------
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
        for call in plan_calls(items, self.config.max_batch_size, self.max_batch_tokens):
            call_start = time.perf_counter()
            tokens = padded_tokens(items, call)
            self.batch_requests.observe(len(call))
            self.batch_tokens.observe(tokens)
            try:
                latents = self.pipe.sample_latents([jobs[i] for i in call])
                for i, latent in zip(call, latents):
                    outcomes[i].parameters = self.pipe.parameters(jobs[i])
                    outcomes[i].png = png_bytes(self.pipe.decode(latent), outcomes[i].parameters)
            except Exception as err:   # a backend failure: every request of this call gets the one line
                message = (str(err).strip().splitlines() or [type(err).__name__])[0]
                for i in call:
                    outcomes[i].error = f"generation failed: {message}"
            compute = time.perf_counter() - call_start
            for i in call:
                outcomes[i].timing = {"queue_s": round(call_start - batch[i].arrived, 4), "compute_s": round(compute, 4),
                                      "batch_requests": len(call), "batch_tokens": tokens}
        return outcomes

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()


def build(args: Optional[dict] = None):
    """The Serve application for ``args`` (ServeConfig fields): the application builder that ``serve run`` /
    ``serve deploy`` call through the config's ``import_path``."""
    config = ServeConfig.from_dict(args)
    return FitServer.options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queue,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        ray_actor_options={"num_cpus": config.replica_cpus},
        **config.drain_options,
    ).bind(config.to_dict())


def serve_config(config: ServeConfig, host: str, port: int) -> dict:
    """The Serve config (``serve deploy`` / ``serve run`` YAML) of this application."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": config.to_dict()}],
    }
