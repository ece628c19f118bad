"""``fit-web``: serve the browser page (web/), the JavaScript runtime (js/src), ONNX Runtime Web and a model package
as static files with the cross-origin isolation headers multi-threaded WASM needs. Standard library only, no torch.

    fit-web [PACKAGE] --host 127.0.0.1 --port 8000

URL layout: ``/`` the page, ``/web/*``, ``/js/src/*``, ``/ort/*`` (js/node_modules/onnxruntime-web/dist) and
``/package/*`` (manifest.json and the files it lists). Anything else is 404; only GET and HEAD are answered.
"""
from __future__ import annotations

import json
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click

from cli.common import Command, UserError, user_errors
from engines.manifest import MANIFEST_NAME
from engines.errors import PackageError
from engines.package import load_manifest
from engines.pipeline import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parent.parent
ORT_DIST = REPO / "js" / "node_modules" / "onnxruntime-web" / "dist"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
         ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".data": "application/octet-stream",
         ".png": "image/png", ".map": "application/json"}


def routes(package: Path) -> dict[str, tuple[Path, frozenset | None]]:
    """URL prefix -> (folder, allowed relative names or None for any file below it)."""
    manifest = load_manifest(package, verify=False)
    files = frozenset([MANIFEST_NAME, *manifest.files])
    return {"/web/": (REPO / "web", None), "/js/src/": (REPO / "js" / "src", None), "/ort/": (ORT_DIST, None),
            "/package/": (package, files)}


class Handler(SimpleHTTPRequestHandler):
    """Static files from a fixed set of folders, with the isolation headers; 404 for everything else."""

    server_version = "fit-web"

    def __init__(self, *args, table, quiet, **kwargs):
        self.table = table
        self.quiet = quiet
        super().__init__(*args, directory=str(REPO / "web"), **kwargs)

    def end_headers(self):
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path):
        return TYPES.get(Path(str(path)).suffix.lower(), "application/octet-stream")

    def translate_path(self, path):
        """The file a URL names, or '' (answered 404) when it is outside the served folders."""
        url = unquote(urlsplit(path).path)
        if url in ("/", "/index.html"):
            return str(REPO / "web" / "index.html")
        for prefix, (folder, allowed) in self.table.items():
            if url.startswith(prefix):
                name = url[len(prefix):]
                if allowed is not None and name not in allowed:
                    return ""
                try:
                    target = (folder / name).resolve()
                    if folder.resolve() in target.parents and target.is_file():
                        return str(target)
                except (OSError, ValueError):                  # NUL bytes, names too long
                    return ""
        return ""

    def send_head(self):
        path = self.translate_path(self.path)
        if not path:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "not found")
        return None

    def do_POST(self):
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(package: Path, host: str, port: int, quiet: bool = False) -> ThreadingHTTPServer:
    if not ORT_DIST.is_dir():
        raise UserError(f"{ORT_DIST} is missing; run `npm ci --prefix js` first")
    table = routes(package)
    try:
        return ThreadingHTTPServer((host, port), partial(Handler, table=table, quiet=quiet))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None


@click.command(cls=Command, prog="fit-web")
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0 = any free).")
@click.option("--quiet", "-q", is_flag=True, help="No request log.")
def main(package, host, port, quiet):
    """Serve the FiT web page and a model PACKAGE (default: the model shipped with fit-toolkit)."""
    with user_errors(PackageError):
        server = make_server(package or DEFAULT_MODEL_DIR, host, port, quiet)
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
