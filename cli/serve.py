"""``fit-serve``: serve a model package over HTTP on Ray Serve (docs/serving.md). Thin wrapper over fit_serve.

Starts a local Ray by default; ``--address`` (or RAY_ADDRESS) joins a running Ray cluster instead.
``--emit-config FILE`` writes the Serve config YAML for ``serve deploy`` / ``serve run`` and exits. Ctrl-C (or
SIGTERM) stops the application: Ray Serve lets in-flight requests finish (up to its graceful shutdown timeout),
then the local Ray shuts down with all its processes.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from cli.common import BACKEND, Command, UserError, check_writable, one_line, user_errors
from engines.errors import BackendError
from engines.backends import create_backend
from engines.errors import PackageError
from engines.package import load_manifest, verify_files
from engines.pipeline import DEFAULT_MODEL_DIR


@click.command(cls=Command, prog="fit-serve")
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model replicas (Ray actors), spread over the cluster's nodes.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests packed into one engine call (1 = batching off).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long a replica waits for more requests to fill a batch.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help="Padded tokens per engine call (requests x longest sequence); default: max batch size x the "
                   "package's max tokens.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Waiting requests per HTTP proxy; past it requests get 503 with Retry-After.")
@click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds a 503 tells the client to wait (Retry-After).")
@click.option("--backend", type=BACKEND, default="onnxruntime", show_default=True)
@click.option("--precision", default=None,
              help="Transformer variant, as fit-run --precision: a name the package lists or a precision (fp32, "
                   "int8, fp16; OpenVINO also bf16). Default: the package's default variant.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="ONNX Runtime threads per replica (0 = auto).")
@click.option("--replica-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Ray CPUs each replica reserves.")
@click.option("--address", default=None,
              help="Join this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local Ray; "
                   "RAY_ADDRESS works too.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the local Ray's Prometheus metrics (GET /metrics); default: Ray picks one.")
@click.option("--emit-config", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Write the Serve config YAML (for serve deploy / serve run) to this file, - for stdout, and exit.")
def main(package, host, port, replicas, max_batch_size, batch_wait_ms, max_batch_tokens, max_queue, retry_after,
         backend, precision, threads, replica_cpus, address, metrics_port, emit_config):
    """Serve a FiT model PACKAGE (default: the model shipped with fit-toolkit) over HTTP."""
    with user_errors(PackageError, BackendError, ValueError, OSError):
        try:
            from fit_serve.app import ServeConfig, serve_config
        except ImportError as err:
            raise UserError(f"Ray Serve is not installed ({err}); pip install 'fit-toolkit[serve]'") from None
        # the files the replicas will open, checked here so that a damaged package is one line now, not a replica
        # failing in Ray
        directory = package if package is not None else DEFAULT_MODEL_DIR
        manifest = load_manifest(directory)
        # the variant each replica will run (a wrong --precision is one line here); opens nothing yet
        variant = getattr(create_backend(backend, directory, manifest=manifest, precision=precision), "variant", None)
        if emit_config is None:
            verify_files(directory, manifest, manifest.runtime_files(backend, variant))
        config = ServeConfig(package=None if package is None else str(package.resolve()), backend=backend,
                             precision=precision, threads=threads, replicas=replicas, max_batch_size=max_batch_size,
                             batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_batch_tokens=max_batch_tokens,
                             retry_after_s=retry_after, replica_cpus=replica_cpus)
        if max_batch_tokens is not None and max_batch_tokens < manifest.sizes.max_tokens:
            raise UserError(f"--max-batch-tokens {max_batch_tokens} is below the package's "
                            f"{manifest.sizes.max_tokens} tokens per request")
        if emit_config is not None:
            write_config(serve_config(config, host, port), emit_config)
            return
        if metrics_port is not None and (address is not None or os.environ.get("RAY_ADDRESS")):
            raise UserError("--metrics-port applies to a local Ray; a cluster's ports are set by ray start")
        run(config, manifest.name, host, port, address, metrics_port)


def write_config(data: dict, path: Path) -> None:
    import yaml

    from engines.atomic import atomic_write

    text = yaml.safe_dump(data, sort_keys=False)
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    check_writable(path)
    atomic_write(path, text)
    click.echo(str(path))


def check_port(host: str, port: int) -> None:
    """Refuse, before Ray starts, an address the HTTP proxy could not listen on."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def run(config, name: str, host: str, port: int, address, metrics_port) -> None:
    """Start Ray (or join a cluster), deploy, serve until Ctrl-C or SIGTERM, then shut down what was started."""
    import ray
    from ray import serve

    from fit_serve.app import APP_NAME, build

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    if joined:
        ray.init(address=address, namespace="fit-serve", log_to_driver=False)
    else:
        check_port(host, port)
        cpus = max(os.cpu_count() or 1, int(-(-config.replicas * config.replica_cpus // 1)))
        ray.init(num_cpus=cpus, include_dashboard=False, namespace="fit-serve", log_to_driver=False,
                 _metrics_export_port=metrics_port)
    signal.signal(signal.SIGTERM, stop)             # after ray.init, which installs its own handler
    try:
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(build(config.to_dict()), name=APP_NAME, route_prefix="/", blocking=False)
        except (RuntimeError, ValueError, ray.exceptions.RayError) as err:
            cause = getattr(err, "cause", None) or err
            raise UserError(f"the application did not start: {one_line(cause)}") from None
        click.echo(f"fit-serve: serving {name} at http://{host}:{port} ({config.replicas} replica(s), "
                   f"batches of up to {config.max_batch_size}); Ctrl-C stops", err=True)
        if metrics_port is not None:
            click.echo(f"fit-serve: metrics at http://127.0.0.1:{metrics_port}/metrics", err=True)
        while True:
            time.sleep(3600)
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


if __name__ == "__main__":  # pragma: no cover
    main()
