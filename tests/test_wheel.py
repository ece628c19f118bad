"""The wheel: built from this checkout (no network), installed into a fresh virtual environment, its fit-web serves
the page, every module of the JavaScript runtime and the shipped package from the installed files, and finds
onnxruntime-web where its own error message says to install it."""
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import urllib.request
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# not copied to the build: what .gitignore lists (build outputs, environments, npm's node_modules) and git itself
IGNORED = shutil.ignore_patterns(".git", ".venv*", "node_modules", "build", "dist", "*.egg-info", "__pycache__",
                                 "runs", "out")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(fit-web of a fresh venv holding only the wheel, a home folder for it); the venv reads the dependencies
    (numpy, onnxruntime, ...) from this interpreter's site-packages, not fit-toolkit itself."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"building needs setuptools >= 77 (pyproject.toml), this is {setuptools.__version__}")
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=IGNORED)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp / "dist"), str(tmp / "src")], check=True, capture_output=True, text=True,
                           timeout=300)
    [wheel] = (tmp / "dist").glob("fit_toolkit-*.whl")
    venv.create(tmp / "venv", with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # a .pth line adds a folder without running the .pth files in it, so the editable fit-toolkit stays out
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")]) if os.path.isdir(p)]
    Path(purelib, "dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    home = tmp / "home"
    home.mkdir()
    return tmp / "venv" / "bin" / "fit-web", home, build.stdout + build.stderr


def run_env(home: Path) -> dict:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_the_build_warns_of_nothing_deprecated(installed):
    """pyproject.toml in today's form: setuptools' deprecation notices (project.license as a table) are gone."""
    log = installed[2]
    assert "Successfully built" in log or "Saved" in log
    assert "deprecat" not in log.lower(), log


def test_installed_fit_web_serves_from_the_wheel(installed):
    fit_web, home, _ = installed
    missing = subprocess.run([str(fit_web), "--port", "0"], capture_output=True, text=True, cwd=home,
                             env=run_env(home), timeout=120)
    version = json.loads((ROOT / "js" / "package.json").read_text())["devDependencies"]["onnxruntime-web"]
    [line] = missing.stderr.splitlines()
    assert missing.returncode == 2
    prefix = home / ".cache" / "fit-toolkit" / "web"
    command = f"npm install --prefix {prefix} onnxruntime-web@{version}"
    assert command in line, line

    # what that npm command leaves: node_modules/onnxruntime-web/{package.json,dist/}
    ort = prefix / "node_modules" / "onnxruntime-web"
    (ort / "dist").mkdir(parents=True)
    (ort / "dist" / "ort.wasm.min.mjs").write_text("export {};\n")
    (ort / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": version}))
    server = subprocess.Popen([str(fit_web), "--port", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=home, env=run_env(home))
    try:
        url = json.loads(server.stdout.readline())["url"]
        assert fetch(url) == (ROOT / "web" / "index.html").read_bytes()
        assert fetch(url + "web/app.js") == (ROOT / "web" / "app.js").read_bytes()
        modules = [f for f in (ROOT / "js" / "src").rglob("*") if f.is_file()]
        assert modules
        for module in modules:
            assert fetch(url + "js/src/" + module.relative_to(ROOT / "js" / "src").as_posix()) == module.read_bytes()
        assert fetch(url + "ort/ort.wasm.min.mjs") == b"export {};\n"
        manifest = json.loads(fetch(url + "package/manifest.json"))
        assert manifest == json.loads((ROOT / "engines" / "default_model" / "manifest.json").read_text())
    finally:
        server.terminate()
        server.communicate(timeout=30)
