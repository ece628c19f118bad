"""The web page as static files (``fit-web``): the page (web/), the JavaScript runtime (js/src/), ONNX Runtime Web and
a model package, with the cross-origin isolation headers multi-threaded WASM needs. Standard library and engines
only: no Ray, no torch.

    server = make_server(package, "127.0.0.1", 8000)        # ThreadingHTTPServer; server.serve_forever()

URL layout: ``/`` the page, ``/web/*``, ``/js/src/*`` (the whole folder), ``/ort/*`` (onnxruntime-web's dist folder,
see :func:`find_ort_dist`) and ``/package/*`` (manifest.json and the files it lists). Anything else is 404; only GET
and HEAD are answered.

Where the files come from: a wheel carries web/, js/src/ and js/package.json in ``fit_serve/site/`` (setup.py copies
them at build time); a source checkout (or an editable install) serves its own ``web/`` and ``js/``.
"""
from __future__ import annotations

import json
import os
import warnings
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from engines.cache import cache_dir
from engines.manifest import MANIFEST_NAME
from engines.package import load_manifest

ORT_PACKAGE = "onnxruntime-web"
ORT_ENTRY = "ort.wasm.min.mjs"                   # the module web/app.js imports from /ort/
ORT_DIST_ENV = "FIT_WEB_ORT_DIST"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
         ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".data": "application/octet-stream",
         ".png": "image/png", ".map": "application/json"}


class SiteError(Exception):
    """The site cannot be served; the message (one line) says what to do. ``parameter``: the argument at fault."""

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


# ----------------------------------------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------------------------------------

def site_root() -> Path:
    """The folder holding ``web/`` and ``js/`` (``src/``, ``package.json``): the installed copy, else the checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "site"
    return installed if installed.is_dir() else here.parent


def ort_version() -> str:
    """The onnxruntime-web version the page is built and tested with (the exact pin of js/package.json's
    devDependencies; consumers of the runtime get it as an optional peer dependency)."""
    return json.loads((site_root() / "js" / "package.json").read_text())["devDependencies"][ORT_PACKAGE]


def ort_cache_prefix() -> Path:
    """The npm prefix fit-web looks in for onnxruntime-web when neither a checkout nor the user provides one."""
    return cache_dir("web")


def find_ort_dist(given: Optional[Path] = None) -> Path:
    """onnxruntime-web's ``dist`` folder: ``given``, else $FIT_WEB_ORT_DIST, else the checkout's js/node_modules,
    else the npm prefix :func:`ort_cache_prefix`. A version other than :func:`ort_version` is served with a warning.
    Raises SiteError saying how to install it."""
    version = ort_version()
    source = "ort_dist" if given is not None else ORT_DIST_ENV if os.environ.get(ORT_DIST_ENV) else None
    if source is not None:
        dist = Path(given if given is not None else os.environ[ORT_DIST_ENV])
        if not (dist / ORT_ENTRY).is_file():
            raise SiteError(f"{source} {dist} is not the dist folder of {ORT_PACKAGE} (it has no {ORT_ENTRY})",
                            parameter="ort_dist")
    else:
        prefix = ort_cache_prefix()
        candidates = [site_root() / "js" / "node_modules" / ORT_PACKAGE / "dist",
                      prefix / "node_modules" / ORT_PACKAGE / "dist"]
        dist = next((d for d in candidates if (d / ORT_ENTRY).is_file()), None)
        if dist is None:
            raise SiteError(f"{ORT_PACKAGE} {version} is not installed: run `npm install --prefix {prefix} "
                            f"{ORT_PACKAGE}@{version}` (or set {ORT_DIST_ENV} to the dist folder of an install)")
    try:
        found = json.loads((dist.parent / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        found = None
    if found != version:
        warnings.warn(f"{dist} is {ORT_PACKAGE} {found or 'of an unknown version'}; the page is tested with {version}")
    return dist


def routes(package: Path, ort_dist: Optional[Path] = None) -> dict[str, tuple[Path, frozenset | None]]:
    """URL prefix -> (folder, allowed relative names or None for any file below it). ``ort_dist``: see
    :func:`find_ort_dist`."""
    manifest = load_manifest(package, verify=False)
    files = frozenset([MANIFEST_NAME, *manifest.files])
    root = site_root()
    return {"/web/": (root / "web", None), "/js/src/": (root / "js" / "src", None),
            "/ort/": (find_ort_dist(ort_dist), None), "/package/": (Path(package), files)}


# ----------------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------------

class Handler(SimpleHTTPRequestHandler):
    """Static files from a fixed set of folders, with the isolation headers; 404 for everything else."""

    server_version = "fit-web"

    def __init__(self, *args, table, quiet, **kwargs):
        self.table = table
        self.quiet = quiet
        super().__init__(*args, directory=str(table["/web/"][0]), **kwargs)

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
            return str(self.table["/web/"][0] / "index.html")
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


def make_server(package: Path, host: str, port: int, ort_dist: Optional[Path] = None,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server for ``package`` on host:port (0: any free port), not yet serving. ``ort_dist``: see
    :func:`find_ort_dist`. Raises SiteError (onnxruntime-web missing, address unusable) or PackageError."""
    table = routes(package, ort_dist)
    try:
        return ThreadingHTTPServer((host, port), partial(Handler, table=table, quiet=quiet))
    except OSError as err:
        raise SiteError(f"cannot listen on {host}:{port}: {err.strerror}") from None
