"""The settings of a ``fit-serve`` application (the ``args`` of its Serve config YAML) and its API keys.

Plain Python (no Ray): the command line checks a configuration here before Ray starts, and every deployment of
the application (fit_serve.app) reads the same object.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from engines.backends import resolve_backend_name
from engines.pipeline import Limits

API_KEY_ENV = "FIT_SERVE_API_KEY"
DRAIN_CHECK_S = 0.25


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``fit-serve`` passes to the application (the ``args`` of the Serve config YAML). It never holds
    an API key itself: ``api_key_env`` names the environment variable that holds one and ``api_keys_file`` a file
    of keys, both read by the ingress replicas where they run."""

    package: Optional[str] = None           # None: the default model installed with fit-toolkit on each node
    backend: str = "onnxruntime"
    precision: Optional[str] = None         # transformer variant or precision (None: the package's default variant)
    threads: int = 0                        # CPU threads per replica (engines.load; 0 = auto)
    replicas: int = 1                       # model replicas
    max_batch_size: int = 8                 # requests per engine call (and per @serve.batch collection)
    batch_wait_ms: float = 10.0             # how long a replica waits to fill a batch
    max_queue: int = 64                     # waiting images per ingress replica beyond the model replicas' slots
    max_batch_tokens: Optional[int] = None  # padded tokens per engine call (None: max_batch_size x max tokens)
    retry_after_s: float = 1.0              # Retry-After of a 503
    replica_cpus: float = 1.0               # Ray CPUs each model replica reserves
    # Server policy, below the engine's own limits (engines.request.Limits): one request's cost grows with its
    # steps (and guidance only changes numbers, but a cap keeps float32 far from overflow); a shared server caps
    # steps where the image has long converged.
    max_steps: int = 1000
    max_cfg: float = 1000.0
    max_cost: Optional[int] = None          # one image's evaluations x tokens (engines.request.image_cost)
    ingress_replicas: int = 1               # HTTP ingress replicas (they read bodies, check keys, route, retry)
    body_timeout_s: float = 10.0            # a request body not received within this is refused (408)
    max_images: int = 4                     # n of POST /v1/images/generations
    max_jobs: int = 64                      # jobs stored (running and finished) before POST /v1/jobs answers 503
    job_ttl_s: float = 600.0                # how long a finished job's result is kept
    drain_s: float = 30.0                   # on shutdown, how long replicas may finish the requests they hold
    api_key_env: Optional[str] = None       # environment variable holding an API key (never the key itself)
    api_keys_file: Optional[str] = None     # file of API keys, one per line (# comments)

    def __post_init__(self):
        whole = {"replicas": 1, "max_batch_size": 1, "max_queue": 1, "max_batch_tokens": 1, "threads": 0,
                 "ingress_replicas": 1, "max_images": 1, "max_jobs": 1}
        for name, least in whole.items():
            value = getattr(self, name)
            if name == "max_batch_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        for name in ("batch_wait_ms", "retry_after_s", "replica_cpus", "body_timeout_s", "job_ttl_s", "drain_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        object.__setattr__(self, "backend", resolve_backend_name(self.backend))
        for name in ("precision", "api_key_env", "api_keys_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
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
        """Requests a model replica holds at once: one batch computing and one filling."""
        return 2 * self.max_batch_size

    @property
    def admission_limit(self) -> int:
        """Images one ingress replica lets in at once: the model replicas' slots plus ``max_queue`` waiting."""
        return self.replicas * self.max_ongoing_requests + self.max_queue


def load_api_keys(config: ServeConfig) -> list[str]:
    """The API keys of ``config`` (empty: no key needed), read from the environment variable and the keys file it
    names; ValueError (one line, never the key) when either is named but holds no key or cannot be read."""
    keys = []
    if config.api_key_env is not None:
        value = os.environ.get(config.api_key_env, "").strip()
        if not value:
            raise ValueError(f"API key environment variable {config.api_key_env} is not set (or empty) on this node")
        keys.append(value)
    if config.api_keys_file is not None:
        try:
            with open(config.api_keys_file, encoding="utf-8") as file:
                lines = [line.strip() for line in file]
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read API keys file {config.api_keys_file}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
        found = [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise ValueError(f"API keys file {config.api_keys_file} holds no key")
        keys.extend(found)
    return keys
