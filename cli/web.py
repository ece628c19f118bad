"""``fit-web``: serve the browser page, the JavaScript runtime, ONNX Runtime Web and a model package as static files
(fit_serve/static_site.py, docs/javascript.md). Thin wrapper; standard library only, no torch, no Ray.

    fit-web [PACKAGE] --host 127.0.0.1 --port 8000 [--ort-dist DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.common import Command, user_errors
from engines.errors import PackageError
from engines.pipeline import DEFAULT_MODEL_DIR
from fit_serve.static_site import ORT_DIST_ENV, ORT_PACKAGE, SiteError, make_server


@click.command(cls=Command, prog="fit-web")
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0 = any free).")
@click.option("--ort-dist", type=click.Path(path_type=Path), default=None,
              help=f"The dist folder of an {ORT_PACKAGE} install. Default: ${ORT_DIST_ENV}, else js/node_modules of "
                   f"a source checkout, else the install under ~/.cache/fit-toolkit/web (npm install --prefix).")
@click.option("--quiet", "-q", is_flag=True, help="No request log; print the URL as JSON.")
def main(package, host, port, ort_dist, quiet):
    """Serve the FiT web page and a model PACKAGE (default: the model shipped with fit-toolkit)."""
    with user_errors(PackageError, SiteError):
        server = make_server(package or DEFAULT_MODEL_DIR, host, port, ort_dist=ort_dist, quiet=quiet)
    url = f"http://{server.server_address[0]}:{server.server_address[1]}/"
    click.echo(json.dumps({"url": url}) if quiet else f"fit-web: serving {url} (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover
    main()
