"""fit_serve/static_site.py: serves the page, the whole JavaScript runtime folder, ONNX Runtime Web and the package
with the cross-origin isolation headers; everything else is 404 (never 500), writes are 405; where onnxruntime-web
is looked for, and what is said when it is nowhere."""
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engines.pipeline import DEFAULT_MODEL_DIR
from fit_serve import static_site
from fit_serve.static_site import SiteError, find_ort_dist, make_server, ort_version

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_DIST = ROOT / "js" / "node_modules" / "onnxruntime-web" / "dist"
needs_ort = pytest.mark.skipif(not CHECKOUT_DIST.is_dir(), reason="js/node_modules missing (npm ci --prefix js)")


@pytest.fixture(scope="module")
def url():
    if not CHECKOUT_DIST.is_dir():
        pytest.skip("js/node_modules missing (npm ci --prefix js)")
    server = make_server(DEFAULT_MODEL_DIR, "127.0.0.1", 0, quiet=True)
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


def fake_ort(folder: Path, version: str) -> Path:
    """An onnxruntime-web install as npm lays it out (package.json next to dist/), holding only the page's entry."""
    (folder / "dist").mkdir(parents=True)
    (folder / "dist" / static_site.ORT_ENTRY).write_text("export {};\n")
    (folder / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": version}))
    return folder / "dist"


# ----------------------------------------------------------------------------------------------------------------
# Serving
# ----------------------------------------------------------------------------------------------------------------

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


def test_serves_every_module_of_the_runtime_folder(url):
    """The whole js/src folder, whatever modules it holds."""
    files = [f for f in (ROOT / "js" / "src").rglob("*") if f.is_file()]
    assert files
    for file in files:
        status, _, body = fetch(f"{url}/js/src/{file.relative_to(ROOT / 'js' / 'src').as_posix()}")
        assert status == 200 and body == file.read_bytes(), file


@pytest.mark.parametrize("path", ["/nothing", "/package/../cli/web.py", "/web/../../pyproject.toml",
                                  "/%2e%2e/pyproject.toml", "/package/", "/js/", "/package/notlisted.onnx",
                                  "/web/%00", "/web/" + "a" * 5000, "//etc/passwd"])
def test_everything_else_is_404(url, path):
    assert fetch(url + path)[0] == 404


def test_writes_are_refused(url):
    assert fetch(url + "/", method="POST")[0] == 405


@needs_ort
def test_a_port_in_use_is_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SiteError, match=f"cannot listen on 127.0.0.1:{port}: "):
            make_server(DEFAULT_MODEL_DIR, "127.0.0.1", port)


# ----------------------------------------------------------------------------------------------------------------
# Finding onnxruntime-web
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_checkout(tmp_path, monkeypatch):
    """A site without js/node_modules (as in a wheel) and an empty cache folder; returns the cache's npm prefix."""
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    shutil.copy(ROOT / "js" / "package.json", site / "js" / "package.json")
    monkeypatch.setattr(static_site, "site_root", lambda: site)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(static_site.ORT_DIST_ENV, raising=False)
    return tmp_path / "cache" / "fit-toolkit" / "web"


def test_the_pinned_version_is_the_one_js_depends_on():
    package = json.loads((ROOT / "js" / "package.json").read_text())
    assert ort_version() == package["devDependencies"]["onnxruntime-web"]


def test_nothing_installed_says_the_exact_npm_command(no_checkout):
    with pytest.raises(SiteError) as info:
        find_ort_dist()
    assert str(info.value) == (f"onnxruntime-web {ort_version()} is not installed: run `npm install --prefix "
                               f"{no_checkout} onnxruntime-web@{ort_version()}` (or set FIT_WEB_ORT_DIST to the "
                               f"dist folder of an install)")


def test_that_npm_install_is_found(no_checkout):
    dist = fake_ort(no_checkout / "node_modules" / "onnxruntime-web", ort_version())
    assert find_ort_dist() == dist


def test_a_given_folder_wins_and_is_checked(no_checkout, tmp_path, monkeypatch):
    fake_ort(no_checkout / "node_modules" / "onnxruntime-web", ort_version())
    mine = fake_ort(tmp_path / "mine", ort_version())
    assert find_ort_dist(mine) == mine
    monkeypatch.setenv(static_site.ORT_DIST_ENV, str(mine))
    assert find_ort_dist() == mine
    with pytest.raises(SiteError, match="^ort_dist .* is not the dist folder of onnxruntime-web") as info:
        find_ort_dist(tmp_path)
    assert info.value.parameter == "ort_dist"
    monkeypatch.setenv(static_site.ORT_DIST_ENV, str(tmp_path))
    with pytest.raises(SiteError, match=f"^FIT_WEB_ORT_DIST {tmp_path} is not the dist folder"):
        find_ort_dist()


def test_another_version_is_served_with_a_warning(no_checkout, tmp_path):
    other = fake_ort(tmp_path / "other", "1.2.3")
    with pytest.warns(UserWarning, match=f"is onnxruntime-web 1.2.3; the page is tested with {ort_version()}"):
        assert find_ort_dist(other) == other


def test_the_docs_name_the_pinned_version():
    for doc in ("README.md", "docs/javascript.md"):
        assert f"npm install --prefix ~/.cache/fit-toolkit/web onnxruntime-web@{ort_version()}" in \
            (ROOT / doc).read_text(), doc
