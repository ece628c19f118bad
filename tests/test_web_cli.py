"""fit-web, the command: a bad package, a missing onnxruntime-web or a bad --ort-dist is one line and exit status 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fit_web(*args, **env):
    environ = {"PYTHONPATH": str(ROOT), "PATH": "", **env}
    return subprocess.run([sys.executable, "-m", "cli.web", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=120)


def test_bad_package_is_one_line(tmp_path):
    result = fit_web(str(tmp_path / "missing"), "--ort-dist", str(tmp_path))          # the package is checked first
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"fit-web: error: package {tmp_path / 'missing'} does not exist "
                                                  f"or is not a directory"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_folder_without_onnxruntime_web_is_one_line(tmp_path, how):
    result = fit_web(*(["--ort-dist", str(tmp_path)] if how == "flag" else []),
                     **({"FIT_WEB_ORT_DIST": str(tmp_path)} if how == "env" else {}))
    name = "--ort-dist" if how == "flag" else "FIT_WEB_ORT_DIST"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"fit-web: error: {name} {tmp_path} is not the dist folder of "
                                                  f"onnxruntime-web (it has no ort.wasm.min.mjs)"]
    assert os.listdir(tmp_path) == []
