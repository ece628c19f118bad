"""fit-web: serves the page, the JavaScript runtime, ONNX Runtime Web and the package with the cross-origin isolation
headers; everything else is 404 (never 500), writes are 405, and a bad package is one line and exit status 2."""
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli import web
from engines.pipeline import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not web.ORT_DIST.is_dir(), reason="js/node_modules missing (npm ci --prefix js)")


@pytest.fixture(scope="module")
def url():
    server = web.make_server(DEFAULT_MODEL_DIR, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method)) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, b""


@pytest.mark.parametrize("path, kind", [("/", "text/html"), ("/web/app.js", "text/javascript"),
                                        ("/js/src/index.js", "text/javascript"),
                                        ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
                                        ("/package/manifest.json", "application/json"),
                                        ("/package/transformer.onnx", "application/octet-stream")])
def test_serves_files_with_isolation_headers(url, path, kind):
    status, headers, body = fetch(url + path)
    assert status == 200 and body
    assert headers["Content-Type"].startswith(kind)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize("path", ["/nothing", "/package/../cli/web.py", "/web/../../pyproject.toml",
                                  "/%2e%2e/pyproject.toml", "/package/", "/js/", "/package/notlisted.onnx",
                                  "/web/%00", "/web/" + "a" * 5000, "//etc/passwd"])
def test_everything_else_is_404(url, path):
    assert fetch(url + path)[0] == 404


def test_writes_are_refused(url):
    assert fetch(url + "/", method="POST")[0] == 405


def test_bad_package_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli.web", str(tmp_path / "missing")], capture_output=True,
                            text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"fit-web: error: package {tmp_path / 'missing'} does not exist "
                                                  f"or is not a directory"]
