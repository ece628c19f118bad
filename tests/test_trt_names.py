"""Every TensorRT, cuda-python and Polygraphy name the code uses exists in the real packages' releases.

TensorRT cannot be imported here (its libraries are not installable on these machines), but the compiled bindings
ship on PyPI on their own: ``tensorrt-cu12-bindings`` (TensorRT 10.x) and ``tensorrt-cu13-bindings`` (11.x). The
test downloads both wheels once into ~/.cache/fit-toolkit/tensorrt-bindings (skipped, with the reason, only when
the package index cannot be reached), reads the names the module defines — the identifiers in the compiled
module's string table (pybind11 registers every class, method, property and enum value by its name) plus the
top-level names of its Python ``__init__.py`` — and checks the names collected from engines/ and fit_export/ by
their syntax tree:

* ``trt.X.Y...`` chains, wherever ``trt`` is the tensorrt module;
* attributes read or called on TensorRT objects: values named in :data:`TRT_OBJECTS` (engine, context, ...);
* methods overridden in subclasses of ``trt.X`` (progress-monitor callbacks).

Names under an ``if`` whose test calls ``hasattr(trt...)`` are 10-only and are checked against 10.x alone.

The same way, the CUDA runtime calls (``rt.X`` in engines/) are checked against the source of the
``cuda-bindings`` 12.x and 13.x wheels, and the Polygraphy calls of fit_export/ against the source of Polygraphy
0.49.26 (downloaded) and the installed Polygraphy (0.53.x), read as syntax trees. The wheels take about 19 MB.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "fit-toolkit" / "tensorrt-bindings"
WHEELS = {10: "tensorrt-cu12-bindings>=10,<11", 11: "tensorrt-cu13-bindings>=11,<12"}
CUDA_WHEELS = {12: "cuda-bindings>=12,<13", 13: "cuda-bindings>=13,<14"}
OLDEST_POLYGRAPHY = "0.49.26"
# Names that hold TensorRT objects in engines/ and fit_export/ (the backend's engine, contexts, runtime, logger).
TRT_OBJECTS = frozenset({"engine", "context", "_runtime", "_logger", "runtime", "network", "layer"})
# Python attributes every object has; not TensorRT's.
_PYTHON = frozenset({"__init__", "__class__", "__name__"})


@dataclass
class Use:
    name: str
    where: str
    only_10: bool = False


@dataclass
class Uses:
    uses: list[Use] = field(default_factory=list)

    def add(self, name: str, where: str, only_10: bool) -> None:
        if name not in _PYTHON:
            self.uses.append(Use(name, where, only_10))


def _guarded(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr" and n.args
               and "trt" in ast.unparse(n.args[0]) for n in ast.walk(test))


def _chain(node: ast.Attribute, root: str = "trt") -> list[str] | None:
    """['BuilderFlag', 'FP16'] for trt.BuilderFlag.FP16 (the outermost attribute node), else None. The root may
    be a name (``trt``) or an attribute (``self.rt``)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
        if isinstance(node, ast.Attribute) and node.attr == root:
            return names[::-1]
    if isinstance(node, ast.Name) and node.id == root:
        return names[::-1]
    return None


def _holder(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def collect(source: str, filename: str) -> Uses:
    """The TensorRT names one module's source uses (see the module docstring)."""
    tree = ast.parse(source, filename)
    uses = Uses()
    guarded_ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _guarded(node.test):
            guarded_ids.update(id(n) for body in node.body for n in ast.walk(body))
    seen_inner: set[int] = set()
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        only_10 = id(node) in guarded_ids
        if isinstance(node, ast.Attribute) and id(node) not in seen_inner:
            chain = _chain(node)
            if chain is not None:
                inner = node.value
                while isinstance(inner, ast.Attribute):
                    seen_inner.add(id(inner))
                    inner = inner.value
                for name in chain:
                    uses.add(name, where, only_10)
            elif _holder(node.value) in TRT_OBJECTS:
                uses.add(node.attr, where, only_10)
        if isinstance(node, ast.ClassDef) and any(_chain(b) for b in node.bases if isinstance(b, ast.Attribute)):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    uses.add(item.name, f"{filename}:{item.lineno}", only_10)
    return uses


def collect_project() -> list[Use]:
    uses = []
    for folder in ("engines", "fit_export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            if "tensorrt" in text:
                uses.extend(collect(text, str(path.relative_to(ROOT))).uses)
    return uses


def collect_cuda() -> list[Use]:
    """``rt.X.Y`` chains (cuda-python's runtime module) in engines/."""
    uses = []
    for path in sorted((ROOT / "engines").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        inner: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                chain = _chain(node, "rt")
                if chain:
                    value = node.value
                    while isinstance(value, ast.Attribute):
                        inner.add(id(value))
                        value = value.value
                    uses.extend(Use(name, f"{path.relative_to(ROOT)}:{node.lineno}") for name in chain)
    return uses


# ----------------------------------------------------------------------------------------------------------
# The real packages
# ----------------------------------------------------------------------------------------------------------

def download(requirement: str, pattern: str) -> Path:
    """The newest cached wheel matching ``pattern``, downloaded with pip into CACHE when there is none."""
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--platform", "manylinux_2_28_x86_64", "--python-version", f"{sys.version_info.major}{sys.version_info.minor}",
               "--timeout", "30", "-d", str(CACHE), requirement]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the package index did not answer in time for {requirement}")
    found = sorted(CACHE.glob(pattern))
    if not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        index = _index_url()
        if not _reachable(index):
            pytest.skip(f"the package index {index} is unreachable ({tail[0]})")
        pytest.fail(f"pip download {requirement} failed: {tail[0]}")
    return found[-1]


def _index_url() -> str:
    """The index pip uses: PIP_INDEX_URL, else pip's configured index-url, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    match = re.search(r"index-url='([^']+)'", proc.stdout)
    return match.group(1) if match else "https://pypi.org/simple/"


def _reachable(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=15).close()
    except urllib.error.HTTPError:
        return True                                      # it answered
    except (urllib.error.URLError, OSError):
        return False
    return True


def _wheel(major: int) -> Path:
    return download(WHEELS[major], f"tensorrt_cu{12 if major == 10 else 13}_bindings-{major}.*.whl")


@dataclass(frozen=True)
class Bindings:
    version: str
    strings: bytes          # the compiled module's bytes (names are NUL-terminated there)
    python_names: frozenset

    def has(self, name: str) -> bool:
        # Present when NUL-terminated in the module: alone, or as the tail of a longer string the linker merged
        # it into ("Logger" is stored as the end of "ILogger").
        return name in self.python_names or (name.encode() + b"\x00") in self.strings


def load_bindings(wheel: Path) -> Bindings:
    with zipfile.ZipFile(wheel) as zf:
        so = next(n for n in zf.namelist() if n.endswith("/tensorrt.so"))
        init = next(n for n in zf.namelist() if n.endswith("tensorrt_bindings/__init__.py"))
        data = zf.read(so)
        tree = ast.parse(zf.read(init).decode())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    version = wheel.name.split("-")[1]
    return Bindings(version, data, frozenset(names))


@pytest.fixture(scope="module")
def bindings() -> dict[int, Bindings]:
    return {major: load_bindings(_wheel(major)) for major in WHEELS}


def missing(uses, bindings: dict[int, Bindings]) -> list[str]:
    problems = []
    for use in uses:
        for major, b in bindings.items():
            if major > 10 and use.only_10:
                continue
            if not b.has(use.name):
                problems.append(f"{use.where}: {use.name} is not in TensorRT {b.version}")
    return problems


def test_every_tensorrt_name_the_code_uses_exists_in_10_and_11(bindings):
    uses = collect_project()
    names = {u.name for u in uses}
    # The collection sees the calls that matter (a broken collector must not pass by finding nothing).
    assert {"Runtime", "deserialize_cuda_engine", "create_execution_context", "ExecutionContextAllocationStrategy",
            "ON_PROFILE_CHANGE", "execute_async_v3", "set_input_shape", "set_tensor_address",
            "get_tensor_profile_shape", "init_libnvinfer_plugins", "IProgressMonitor", "phase_start",
            "step_complete", "phase_finish", "nptype", "TensorIOMode"} <= names, sorted(names)
    assert missing(uses, bindings) == []


def test_a_misspelled_or_removed_name_fails(bindings):
    source = '''
import tensorrt as trt

def build(engine, flag):
    engine.create_execution_contxt()
    config = trt.BuilderFlag.FP61
    if hasattr(trt.BuilderFlag, "FP16"):
        flag = trt.BuilderFlag.FP16               # 10-only: checked against 10 alone
    return trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS
'''
    problems = missing(collect(source, "example.py").uses, bindings)
    v10, v11 = bindings[10].version, bindings[11].version
    assert f"example.py:5: create_execution_contxt is not in TensorRT {v10}" in problems
    assert f"example.py:6: FP61 is not in TensorRT {v11}" in problems
    assert f"example.py:9: OBEY_PRECISION_CONSTRAINTS is not in TensorRT {v11}" in problems   # removed in 11
    assert not any("FP16" in p for p in problems)
    assert not any(p.endswith(v10) and "OBEY" in p for p in problems)


@pytest.mark.parametrize("major", sorted(CUDA_WHEELS))
def test_every_cuda_runtime_call_exists_in_cuda_bindings(major):
    wheel = download(CUDA_WHEELS[major], f"cuda_bindings-{major}.*.whl")
    with zipfile.ZipFile(wheel) as zf:
        # The Cython sources shipped (12.x has runtime.pyx; 13.x only the .pxd declarations) and the compiled
        # module: a name counts when declared in the sources and present in the compiled module.
        sources = [n for n in zf.namelist() if re.fullmatch(r"cuda/bindings/(cy)?runtime\.(pyx|pxd)", n)]
        text = "\n".join(zf.read(n).decode() for n in sources)
        compiled = zf.read(next(n for n in zf.namelist() if re.fullmatch(r"cuda/bindings/runtime\..*\.so", n)))
    declared = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    exists = lambda name: name in declared and name.encode() in compiled
    uses = collect_cuda()
    assert {"cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaGraphInstantiate", "cudaStreamCaptureMode",
            "cudaStreamCaptureModeThreadLocal", "cudaMemcpyHostToDevice", "cudaSuccess"} <= {u.name for u in uses}
    assert [f"{u.where}: {u.name}" for u in uses if not exists(u.name)] == []
    assert not exists("cudaMallocc")                                   # the check can fail


# Polygraphy: (file, class, method) -> keyword arguments fit_export passes (class names match by substring, so
# CreateConfig's shared base class counts).
POLYGRAPHY_CALLS = {
    ("backend/trt/config.py", "CreateConfig", "__init__"): {"profiles", "load_timing_cache",
                                                             "builder_optimization_level", "progress_monitor"},
    ("backend/trt/loader.py", "NetworkFromOnnxPath", "__init__"): {"path", "strongly_typed"},
    ("backend/trt/loader.py", "EngineBytesFromNetwork", "__init__"): {"network", "config", "save_timing_cache"},
    ("comparator/comparator.py", "Comparator", "run"): {"runners", "data_loader"},
    ("logger/logger.py", "Logger", "verbosity"): {"severity"},
}


def polygraphy_signatures(read) -> dict:
    """(file, class, method) -> (parameter names, names without a default) from Polygraphy's source."""
    found = {}
    for (file, cls, method) in POLYGRAPHY_CALLS:
        tree = ast.parse(read(file))
        params, required = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and cls in node.name:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == method:
                        args = item.args.posonlyargs + item.args.args
                        params |= {a.arg for a in args + item.args.kwonlyargs}
                        required |= {a.arg for a in args[:len(args) - len(item.args.defaults)]} - {"self", "cls"}
        found[(file, cls, method)] = (params, required)
    return found


def check_polygraphy(signatures: dict) -> list[str]:
    problems = []
    for key, wanted in POLYGRAPHY_CALLS.items():
        params, required = signatures[key]
        if not params:
            problems.append(f"{key[1]}.{key[2]} not found in {key[0]}")
        problems += [f"{key[1]}.{key[2]} has no {name!r}" for name in sorted(wanted - params)]
        problems += [f"{key[1]}.{key[2]} requires {name!r}" for name in sorted(required - wanted)]
    return problems


def test_polygraphy_calls_exist_in_the_oldest_and_the_installed_polygraphy():
    """fit_export passes these keyword arguments (and never Comparator.run's streaming): Polygraphy 0.49.26, the
    oldest pinned, and the installed one (0.53.x) both take them."""
    import polygraphy

    wheel = download(f"polygraphy=={OLDEST_POLYGRAPHY}", f"polygraphy-{OLDEST_POLYGRAPHY}-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert check_polygraphy(polygraphy_signatures(lambda f: zf.read(f"polygraphy/{f}").decode())) == []
    installed = Path(polygraphy.__file__).parent
    assert check_polygraphy(polygraphy_signatures(lambda f: (installed / f).read_text())) == []
    broken = polygraphy_signatures(lambda f: (installed / f).read_text())
    broken[("backend/trt/loader.py", "NetworkFromOnnxPath", "__init__")][0].discard("strongly_typed")
    assert check_polygraphy(broken) == ["NetworkFromOnnxPath.__init__ has no 'strongly_typed'"]

