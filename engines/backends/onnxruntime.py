"""ONNX Runtime backend: CPU by default, the CUDA provider when onnxruntime-gpu and a GPU are present.

Session options are chosen for a sampler that calls one graph many times with changing (batch, seq) shapes
(measured in docs/runtime.md, RSS over 1,000 calls of alternating sizes):
- memory-pattern planning is off: it plans and keeps one allocation pattern per input shape;
- ``memory="arena"`` (default, fastest): the CPU arena keeps the largest call's working set; RSS is flat after the
  first call of the largest shape (bounded by ``sizes.max_tokens``), but that memory is held between calls;
- ``memory="shrink"``: the arena serves a call and is shrunk back after it, so RSS returns to about the weights
  after every call (long-running apps, servers); each call pays for fresh allocations;
- ``memory="off"``: no arena, smallest and slowest (every tensor is a fresh, page-faulting allocation).
Everything else is ONNX Runtime's defaults unless asked for.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from engines.backends import Backend, TensorInfo, graph_file
from engines.errors import BackendError, PackageError
from engines.manifest import Manifest, graph_files
from engines.package import load_manifest, verify_files

_DTYPES = {
    "tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64), "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32), "tensor(bool)": np.dtype(np.bool_),
}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DEVICES = ("auto", "cpu", "cuda")
MEMORY_POLICIES = ("arena", "shrink", "off")


def _ort():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from err
    return onnxruntime


def cuda_available() -> bool:
    """True when this onnxruntime build has the CUDA provider (onnxruntime-gpu). Whether a GPU answers is
    only known once a session is created; :class:`OnnxRuntimeBackend` checks that."""
    return "CUDAExecutionProvider" in _ort().get_available_providers()


class OnnxRuntimeBackend(Backend):
    """Runs one graph of a package (``graph="transformer"`` or ``"vae_decoder"``) in an InferenceSession.

    device: "auto" (CUDA when available, else CPU), "cpu" or "cuda" (error when CUDA cannot be used)
    threads: intra-op threads (0 = ONNX Runtime's choice: one per physical core)
    optimization: graph optimization level, one of "disable", "basic", "extended", "all"
    optimized_model_path: where ONNX Runtime saves the optimized graph (load it later as a plain ONNX file)
    memory: "arena" (keep the arena), "shrink" (arena per call, released after it), "off" (no arena)
    memory_pattern: ONNX Runtime's per-shape allocation planning (off: shapes change every request)
    model_path: run this ONNX file instead of the package's graph (``package`` may then be None)
    precision: which transformer variant to run (docs/package-format.md, *Variants*): a variant name, a precision
        (``fp32``, ``int8``, ``fp16``) or None for the manifest's default variant
    ort_optimized: among the variants of that precision prefer the one tuned for ONNX Runtime (``fit-export
        ort-optimize``: attention and RoPE as fused opset-23 ops, checked against the standard graph); an ONNX
        Runtime that cannot load it (no opset-23 kernels) runs the standard variant, with a warning
    """

    name = "onnxruntime"

    def __init__(self, package, *, manifest: Optional[Manifest] = None, graph: str = "transformer", verify: bool = True,
                 device: str = "auto", threads: int = 0, optimization: str = "all",
                 optimized_model_path: Optional[str] = None, memory: str = "arena",
                 memory_pattern: bool = False, model_path: Optional[str] = None, precision: Optional[str] = None,
                 ort_optimized: bool = True):
        super().__init__()
        if device not in DEVICES:
            raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        if optimization not in OPTIMIZATION_LEVELS:
            raise BackendError(f"unknown optimization level {optimization!r}; "
                               f"choose one of {', '.join(OPTIMIZATION_LEVELS)}")
        if memory not in MEMORY_POLICIES:
            raise BackendError(f"unknown memory policy {memory!r}; choose one of {', '.join(MEMORY_POLICIES)}")
        if int(threads) < 0:
            raise BackendError(f"threads must be 0 (automatic) or positive, got {threads}")
        if model_path is not None:
            self.model_path = Path(model_path)
        else:
            if manifest is None:
                manifest = load_manifest(package, verify=False)
            self.model_path = graph_file(Path(package), manifest, graph)
            if graph == "transformer":
                try:
                    variant = manifest.transformer.select(self.name, precision, tuned=ort_optimized)
                except PackageError as err:
                    raise BackendError(str(err)) from None
                self.variant, self.precision = variant.name, variant.precision
                self.model_path = Path(package) / variant.file
                if variant.runtime == self.name:
                    standard = manifest.transformer.select(self.name, variant.precision, tuned=False)
                    if standard.runtime is None:
                        self.fallback_path = Path(package) / standard.file
        self.package, self.verify = None if package is None else Path(package), verify
        self.manifest = manifest if model_path is None else None       # files outside the package are not listed
        self.graph = graph
        self.device = device
        self.threads = int(threads)
        self.optimization = optimization
        self.optimized_model_path = optimized_model_path
        self.memory = memory
        self.memory_pattern = memory_pattern
        self.session = None
        self.run_options = None
        self.providers: list[str] = []

    fallback_path: Optional[Path] = None       # the standard variant, when model_path is the tuned copy
    variant: Optional[str] = None              # name of the transformer variant that runs

    def session_options(self):
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        options.enable_cpu_mem_arena = self.memory != "off"
        options.enable_mem_pattern = self.memory_pattern
        options.log_severity_level = 3          # errors only: the shape-fallback warnings are expected here
        if self.optimized_model_path:
            options.optimized_model_filepath = str(self.optimized_model_path)
        return options

    def _requested_providers(self) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        if not cuda_available():
            if self.device == "cuda":
                raise BackendError("device 'cuda' needs onnxruntime-gpu with the CUDA provider; "
                                   "pip install onnxruntime-gpu, or use --device cpu")
            return ["CPUExecutionProvider"]
        # Without the arena every allocation would hit cudaMalloc; on the GPU keep ONNX Runtime's default
        # arena but let it grow only by what a request needs.
        return [("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]

    def _activate(self) -> None:
        ort = _ort()
        if not self.model_path.is_file():
            raise BackendError(f"{self.model_path} does not exist")
        if self.verify and self.manifest is not None:
            verify_files(self.package, self.manifest, graph_files(self.manifest, self.model_path.name))
        requested = self._requested_providers()
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=self.session_options(),
                                                providers=requested)
        except Exception as err:  # onnxruntime raises its own exception types for bad or truncated models
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.fallback_path is None:
                raise BackendError(f"ONNX Runtime cannot load {self.model_path.name}: {first}") from err
            warnings.warn(f"ONNX Runtime {ort.__version__} cannot load {self.model_path.name} ({first}); "
                          f"running {self.fallback_path.name}", RuntimeWarning, stacklevel=2)
            self.model_path, self.fallback_path = self.fallback_path, None
            self.variant = next(v.name for v in self.manifest.transformer.all_variants()
                                if v.file == self.model_path.name)
            return self._activate()
        self.providers = self.session.get_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            self.session = None
            raise BackendError("the CUDA provider is installed but no usable GPU was found; use --device cpu")
        self.run_options = ort.RunOptions()
        if self.memory == "shrink":
            arenas = "cpu:0;gpu:0" if "CUDAExecutionProvider" in self.providers else "cpu:0"
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        self.inputs = {i.name: TensorInfo(i.name, _DTYPES.get(i.type, np.dtype(object)), tuple(i.shape))
                       for i in self.session.get_inputs()}
        self.outputs = {o.name: TensorInfo(o.name, _DTYPES.get(o.type, np.dtype(object)), tuple(o.shape))
                        for o in self.session.get_outputs()}

    def _deactivate(self) -> None:
        self.session = None
        self.run_options = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(None, feed, self.run_options)
        except Exception as err:  # onnxruntime's own types: allocation failures, shape errors, kernel failures
            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in feed.items())
            raise BackendError(f"ONNX Runtime failed running {self.model_path.name} on {shapes}: {first}") from err
        return dict(zip(self.outputs, values))
