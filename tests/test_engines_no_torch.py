"""engines/, fit-run and fit-web must work without torch: import everything and generate an image with torch
unavailable.

With FIT_CORE_PYTHON (scripts/test.sh: a venv holding only the core install) the check runs there; otherwise in
this interpreter with an import hook that makes ``import torch`` fail, which catches indirect imports too.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runtime_helpers import tiny_package

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchdiffeq", "torchvision", "fit", "fit_export"):
            raise ImportError(f"{name} imported by the torch-free runtime")
sys.meta_path.insert(0, BlockTorch())
"""

CHECK = """
import importlib, pkgutil, sys
import engines
for info in pkgutil.iter_modules(engines.__path__):
    importlib.import_module("engines." + info.name)
import cli.run
import cli.web                                      # fit-web is core install too: no Ray, no torch
from engines.pipeline import load
with load(sys.argv[1], threads=1) as pipe:
    image = pipe.generate(width=32, height=32, label=1, seed=0, steps=2, output="array")
assert image.shape == (32, 32, 3)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "fit", "fit_export"))
assert not bad, bad
print("torch-free OK")
"""


def run_check(python: str, prelude: str, package: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + textwrap.dedent(CHECK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([python, "-c", code, str(package)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_engines_import_no_torch(tmp_path_factory):
    pytest.importorskip("torch")                    # the package is exported with torch in this process
    package, _ = tiny_package(tmp_path_factory)
    core = os.environ.get("FIT_CORE_PYTHON")
    if core:
        proc = run_check(core, "import importlib.util, sys\nassert importlib.util.find_spec('torch') is None\n",
                         package)
    else:
        proc = run_check(sys.executable, BLOCK_TORCH, package)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-free OK" in proc.stdout


def test_the_hook_catches_an_indirect_torch_import():
    """The hook itself works: a module importing torch through another module fails under it."""
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import fit.flow"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "imported by the torch-free runtime" in proc.stderr


def test_fit_serve_imports_no_torch():
    """The server (fit_serve and fit-serve) stays torch-free too; checked in this interpreter, which has Ray."""
    pytest.importorskip("ray.serve")
    code = BLOCK_TORCH + textwrap.dedent("""
        import importlib, pkgutil, sys
        import fit_serve
        for info in pkgutil.iter_modules(fit_serve.__path__):
            importlib.import_module("fit_serve." + info.name)
        import cli.serve
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "fit", "fit_export"))
        assert not bad, bad
        print("torch-free OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-free OK" in proc.stdout
