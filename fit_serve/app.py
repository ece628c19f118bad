"""The Ray Serve application of ``fit-serve``: an HTTP ingress deployment in front of the model deployment
(fit_serve.model) and the job store (fit_serve.jobs), which it calls through deployment handles.

    POST /v1/generate            JSON request -> image/png (or JSON with base64 PNG, parameters, timing)
    POST /v1/images/generations  OpenAI-style: prompt (class), size "WxH", n -> {"created", "data": [{"b64_json"}]}
    POST /v1/jobs                a /v1/generate body -> 202 {"id", "state", "progress"}
    GET  /v1/jobs/{id}           state, progress, and the image when done
    GET  /v1/model               package name, classes, sizes, samplers, extrapolations, defaults, limits
    GET  /healthz                200 while model replicas run (answered here, never queued); no key needed;
                                 503 {"status": "draining"} once fit-serve shuts down
    GET  /openapi.json, /docs    the API description and its page (offline)

The ingress does what must not wait behind engine work: it reads request bodies (with a timeout), checks API keys,
admits at most ``admission_limit`` images at once (beyond that a JSON 503 with Retry-After, at once), answers
health and the model description, and retries a generation whose model replica died (fit_serve.retry). Once the
launcher asks for a drain (fit_serve.drain), it refuses new work with a JSON 503, finishes what it admitted and
reports its requests in flight. A client
that disconnects cancels its handler here, and Ray Serve passes the cancellation on to the model replica. Build the
application with :func:`build` (also the ``import_path`` of the Serve config that ``fit-serve --emit-config``
writes).
"""
import asyncio
import base64
import hmac
import math
import time
from contextlib import contextmanager
from typing import Optional

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter
from starlette.exceptions import HTTPException

from fit_serve import drain, openapi
from fit_serve.api import MAX_BODY_BYTES, BadRequest, parse_body, parse_openai
from fit_serve.config import DRAIN_CHECK_S, ServeConfig, load_api_keys
from fit_serve.jobs import FitJobs
from fit_serve.metrics import Histogram
from fit_serve.model import MODEL_NAME, FitModel, Outcome
from fit_serve.retry import RETRIED, ATTEMPTS, call_with_retry

APP_NAME = "fit"
INGRESS_NAME = "FitIngress"
IMPORT_PATH = "fit_serve.app:build"
INGRESS_SLOTS = 4096        # requests one ingress replica holds (bodies being read, admitted, health, 503s)
STATUS_CACHE_S = 1.0        # how long /healthz reuses Ray Serve's replica count

__all__ = ["APP_NAME", "IMPORT_PATH", "ServeConfig", "build", "serve_config"]

api = FastAPI(title="fit-serve", docs_url=None, redoc_url=None, openapi_url=None)


def error_response(status: int, message: str, headers: Optional[dict] = None, openai: bool = False) -> JSONResponse:
    """``{"error": message}``; with ``openai`` OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
    which OpenAI's clients show."""
    if openai:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                            status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(_request, err: HTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))


@api.exception_handler(RequestValidationError)
async def _invalid(_request, err: RequestValidationError) -> JSONResponse:
    first = (err.errors() or [{}])[0]
    return error_response(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}")


def replica_states(app: str, deployment: str) -> dict:
    """Ray Serve's count of the replicas of ``deployment`` in ``app`` by state (RUNNING, STARTING, ...); empty when
    the application or deployment is not there (a blocking call to the Serve controller)."""
    try:
        replicas = serve.status().applications[app].deployments[deployment].replica_states
    except (KeyError, RuntimeError, AttributeError):
        return {}
    return {getattr(state, "value", str(state)): count for state, count in replicas.items()}


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(api)
class FitIngress:
    """One ingress replica: no model, only HTTP, keys, admission, retries."""

    def __init__(self, model: DeploymentHandle, jobs: DeploymentHandle, config: dict):
        self.config = ServeConfig.from_dict(config)
        self.model, self.jobs = model, jobs
        self.keys = [key.encode() for key in load_api_keys(self.config)]
        self.in_flight = 0                  # images admitted
        self.requests_open = 0              # requests being handled (any route but /healthz)
        self.draining = False
        self.info: Optional[dict] = None
        self.replica_states: tuple[float, dict] = (-math.inf, {})
        self.retry_after = str(math.ceil(self.config.retry_after_s))
        self.requests = Counter("fit_serve_requests", "requests answered, by HTTP status", tag_keys=("status",))
        self.retries = Counter("fit_serve_retries", "model calls tried again because their replica died")
        self.latency = Histogram("fit_serve_request_latency_s", "seconds from arrival to answer",
                                 boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60])
        self.drain_watch = asyncio.get_running_loop().create_task(self._watch_drain())   # constructed on the loop

    # -- routes -------------------------------------------------------------------------------------------------
    @api.post("/v1/generate")
    async def generate(self, http: HttpRequest) -> Response:
        return await self._answer(http, self._generate, new_work=True)

    @api.post("/v1/images/generations")
    async def images(self, http: HttpRequest) -> Response:
        return await self._answer(http, self._images, openai=True, new_work=True)

    @api.post("/v1/jobs")
    async def submit_job(self, http: HttpRequest) -> Response:
        return await self._answer(http, self._submit_job, new_work=True)

    @api.get("/v1/jobs/{job_id}")
    async def job(self, http: HttpRequest, job_id: str) -> Response:
        return await self._answer(http, self._job, job_id)

    @api.get("/v1/model")
    async def model_description(self, http: HttpRequest) -> Response:
        return await self._answer(http, self._model)

    @api.get("/healthz")
    async def healthz(self) -> Response:
        """200 while at least one model replica runs and no drain began; the replicas up, and the images and
        requests this ingress holds."""
        states = await self._replica_states()
        running = states.get("RUNNING", 0)
        status = "draining" if self.draining else "ok" if running else "unavailable"
        body = {"status": status, "replicas": {"running": running, "target": self.config.replicas},
                "in_flight": self.in_flight, "requests": self.requests_open,
                "admission_limit": self.config.admission_limit}
        if self.info is not None:
            body["model"] = self.info["name"]
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @api.get("/openapi.json")
    async def openapi_json(self, http: HttpRequest) -> Response:
        return await self._answer(http, self._openapi, keyed=False)

    @api.get("/docs")
    async def docs(self) -> Response:
        return HTMLResponse(openapi.DOCS_PAGE if openapi.assets_dir() else openapi.PLAIN_DOCS_PAGE)

    @api.get("/docs/{asset}")
    async def docs_asset(self, asset: str) -> Response:
        folder = openapi.assets_dir()
        if folder is None or asset not in openapi.ASSETS:
            return error_response(404, "Not Found")
        return FileResponse(folder / asset)

    # -- handlers -----------------------------------------------------------------------------------------------
    async def _generate(self, http: HttpRequest) -> Response:
        fields = parse_body(await self._body(http))
        arrived = time.perf_counter()
        with self._admitted(1):
            outcome = await self._call_model(fields)
        outcome.timing["total_s"] = round(time.perf_counter() - arrived, 4)
        if "application/json" in http.headers.get("accept", ""):
            return JSONResponse({"image_png_base64": base64.b64encode(outcome.png).decode("ascii"),
                                 "parameters": outcome.parameters, "timing": outcome.timing})
        return Response(outcome.png, media_type="image/png")

    async def _images(self, http: HttpRequest) -> Response:
        images = parse_openai(await self._body(http), self.config.max_images)
        with self._admitted(len(images)):
            calls = [asyncio.ensure_future(self._call_model(fields)) for fields in images]
            try:
                outcomes = await asyncio.gather(*calls)
            finally:                                    # one refused or failed: the others stop costing too
                for pending in calls:
                    pending.cancel()
        return JSONResponse({"created": int(time.time()), "data": [
            {"b64_json": base64.b64encode(o.png).decode("ascii"), "revised_prompt": o.parameters["class_name"] or "",
             "seed": o.parameters["seed"]} for o in outcomes]})

    async def _submit_job(self, http: HttpRequest) -> Response:
        fields = parse_body(await self._body(http))
        answer = await self._call(self.jobs.submit, fields)
        if "error" in answer:
            raise BadRequest(answer["status"], answer["error"])
        return JSONResponse(answer, status_code=202, headers={"Location": f"jobs/{answer['id']}"})

    async def _job(self, _http: HttpRequest, job_id: str) -> Response:
        answer = await self._call(self.jobs.get, job_id)
        if answer is None:
            raise BadRequest(404, f"no job {job_id[:64]!r} (unknown, or expired after {self.config.job_ttl_s:g} s)")
        return JSONResponse(answer)

    async def _model(self, _http: HttpRequest) -> Response:
        info = await self._model_info()
        limits = {**info["limits"], "max_images": self.config.max_images, "max_jobs": self.config.max_jobs,
                  "job_ttl_s": self.config.job_ttl_s, "body_timeout_s": self.config.body_timeout_s,
                  "admission_limit": self.config.admission_limit}
        return JSONResponse({**info, "limits": limits, "api_key_required": bool(self.keys)})

    async def _openapi(self, _http: HttpRequest) -> Response:
        return JSONResponse(openapi.document(await self._model_info(), self.config.max_images, bool(self.keys)))

    # -- the parts ----------------------------------------------------------------------------------------------
    async def _answer(self, http: HttpRequest, handler, *args, keyed: bool = True, openai: bool = False,
                      new_work: bool = False) -> Response:
        """The handler's response, or a one-line JSON error for a BadRequest (with Retry-After for 503 and
        WWW-Authenticate for 401; OpenAI's error shape with ``openai``); counted in the metrics. ``new_work``
        (generation, jobs): refused with 503 once a drain began."""
        arrived = time.perf_counter()
        self.requests_open += 1
        try:
            if keyed:
                self._authorize(http)
            if new_work and self.draining:
                raise BadRequest(503, "the server is shutting down")
            response = await handler(http, *args)
        except BadRequest as err:
            headers = {503: {"Retry-After": self.retry_after}, 401: {"WWW-Authenticate": "Bearer"}}.get(err.status)
            response = error_response(err.status, str(err), headers, openai)
        finally:
            self.requests_open -= 1
        self.requests.inc(tags={"status": str(response.status_code)})
        self.latency.observe(time.perf_counter() - arrived)
        return response

    def _authorize(self, http: HttpRequest) -> None:
        """BadRequest(401) unless the request carries one of the keys (compared in constant time, every key)."""
        if not self.keys:
            return
        scheme, _, given = http.headers.get("authorization", "").partition(" ")
        presented = given.strip().encode() if scheme.lower() == "bearer" else b""
        matches = [hmac.compare_digest(presented, key) for key in self.keys]
        if not any(matches):
            raise BadRequest(401, "missing or wrong API key; send Authorization: Bearer KEY")

    async def _body(self, http: HttpRequest) -> bytes:
        """The request body, refused past MAX_BODY_BYTES (413) without reading the rest, and when it has not
        arrived within body_timeout_s (408)."""
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")

        async def read() -> bytes:
            body = bytearray()
            async for chunk in http.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise BadRequest(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
            return bytes(body)

        try:
            return await asyncio.wait_for(read(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise BadRequest(408, f"the request body did not arrive within {self.config.body_timeout_s:g} s") \
                from None

    @contextmanager
    def _admitted(self, images: int):
        """Hold ``images`` of the admission limit, or BadRequest(503) at once when they do not fit."""
        if self.in_flight + images > self.config.admission_limit:
            raise BadRequest(503, f"the server is busy ({self.in_flight} images in flight, limit "
                                  f"{self.config.admission_limit}); retry after {self.retry_after} s")
        self.in_flight += images
        try:
            yield
        finally:
            self.in_flight -= images

    async def _call_model(self, fields: dict) -> Outcome:
        """One image from the model deployment; BadRequest with the model's refusal or failure."""
        outcome = await self._call(self.model.generate, fields)
        if outcome.status != 200:
            raise BadRequest(outcome.status, outcome.error)
        return outcome

    async def _call(self, method, *args):
        """A deployment handle call, tried again when its replica died (fit_serve.retry); 503 after the last."""
        try:
            return await call_with_retry(method, *args, on_retry=lambda: self.retries.inc())
        except RETRIED as err:
            raise BadRequest(503, f"the replica serving this request stopped {ATTEMPTS} times "
                                  f"({type(err).__name__}); retry") from None

    async def _model_info(self) -> dict:
        """The model replicas' description (asked once); BadRequest(503) at once while none runs, rather than a
        call that waits for one."""
        if self.info is None:
            if not (await self._replica_states()).get("RUNNING"):
                raise BadRequest(503, "no model replica is running yet; retry")
            self.info = await self._call(self.model.info)
        return self.info

    async def _watch_drain(self) -> None:
        """Every DRAIN_CHECK_S: whether the launcher asked for a drain; from then on, report the requests this
        replica holds (fit_serve.drain)."""
        app = serve.get_replica_context().app_name
        replica = serve.get_replica_context().replica_id.unique_id
        while True:
            try:
                if not self.draining:
                    self.draining = await asyncio.to_thread(drain.requested, app)
                if self.draining:
                    await asyncio.to_thread(drain.report, app, replica, self.requests_open)
            except Exception:           # the GCS unreachable for a moment: try again at the next check
                pass
            await asyncio.sleep(DRAIN_CHECK_S)

    async def _replica_states(self) -> dict:
        """Ray Serve's count of model replicas by state (RUNNING, STARTING, ...), at most STATUS_CACHE_S old."""
        checked, states = self.replica_states
        if time.monotonic() - checked > STATUS_CACHE_S:
            states = await asyncio.to_thread(replica_states, serve.get_replica_context().app_name, MODEL_NAME)
            self.replica_states = (time.monotonic(), states)
        return states



def build(args: Optional[dict] = None):
    """The Serve application for ``args`` (ServeConfig fields): the application builder that ``serve run`` /
    ``serve deploy`` call through the config's ``import_path``."""
    config = ServeConfig.from_dict(args)
    shutdown = config.drain_options
    model = FitModel.options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=-1,                     # the ingress admits at most admission_limit images
        ray_actor_options={"num_cpus": config.replica_cpus},
        **shutdown,
    ).bind(config.to_dict())
    jobs = FitJobs.options(num_replicas=1, max_ongoing_requests=INGRESS_SLOTS, ray_actor_options={"num_cpus": 0},
                           **shutdown).bind(model, config.to_dict())
    return FitIngress.options(
        num_replicas=config.ingress_replicas,
        max_ongoing_requests=INGRESS_SLOTS,
        ray_actor_options={"num_cpus": 0},
        **shutdown,
    ).bind(model, jobs, config.to_dict())


def serve_config(config: ServeConfig, host: str, port: int) -> dict:
    """The Serve config (``serve deploy`` / ``serve run`` YAML) of this application."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                          "args": config.to_dict()}],
    }
