"""OpenVINO backend (optional extra ``openvino``): runs a package's ONNX transformer graph with OpenVINO on the CPU.

OpenVINO reads the package's ONNX files directly (no second export). What it computes in is chosen per session:

- ``f32`` (also spelled ``fp32``): float32 throughout. Set explicitly, because OpenVINO's CPU plugin otherwise
  computes in bf16 on CPUs that have it;
- ``bf16``: the fp32 graph with OpenVINO's inference precision hint ``bf16`` (matrix products in bfloat16 with
  float32 accumulation); only on a CPU whose ``OPTIMIZATION_CAPABILITIES`` list ``BF16`` (AVX512-BF16 or AMX),
  refused elsewhere with the reason;
- a transformer variant the package holds (``int8``, or its name), chosen by the manifest's rules
  (docs/package-format.md, *Variants*); variants made for ONNX Runtime only are never run here.

``f32`` and ``bf16`` run the package's OpenVINO-tuned copy of the fp32 graph when it has one (the variant ``ov``,
``fit-export ov-optimize``: the RoPE rotation as one MatMul, the same numbers), else ``transformer.onnx``.

Compiled models are cached (OpenVINO's ``CACHE_DIR``; default ``$XDG_CACHE_HOME/fit-toolkit/openvino`` or
``~/.cache/fit-toolkit/openvino``), so a second process opening the same package skips the compilation.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from engines.backends import Backend, TensorInfo, graph_file
from engines.cache import cache_dir
from engines.errors import BackendError, PackageError
from engines.manifest import Manifest, graph_files
from engines.package import load_manifest, verify_files

#: what the session computes in -> OpenVINO's INFERENCE_PRECISION_HINT
COMPUTE_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
_SPELLINGS = {"f32": "fp32", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}


def _openvino():
    try:
        import openvino
    except ImportError as err:
        raise BackendError("OpenVINO is not installed; pip install 'fit-toolkit[openvino]' (or pip install "
                           "openvino)") from err
    return openvino


def default_cache_dir() -> Path:
    return cache_dir("openvino")


def bf16_support(core=None, device: str = "CPU") -> tuple[bool, str]:
    """(whether ``device`` computes in bf16 natively, the device's OPTIMIZATION_CAPABILITIES as text)."""
    core = core or _openvino().Core()
    capabilities = [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    return "BF16" in capabilities, ", ".join(capabilities)


class OpenVinoBackend(Backend):
    """Runs one graph of a package (``graph="transformer"`` or ``"vae_decoder"``) as an OpenVINO compiled model.

    precision: ``f32``/``fp32``, ``bf16``, a variant name or precision the package holds (``int8``), or None for
        the manifest's default variant computed in f32
    device: OpenVINO device name (``CPU``; ``GPU``/``NPU`` where OpenVINO has them)
    threads: inference threads (0 = OpenVINO's choice)
    cache: keep compiled models in ``cache_dir`` (default :func:`default_cache_dir`)
    ov_optimized: among the variants of that precision prefer the one tuned for OpenVINO (``fit-export
        ov-optimize``, the variant ``ov``); False runs the standard graph
    """

    name = "openvino"

    def __init__(self, package, *, manifest: Optional[Manifest] = None, graph: str = "transformer", verify: bool = True,
                 precision: Optional[str] = None, device: str = "CPU", threads: int = 0, cache: bool = True,
                 cache_dir: Optional[str] = None, ov_optimized: bool = True):
        super().__init__()
        if int(threads) < 0:
            raise BackendError(f"threads must be 0 (automatic) or positive, got {threads}")
        self.package, self.verify = Path(package), verify
        self.manifest = manifest if manifest is not None else load_manifest(package, verify=False)
        self.graph, self.device, self.threads = graph, device.upper(), int(threads)
        self.cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) if cache else None
        compute = _SPELLINGS.get(str(precision).lower()) if precision is not None else None
        self.compute_precision = compute or "fp32"
        self.model_path = graph_file(self.package, self.manifest, graph)
        if graph == "transformer":
            wanted = "fp32" if compute is not None else precision
            try:
                variant = self.manifest.transformer.select(self.name, wanted, tuned=ov_optimized)
            except PackageError as err:
                raise BackendError(str(err)) from None
            if compute == "bf16" and variant.precision != "fp32":
                raise BackendError("bf16 runs the fp32 graph; the package has no fp32 variant OpenVINO can run")
            self.variant, self.model_path = variant.name, self.package / variant.file
            self.precision = "bf16" if compute == "bf16" else variant.precision
        self.compiled = None
        self.request = None
        self.compile_seconds: Optional[float] = None

    variant: Optional[str] = None

    def _config(self, core) -> dict:
        config = {"INFERENCE_PRECISION_HINT": COMPUTE_PRECISIONS[self.compute_precision],
                  "PERFORMANCE_HINT": "LATENCY"}
        if self.compute_precision == "bf16":
            supported, capabilities = bf16_support(core, self.device)
            if not supported:
                raise BackendError(f"bf16 needs a {self.device} with native bfloat16 (AVX512-BF16 or AMX); OpenVINO "
                                   f"reports OPTIMIZATION_CAPABILITIES {capabilities}; use --precision f32")
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(self.cache_dir)
            except OSError as err:
                warnings.warn(f"OpenVINO model cache off: cannot create {self.cache_dir} ({err.strerror})",
                              RuntimeWarning, stacklevel=3)
        return config

    def _activate(self) -> None:
        import time

        ov = _openvino()
        if not self.model_path.is_file():
            raise BackendError(f"{self.model_path} does not exist")
        if self.verify:
            verify_files(self.package, self.manifest, graph_files(self.manifest, self.model_path.name))
        core = ov.Core()
        if self.device not in core.available_devices:
            raise BackendError(f"OpenVINO has no device {self.device!r} here (available: "
                               f"{', '.join(core.available_devices)})")
        config = self._config(core)
        start = time.perf_counter()
        try:
            self.compiled = core.compile_model(str(self.model_path), self.device, config)
        except Exception as err:        # OpenVINO raises RuntimeError subclasses for unreadable or unsupported models
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendError(f"OpenVINO cannot compile {self.model_path.name}: {first}") from err
        self.compile_seconds = time.perf_counter() - start
        self.request = self.compiled.create_infer_request()
        self.inputs = {p.get_any_name(): _info(p) for p in self.compiled.inputs}
        self.outputs = {p.get_any_name(): _info(p) for p in self.compiled.outputs}

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.request.infer(feed)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendError(f"OpenVINO inference failed: {first}") from err
        return {port.get_any_name(): np.array(value, copy=True) for port, value in results.items()}


def _info(port) -> TensorInfo:
    shape = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
    return TensorInfo(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()), shape)
