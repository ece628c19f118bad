"""Run the fit-serve application on Ray: check the package before Ray starts, start a local Ray (or join a cluster),
deploy, serve until Ctrl-C or SIGTERM, then drain and shut down what was started (docs/serving.md).

    manifest = check_package(config)
    with running(config, "127.0.0.1", 8000):        # Ray up, application deployed
        ...                                         # Ctrl-C or SIGTERM: KeyboardInterrupt here, then drain:
                                                    # new work refused (JSON 503), admitted work finished

Imports Ray (the ``serve`` extra); never torch.
"""
from __future__ import annotations

import ipaddress
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
from fit_serve import drain
from fit_serve.app import APP_NAME, INGRESS_NAME, ServeConfig, build, replica_states

NAMESPACE = "fit-serve"


class LaunchError(Exception):
    """The application cannot start; the message (one line) says why. ``parameter``: the setting at fault."""

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a KeyboardInterrupt, so that whatever stops on Ctrl-C stops on it too; the command line
    exits 143 instead of 130."""


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


def use_token_if_given() -> None:
    """Join a token-authenticated cluster with the token at hand. Ray 2.60 sends its token (``RAY_AUTH_TOKEN``,
    the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) only in token mode, which it turns on by itself for a
    cluster it starts or finds on this machine, but not for an address given; so turn it on here, unless
    ``RAY_AUTH_MODE`` says otherwise."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def metrics_on_loopback(host: str, metrics_host: Optional[str]) -> bool:
    """Whether a local Ray must keep its metrics endpoint on 127.0.0.1, where ``metrics_host`` (default: the HTTP
    ``host``) asks for it. Ray's exporter listens on 127.0.0.1 when the node's IP is a loopback address and on
    every interface otherwise, so: a loopback host -> True; 0.0.0.0 or :: -> False (every interface); another
    single address -> True by default, refused when asked for explicitly (Ray cannot listen there alone)."""
    chosen = host if metrics_host is None else metrics_host
    if chosen in ("0.0.0.0", "::"):
        return False
    try:
        loopback = chosen == "localhost" or ipaddress.ip_address(chosen).is_loopback
    except ValueError:
        loopback = False
    if not loopback and metrics_host is not None:
        raise LaunchError(f"metrics_host {metrics_host}: Ray's metrics endpoint listens either on 127.0.0.1 or on "
                          f"every interface (0.0.0.0)", parameter="metrics_host")
    return True


@contextmanager
def loopback_node(enabled: bool) -> Iterator[None]:
    """Inside the block (when ``enabled``) a Ray started here takes 127.0.0.1 as its node IP, so that its ports,
    the metrics endpoint among them, listen on the loopback interface only. Ray does this on macOS and Windows;
    on Linux ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` asks for it (read by this process's ray_constants and by the
    Ray processes it starts)."""
    if not enabled:
        yield
        return
    from ray._private import ray_constants

    before = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = before[0]
        ray_constants.ENABLE_RAY_CLUSTER = before[1]


@contextmanager
def signals_kept_from_ray() -> Iterator[None]:
    """Inside the block SIGTERM is blocked in this thread, and so in every process started from it: the processes
    of a local Ray (GCS, raylet, their agents and workers) keep it blocked for life, as Ray itself blocks SIGINT in
    them. A SIGTERM sent to the whole process group of ``fit-serve`` (``kill %1`` in a shell, ``timeout``,
    ``kill -- -PGID``, a supervisor) then reaches this process alone, which drains the application and stops Ray
    (:func:`stop_local_ray`); without this the raylet and GCS died at once and the drain waited for them forever.
    A SIGTERM to this process during the block is delivered when it ends."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def stop_local_ray() -> None:
    """Disconnect from the local Ray started here and stop it at once: SIGKILL to every process under this one
    (GCS, raylet, agents, the Serve controller and proxy; the application is deleted by now). Ray's own shutdown
    would send SIGTERM, which they ignore (:func:`signals_kept_from_ray`), and wait a second for each."""
    import psutil                       # a dependency of Ray
    from ray._private import worker

    processes = psutil.Process().children(recursive=True)
    node, worker._global_node = worker._global_node, None       # ray.shutdown then only disconnects
    ray.shutdown()
    if node is not None:
        node.destroy_external_storage()
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


@contextmanager
def running(config: ServeConfig, host: str, port: int, address: Optional[str] = None,
            metrics_port: Optional[int] = None, metrics_host: Optional[str] = None) -> Iterator[None]:
    """Inside the block the application serves http://host:port: on a local Ray started here (its own, whatever
    other cluster runs on the machine; enough CPUs for the replicas; Prometheus metrics on ``metrics_port`` at
    ``metrics_host``, see :func:`metrics_on_loopback`), or on the cluster at ``address`` / RAY_ADDRESS (with the Ray
    token at hand, :func:`use_token_if_given`). SIGTERM raises :class:`Terminated` inside the block, Ctrl-C
    KeyboardInterrupt. On leaving, the application drains first (:func:`serving`); then a local Ray shuts down
    with all its processes; a cluster only loses the application. Raises LaunchError when it cannot start."""
    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    if joined and (metrics_port is not None or metrics_host is not None):
        name = "metrics_port" if metrics_port is not None else "metrics_host"
        raise LaunchError(f"{name} applies to a local Ray; a cluster's ports are set by ray start", parameter=name)
    with loopback_node(not joined and metrics_on_loopback(host, metrics_host)):
        if joined:
            use_token_if_given()
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        else:
            check_port(host, port)
            cpus = max(os.cpu_count() or 1, int(-(-config.replicas * config.replica_cpus // 1)))
            # "local": a Ray of its own, also when another cluster runs here or a stopped one left its address file
            with signals_kept_from_ray():
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace=NAMESPACE,
                         log_to_driver=False, _metrics_export_port=metrics_port)
        with serving(config, host, port, joined):
            yield


@contextmanager
def serving(config: ServeConfig, host: str, port: int, joined: bool) -> Iterator[None]:
    """The application deployed on the Ray this process is connected to, inside the block. On leaving, drained:
    every ingress replica refuses new work with a JSON 503 and finishes what it admitted, until all report nothing
    in flight (at most ``config.drain_s``); then the application is deleted (its replicas finish what they still
    hold, at most ``config.drain_s`` more) and Ray disconnected (``joined``: Serve itself stays up; a local Ray
    shuts down)."""

    def stop(_signum, _frame):
        raise Terminated

    signal.signal(signal.SIGTERM, stop)             # after ray.init, which installs its own handler
    deployed = False
    try:
        try:
            drain.clear(APP_NAME)                   # a cluster may keep the drain of an earlier fit-serve
            serve.start(http_options={"host": host, "port": port})
            serve.run(build(config.to_dict()), name=APP_NAME, route_prefix="/", blocking=False)
            deployed = True
        except (RuntimeError, ValueError, ray.exceptions.RayError) as err:
            cause = getattr(err, "cause", None) or err
            text = str(cause).strip()
            raise LaunchError("the application did not start: "
                              + (text.splitlines()[0] if text else type(cause).__name__)) from None
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second signal must not cut the drain short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if deployed:
                drain.request(APP_NAME)
                drain.wait_until_idle(APP_NAME, lambda: replica_states(APP_NAME, INGRESS_NAME).get("RUNNING", 0),
                                      config.drain_s)
            # Deleting the application: its replicas finish what they still hold (at most drain_s), the proxies
            # stay up to deliver the answers. A local Ray then stops with Serve in it; no serve.shutdown, whose
            # killed controller task Ray 2.60 reports as a "graceful_shutdown failed" line.
            serve.delete(APP_NAME)
            drain.clear(APP_NAME)
        finally:
            if joined:
                ray.shutdown()
            else:
                stop_local_ray()
            sys.stderr.flush()
