"""One inference interface for every runtime (ONNX Runtime, TensorRT, OpenVINO), in the spirit of Polygraphy's
runners.

A backend wraps one graph of a model package. The sampler only ever calls :meth:`Backend.infer` with a feed
dict of numpy arrays and reads the outputs by name, so any backend that implements this class plugs in::

    with create_backend("onnxruntime", "path/to/package") as backend:
        outputs = backend.infer({"x": x, "t": t, "y": y, "rope_cos": cos, "rope_sin": sin, "mask": mask})
        v = outputs["v"]

The registry maps each backend name to a ``"module:Class"`` path that :func:`create_backend` imports on first
use, so importing this module never imports a runtime library. The built-in backends (ONNX Runtime, TensorRT,
OpenVINO) are listed below by path and their modules register nothing on import; :func:`register_backend` adds another
backend, by path or as a class/factory.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from engines.errors import BackendError


@dataclass(frozen=True)
class TensorInfo:
    """Name, numpy dtype and shape of one graph input or output. Dynamic axes are names (str) or None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class Backend:
    """Base class: a runner for one ONNX graph (or an engine built from it).

    Subclasses implement :meth:`_activate`, :meth:`_deactivate`, :meth:`_infer` and fill ``inputs``/``outputs``
    (dicts of :class:`TensorInfo`, in graph order) no later than in :meth:`_activate`.
    """

    #: registry name, e.g. "onnxruntime"; set by subclasses
    name: str = "backend"
    #: numeric precision of what runs (fp32, fp16, bf16, ...), once known (TensorRT: when active)
    precision: Optional[str] = None

    def __init__(self):
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        self.is_active = False

    # -- lifecycle ------------------------------------------------------------------------------------------
    def activate(self) -> "Backend":
        """Load the graph and allocate what inference needs. Idempotent."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release sessions/engines/device memory. Idempotent; the backend can be activated again."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference ------------------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph. feed: input name -> array (every graph input); returns output name -> array (host).

        The implementation receives each input as a contiguous array of the graph's dtype for it."""
        if not self.is_active:
            raise BackendError(f"{self.name} backend is not active; call activate() or use it as a context manager")
        missing = [name for name in self.inputs if name not in feed]
        unexpected = [name for name in feed if name not in self.inputs]
        if missing or unexpected:
            raise BackendError(f"{self.name} feed does not match the graph: missing {missing}, unexpected {unexpected}")
        return self._infer({name: np.ascontiguousarray(value, dtype=self.inputs[name].dtype)
                            for name, value in feed.items()})

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return f"<{type(self).__name__} {self.name} ({state})>"


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------

# name -> "module:Class" (imported by create_backend on first use, then kept as the class), or a class/factory
# given to register_backend.
_REGISTRY: dict[str, str | Callable[..., Backend]] = {
    "onnxruntime": "engines.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "engines.backends.tensorrt.backend:TensorRTBackend",
    "openvino": "engines.backends.openvino:OpenVinoBackend",
}
# Options every backend accepts: ``threads`` (CPU threads, 0 = the runtime's choice) goes to the backends whose
# constructor takes it (ONNX Runtime, OpenVINO) and is ignored by the others (TensorRT runs on the GPU).
COMMON_OPTIONS = ("threads",)
_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt", "ov": "openvino"}


def register_backend(name: str, factory: str | Callable[..., Backend], aliases: tuple[str, ...] = ()) -> None:
    """Make a backend available to :func:`create_backend`. factory: a class/callable or a "module:attr" path."""
    _REGISTRY[name] = factory
    for alias in aliases:
        _ALIASES[alias] = name


def backend_names() -> tuple[str, ...]:
    """Registered backend names and aliases, for CLI choices and error messages."""
    return tuple(_REGISTRY) + tuple(_ALIASES)


def resolve_backend_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    return key


def create_backend(name: str, package, **options) -> Backend:
    """Build (but do not activate) the backend ``name`` for the package directory ``package``.

    options go to the backend: ``manifest=`` (an already loaded :class:`engines.manifest.Manifest`),
    ``verify=`` (check the sha256 of the files it opens), ``graph=`` ("transformer" or "vae_decoder"),
    :data:`COMMON_OPTIONS` (every backend takes them; one that has no use for one, e.g. ``threads`` on a GPU,
    ignores it) and backend-specific settings (its constructor's keywords). Raises BackendError for unknown names,
    unknown options or a missing runtime library.
    """
    key = resolve_backend_name(name)
    factory = _REGISTRY[key]
    if isinstance(factory, str):
        module_name, attr = factory.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise BackendError(f"backend {key!r} is unavailable: {err}") from err
        factory = getattr(module, attr)
        _REGISTRY[key] = factory
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for name in set(COMMON_OPTIONS) - set(parameters):
            options.pop(name, None)                     # a backend that does not run on CPU threads ignores them
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise BackendError(f"backend {key!r} has no option(s) {', '.join(unknown)}; it takes "
                               f"{', '.join(n for n in list(parameters)[1:])}")
    return factory(Path(package), **options)


def graph_file(package: Path, manifest, graph: str) -> Path:
    """Path of a package graph ("transformer" or "vae_decoder") as the manifest names it."""
    section = getattr(manifest, graph, None)
    if section is None:
        raise BackendError(f"package {package} has no {graph} graph")
    return Path(package) / section.file


def package_path(package) -> Path:
    """Directory of a package given as a path (str or Path)."""
    if isinstance(package, (str, Path)):
        return Path(package)
    raise BackendError(f"a package is given by its directory, not a {type(package).__name__}")
