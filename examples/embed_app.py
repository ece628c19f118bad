"""A minimal app embedding the FiT runtime: a tiny HTTP server that returns generated PNGs.

    python examples/embed_app.py [PACKAGE] [--port 8000]
    curl -o dog.png "http://localhost:8000/generate?width=256&height=192&label=207&seed=3&steps=20"

Only the torch-free runtime is used (``engines``). The pipeline is loaded once; requests are served one at a
time because one ONNX Runtime session already uses every core. Bad requests get HTTP 400 with the runtime's
one-line message.
"""
from __future__ import annotations

import argparse
import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import engines
from engines.errors import BackendError
from engines.pipeline import GenerationError
from engines.png import save_png

INTEGER_FIELDS = ("width", "height", "seed", "steps")


def parse_query(query: str) -> dict:
    """URL query -> generate() keyword arguments (label stays a string: an id or a class name)."""
    fields = {k: v[-1] for k, v in parse_qs(query).items()}
    args = {}
    for key, value in fields.items():
        if key in INTEGER_FIELDS:
            args[key] = int(value)
        elif key in ("cfg", "time_shift", "tail_compression"):
            args[key] = float(value)
        elif key in ("label", "sampler", "extrapolation"):
            args[key] = value
        else:
            raise GenerationError(f"unknown parameter {key!r}")
    return args


def make_handler(pipe, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/generate":
                self.send_error(404, "use /generate?width=...&height=...&label=...&seed=...")
                return
            try:
                with lock:
                    image = pipe.generate(**parse_query(url.query))
            except (GenerationError, BackendError, ValueError) as err:
                self.send_error(400, str(err).splitlines()[0])
                return
            body = io.BytesIO()
            image.save(body, format="PNG")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("X-Generation-Parameters", image.info["parameters"])
            self.end_headers()
            self.wfile.write(body.getvalue())

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve FiT images over HTTP.")
    parser.add_argument("package", nargs="?", default=None, help="model package (default: the shipped model)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--once", metavar="OUT.png", help="generate one image to OUT.png and exit (no server)")
    args = parser.parse_args()
    # A server lives long and sees every size: return the arena after each call instead of holding the largest
    # request's working set (docs/runtime.md, Memory).
    with engines.load(args.package, memory="shrink") as pipe:
        if args.once:
            save_png(pipe.generate(seed=0), args.once)
            print(args.once)
            return
        server = HTTPServer(("127.0.0.1", args.port), make_handler(pipe, threading.Lock()))
        print(f"serving {pipe.name} on http://127.0.0.1:{args.port}/generate")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
