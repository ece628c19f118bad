"""Run the fit-serve application on Ray: check the package before Ray starts, start a local Ray (or join a cluster),
deploy, serve until Ctrl-C or SIGTERM, then shut down what was started (docs/serving.md).

    manifest = check_package(config)
    with running(config, "127.0.0.1", 8000):        # Ray up, application deployed
        ...                                         # Ctrl-C or SIGTERM: KeyboardInterrupt here, then shutdown

Imports Ray (the ``serve`` extra); never torch.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import ray
from ray import serve

from engines.backends import create_backend
from engines.manifest import Manifest
from engines.package import load_manifest, verify_files
from engines.pipeline import DEFAULT_MODEL_DIR
from fit_serve.app import APP_NAME, ServeConfig, build

NAMESPACE = "fit-serve"


class LaunchError(Exception):
    """The application cannot start; the message (one line) says why. ``parameter``: the setting at fault."""

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


def check_package(config: ServeConfig, verify: bool = True) -> Manifest:
    """The package and transformer variant every replica will open, checked here so that a damaged package or a
    wrong precision is one error now, not a replica failing in Ray. ``verify``: also check the sha256 of the files
    the replicas open. Raises PackageError, BackendError or LaunchError; opens no model."""
    directory = Path(config.package) if config.package is not None else DEFAULT_MODEL_DIR
    manifest = load_manifest(directory)
    backend = create_backend(config.backend, directory, manifest=manifest, precision=config.precision)
    if verify:
        verify_files(directory, manifest, manifest.runtime_files(config.backend, getattr(backend, "variant", None)))
    if config.max_batch_tokens is not None and config.max_batch_tokens < manifest.sizes.max_tokens:
        raise LaunchError(f"max_batch_tokens {config.max_batch_tokens} is below the package's "
                          f"{manifest.sizes.max_tokens} tokens per request", parameter="max_batch_tokens")
    return manifest


def check_port(host: str, port: int) -> None:
    """Refuse, before Ray starts, an address the HTTP proxy could not listen on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise LaunchError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


@contextmanager
def running(config: ServeConfig, host: str, port: int, address: Optional[str] = None,
            metrics_port: Optional[int] = None) -> Iterator[None]:
    """Inside the block the application serves http://host:port: on a local Ray started here (enough CPUs for the
    replicas; Prometheus metrics on ``metrics_port``), or on the cluster at ``address`` / RAY_ADDRESS. SIGTERM
    raises KeyboardInterrupt inside the block, as Ctrl-C does. On leaving, Ray Serve lets in-flight requests finish
    (up to its graceful shutdown timeout), then a local Ray shuts down with all its processes; a cluster only loses
    the application. Raises LaunchError when it cannot start."""
    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    if joined:
        if metrics_port is not None:
            raise LaunchError("metrics_port applies to a local Ray; a cluster's ports are set by ray start",
                              parameter="metrics_port")
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    else:
        check_port(host, port)
        cpus = max(os.cpu_count() or 1, int(-(-config.replicas * config.replica_cpus // 1)))
        ray.init(num_cpus=cpus, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False,
                 _metrics_export_port=metrics_port)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)             # after ray.init, which installs its own handler
    try:
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build(config.to_dict()), name=APP_NAME, route_prefix="/", blocking=False)
        except (RuntimeError, ValueError, ray.exceptions.RayError) as err:
            cause = getattr(err, "cause", None) or err
            text = str(cause).strip()
            raise LaunchError("the application did not start: "
                              + (text.splitlines()[0] if text else type(cause).__name__)) from None
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C must not cut the shutdown short
        try:
            if joined:
                serve.delete(APP_NAME)
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
            sys.stderr.flush()
