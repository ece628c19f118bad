"""``fit-serve``: serve a model package over HTTP on Ray Serve (docs/serving.md). Thin wrapper over fit_serve.launch.

Starts a local Ray by default; ``--address`` (or RAY_ADDRESS) joins a running Ray cluster instead.
``--emit-config FILE`` writes the Serve config YAML for ``serve deploy`` / ``serve run`` and exits. Ctrl-C (or
SIGTERM) stops the application: new requests get a JSON 503, the ones admitted finish (at most ``--drain-s``), then
the local Ray shuts down with all its processes; exit 130 (Ctrl-C) or 143 (SIGTERM).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from cli.common import TERMINATED_EXIT, Command, Interrupted, check_writable, runtime_options, user_errors
from engines.errors import BackendError, PackageError
from engines.sampler import MAX_CFG, MAX_STEPS
from fit_serve.config import API_KEY_ENV


@click.command(cls=Command, prog="fit-serve", extra="serve")
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
              help="Images waiting per ingress replica beyond the model replicas' slots; past it requests get a "
                   "JSON 503 with Retry-After.")
@click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds a 503 tells the client to wait (Retry-After).")
@runtime_options
@click.option("--max-steps", type=click.IntRange(1, MAX_STEPS), default=1000, show_default=True,
              help=f"Server policy: the most sampler steps a request may ask for (the engine's own limit is "
                   f"{MAX_STEPS:,}).")
@click.option("--max-cfg", type=click.FloatRange(0, MAX_CFG), default=MAX_CFG, show_default=True,
              help="Server policy: the largest guidance scale a request may ask for.")
@click.option("--max-cost", type=click.IntRange(min=1), default=None,
              help="Server policy: the most one image may cost, in network evaluations x tokens (x 2 with guidance; "
                   "dopri5 at its worst case); default: no limit.")
@click.option("--replica-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Ray CPUs each replica reserves.")
@click.option("--address", default=None,
              help="Join this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local Ray; "
                   "RAY_ADDRESS works too.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the local Ray's Prometheus metrics (GET /metrics); default: Ray picks one.")
@click.option("--metrics-host", default=None,
              help="Where the local Ray's metrics endpoint listens: 127.0.0.1 or 0.0.0.0; default: --host (127.0.0.1 "
                   "when --host is one other address).")
@click.option("--drain-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On Ctrl-C or SIGTERM, how long the requests admitted may take to finish.")
@click.option("--api-key", envvar=API_KEY_ENV, default=None, show_envvar=True,
              help="Every /v1 request must send Authorization: Bearer KEY. Prefer the environment variable: a "
                   "command line is visible to other users of the machine.")
@click.option("--api-keys-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A file of API keys, one per line (# comments); on a cluster, at the same path on every node.")
@click.option("--ingress-replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="HTTP ingress replicas (they read bodies, check keys, admit and route; no model).")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a request body may take to arrive; then 408.")
@click.option("--max-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="The largest n of POST /v1/images/generations.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Jobs held (running and finished) by POST /v1/jobs.")
@click.option("--job-ttl", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds a finished job's result is kept.")
@click.option("--emit-config", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Write the Serve config YAML (for serve deploy / serve run) to this file, - for stdout, and exit.")
def main(package, host, port, replicas, max_batch_size, batch_wait_ms, max_batch_tokens, max_queue, retry_after,
         backend, precision, threads, max_steps, max_cfg, max_cost, replica_cpus, address, metrics_port, metrics_host,
         drain_s, api_key, api_keys_file, ingress_replicas, body_timeout, max_images, max_jobs, job_ttl, emit_config):
    """Serve a FiT model PACKAGE (default: the model shipped with fit-toolkit) over HTTP."""
    from fit_serve.app import ServeConfig, serve_config
    from fit_serve.config import load_api_keys
    from fit_serve.launch import LaunchError, Terminated, check_package, running

    with user_errors(PackageError, BackendError, LaunchError, ValueError, OSError):
        if api_key is not None:     # the replicas read it from the environment (a local Ray's inherit this one's)
            os.environ[API_KEY_ENV] = api_key
        config = ServeConfig(package=None if package is None else str(package.resolve()), backend=backend,
                             precision=precision, threads=threads, replicas=replicas, max_batch_size=max_batch_size,
                             batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_batch_tokens=max_batch_tokens,
                             retry_after_s=retry_after, replica_cpus=replica_cpus, max_steps=max_steps,
                             max_cfg=max_cfg, max_cost=max_cost, drain_s=drain_s, ingress_replicas=ingress_replicas,
                             body_timeout_s=body_timeout, max_images=max_images, max_jobs=max_jobs, job_ttl_s=job_ttl,
                             api_key_env=None if api_key is None else API_KEY_ENV,
                             api_keys_file=None if api_keys_file is None else str(api_keys_file.resolve()))
        load_api_keys(config)                           # an empty key or keys file: one line now
        manifest = check_package(config, verify=emit_config is None)
        if emit_config is not None:
            write_config(serve_config(config, host, port), emit_config)
            return
        try:
            with running(config, host, port, address=address, metrics_port=metrics_port, metrics_host=metrics_host):
                click.echo(f"fit-serve: serving {manifest.name} at http://{host}:{port} ({config.replicas} replica(s), "
                           f"batches of up to {config.max_batch_size}); Ctrl-C stops", err=True)
                if metrics_port is not None:
                    click.echo(f"fit-serve: metrics at http://{metrics_host or host}:{metrics_port}/metrics", err=True)
                while True:
                    time.sleep(3600)
        except Terminated:
            raise Interrupted("terminated", exit_code=TERMINATED_EXIT) from None


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


if __name__ == "__main__":  # pragma: no cover
    main()
