"""TensorRT backend: runs the transformer from engines built into the package by ``fit-export build``.

An engine is only valid for the ONNX graph, TensorRT version and GPU it was built with, so every engine file
``engines/<stem>.plan`` has a sidecar ``engines/<stem>.json`` (written last, after the plan, as the commit
marker of a build) recording them. This module owns that sidecar schema: the builder (``fit_export.tensorrt``)
writes it with :func:`write_sidecar`, and the backend refuses an engine whose sidecar does not match the package,
the installed TensorRT or the GPU, with a message that says to rebuild.

At run time each optimization profile (one per resolution bucket, ``engines.buckets``) gets its own execution
context; a call goes to the profile that holds it with the least padding and nearest opt
(:func:`engines.buckets.choose_profile`), padded up to the profile's minimum where needed (padding is masked).
Device buffers are allocated once per profile at its max shapes, so tensor addresses never change; for a
profile whose shapes are static the enqueue is captured once into a CUDA graph and replayed.

Needs ``tensorrt`` (10 or newer), ``cuda-python`` and an NVIDIA GPU; everything here imports without them, and
:func:`tensorrt_status` says which is missing. Imports neither torch nor anything that does.
"""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from engines.atomic import atomic_write
from engines.backend import Backend, BackendError, TensorInfo, package_path
from engines.buckets import BucketError, BucketProfile, Range, choose_profile
from engines.manifest import Manifest, PackageError, TensorSpec, load_manifest, sha256_file

SIDECAR_FORMAT = "fit-tensorrt-engine"
SIDECAR_VERSION = 1
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".plan"
PRECISIONS = ("fp32", "fp16", "bf16")


class EngineMismatchError(BackendError):
    """An engine does not fit this package, TensorRT or GPU; the message names the differences and the rebuild."""


# ----------------------------------------------------------------------------------------------------------
# What is installed
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "compute_capability": list(self.compute_capability)}


def _cudart():
    """cuda-python's runtime bindings (module layout changed in cuda-python 12.6), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def gpu_info(device: int = 0) -> Optional[GpuInfo]:
    """Name and compute capability of GPU ``device`` via cuda-python, else nvidia-smi; None when there is none."""
    cudart = _cudart()
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(device)
        if err == cudart.cudaError_t.cudaSuccess:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return GpuInfo(name.rstrip("\x00").strip(), (int(props.major), int(props.minor)))
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or "," not in out.stdout:
        return None
    name, cap = (s.strip() for s in out.stdout.strip().splitlines()[0].rsplit(",", 1))
    major, _, minor = cap.partition(".")
    return GpuInfo(name, (int(major), int(minor or 0))) if major.isdigit() else None


def tensorrt_version() -> Optional[str]:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def tensorrt_status(device: int = 0) -> list[str]:
    """What is missing for TensorRT here (empty when it can run): one phrase per missing piece."""
    missing = []
    version = tensorrt_version()
    if version is None:
        missing.append("the tensorrt Python package (pip install 'tensorrt>=10'; it needs NVIDIA's package index)")
    elif int(version.split(".")[0]) < 10:
        missing.append(f"TensorRT 10 or newer (found {version})")
    if _cudart() is None:
        missing.append("cuda-python (pip install cuda-python)")
    if gpu_info(device) is None:
        missing.append("an NVIDIA GPU with a working driver (none found)")
    return missing


def require_tensorrt(purpose: str, device: int = 0) -> None:
    """Raise BackendError naming everything missing for ``purpose`` (e.g. "building TensorRT engines")."""
    missing = tensorrt_status(device)
    if missing:
        raise BackendError(f"{purpose} needs {'; '.join(missing)}")


# ----------------------------------------------------------------------------------------------------------
# Engine files and sidecars
# ----------------------------------------------------------------------------------------------------------

def engine_stem(precision: str, bucket_name: Optional[str] = None) -> str:
    """``transformer.fp16`` (one engine, every bucket a profile) or ``transformer.fp16.t256`` (per bucket)."""
    return f"transformer.{precision}" + (f".{bucket_name}" if bucket_name else "")


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_suffix(".json")


@dataclass
class Sidecar:
    """What an engine was built from and for. ``profiles`` are in the engine's profile order."""

    engine: str                      # plan file name, relative to the package's engines/ directory
    engine_sha256: str
    engine_bytes: int
    onnx_file: str
    onnx_sha256: str
    tensorrt_version: str
    gpu: GpuInfo
    precision: str
    strongly_typed: bool
    profiles: list[BucketProfile]
    batch: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    build_seconds: Optional[float] = None
    created: str = ""
    build_id: str = ""               # shared by the engines of one per-bucket build

    def to_dict(self) -> dict:
        specs = [TensorSpec.from_dict(s) for s in self.inputs]
        return {
            "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
            "engine": {"file": self.engine, "sha256": self.engine_sha256, "bytes": self.engine_bytes},
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256},
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu.to_dict(),
            "precision": self.precision, "strongly_typed": self.strongly_typed,
            "batch": self.batch,
            "profiles": [p.to_dict(specs) for p in self.profiles],
            "inputs": self.inputs,
            "build_seconds": self.build_seconds,
            "created": self.created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_id": self.build_id,
        }

    @classmethod
    def from_dict(cls, doc: dict, source: str = "sidecar") -> "Sidecar":
        if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
            raise EngineMismatchError(f"{source} is not a TensorRT engine sidecar ({SIDECAR_FORMAT})")
        if doc.get("format_version") != SIDECAR_VERSION:
            raise EngineMismatchError(f"{source} has sidecar version {doc.get('format_version')!r}, this code reads "
                                      f"{SIDECAR_VERSION}; rebuild the engine with fit-export build")
        try:
            gpu = doc["gpu"]
            return cls(
                engine=doc["engine"]["file"], engine_sha256=doc["engine"]["sha256"],
                engine_bytes=int(doc["engine"]["bytes"]), onnx_file=doc["onnx"]["file"],
                onnx_sha256=doc["onnx"]["sha256"], tensorrt_version=str(doc["tensorrt_version"]),
                gpu=GpuInfo(str(gpu["name"]), tuple(int(v) for v in gpu["compute_capability"])),
                precision=doc["precision"], strongly_typed=bool(doc["strongly_typed"]),
                profiles=[BucketProfile.from_dict(p) for p in doc["profiles"]], batch=doc.get("batch", {}),
                inputs=doc.get("inputs", []), build_seconds=doc.get("build_seconds"),
                created=doc.get("created", ""), build_id=doc.get("build_id", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise EngineMismatchError(f"{source} is incomplete ({err!r}); rebuild the engine with fit-export build"
                                      ) from None


def write_sidecar(path: Path, sidecar: Sidecar) -> None:
    atomic_write(path, json.dumps(sidecar.to_dict(), indent=2) + "\n")


def read_sidecar(path: Path) -> Sidecar:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as err:
        raise EngineMismatchError(f"cannot read engine sidecar {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineMismatchError(f"engine sidecar {path} is not valid JSON ({err}); rebuild the engine") from None
    return Sidecar.from_dict(doc, str(path))


def find_sidecars(package: Path) -> list[tuple[Path, Sidecar]]:
    """Every engine sidecar under ``package/engines`` (sorted by name); unreadable ones raise."""
    directory = Path(package) / ENGINE_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict) and doc.get("format") == SIDECAR_FORMAT:
            found.append((path, Sidecar.from_dict(doc, str(path))))
    return found


def sidecar_mismatches(sidecar: Sidecar, *, onnx_sha256: str, trt_version: Optional[str] = None,
                       gpu: Optional[GpuInfo] = None, precision: Optional[str] = None) -> list[str]:
    """Reasons an engine cannot run here (empty when it can). A check is skipped when its value is None.

    TensorRT plans are tied to the exact TensorRT version and the GPU's compute capability; a different GPU
    model of the same compute capability runs but was tuned for another card, which is not refused.
    """
    reasons = []
    if sidecar.onnx_sha256 != onnx_sha256:
        reasons.append(f"it was built from another {sidecar.onnx_file} (sha256 {sidecar.onnx_sha256[:12]}…, the "
                       f"package has {onnx_sha256[:12]}…)")
    if trt_version is not None and sidecar.tensorrt_version != trt_version:
        reasons.append(f"it was built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {trt_version}")
    if gpu is not None and tuple(sidecar.gpu.compute_capability) != tuple(gpu.compute_capability):
        reasons.append(f"it was built for {sidecar.gpu.name} ({sidecar.gpu.sm}), this GPU is {gpu.name} ({gpu.sm})")
    if precision is not None and sidecar.precision != precision:
        reasons.append(f"it is {sidecar.precision}, {precision} was asked for")
    return reasons


def rebuild_command(package: Path, sidecars: Sequence[Sidecar]) -> str:
    """The ``fit-export build`` line that rebuilds engines like these for the current setup."""
    first = sidecars[0]
    entries = []
    for side in sidecars:
        for profile in side.profiles:
            bucket = profile.bucket
            entries.extend(f"{w}x{h}" for w, h in bucket.sizes) if bucket.sizes else entries.append(str(bucket.tokens))
    images = first.batch.get("images") or [1, 1, 1]
    batch = f"{images[0]}:{images[1]}:{images[2]}"
    parts = [f"fit-export build {package}", f"--profiles {','.join(dict.fromkeys(entries))}",
             f"--precision {first.precision}", f"--batch {batch}"]
    if first.batch.get("cfg") is False:
        parts.append("--no-cfg")
    if len(sidecars) > 1:
        parts.append("--engine-per-bucket")
    if all(p.seq.is_static for s in sidecars for p in s.profiles):
        parts.append("--static")
    return " ".join(parts)


def select_engines(package: Path, manifest: Manifest, *, precision: Optional[str] = None,
                   trt_version: Optional[str] = None, gpu: Optional[GpuInfo] = None) -> list[tuple[Path, Sidecar]]:
    """The engines of one build in ``package`` that match the package, TensorRT, GPU and precision.

    Prefers the newest matching build. Raises EngineMismatchError when there are none or none match, naming
    why and the command that rebuilds them.
    """
    package = Path(package)
    found = find_sidecars(package)
    onnx_name = manifest.transformer.file
    if not found:
        raise EngineMismatchError(f"package {package} has no TensorRT engines; build them on this machine with "
                                  f"`fit-export build {package} --profiles ...` (see docs/tensorrt.md)")
    onnx_sha = manifest.files[onnx_name].sha256
    builds: dict[str, list[tuple[Path, Sidecar]]] = {}
    for path, side in found:
        builds.setdefault(side.build_id or path.name, []).append((path, side))
    rejected = []
    for build in sorted(builds.values(), key=lambda b: b[0][1].created, reverse=True):
        reasons = sorted({r for _, side in build for r in sidecar_mismatches(
            side, onnx_sha256=onnx_sha, trt_version=trt_version, gpu=gpu, precision=precision)})
        if not reasons:
            return build
        rejected.append((build, reasons))
    build, reasons = rejected[0]
    names = ", ".join(p.name for p, _ in build)
    raise EngineMismatchError(f"TensorRT engine {names} cannot run here: {'; '.join(reasons)}. Rebuild it: "
                              f"{rebuild_command(package, [s for _, s in build])}")


def verify_engine_file(path: Path, sidecar: Sidecar, check_hash: bool = True) -> None:
    if not path.is_file():
        raise EngineMismatchError(f"engine {path} is missing (its sidecar exists); rebuild with fit-export build")
    if path.stat().st_size != sidecar.engine_bytes or (check_hash and sha256_file(path) != sidecar.engine_sha256):
        raise EngineMismatchError(f"engine {path} does not match its sidecar (truncated or replaced); "
                                  f"rebuild with fit-export build")


# ----------------------------------------------------------------------------------------------------------
# CUDA helpers (cuda-python)
# ----------------------------------------------------------------------------------------------------------

class _Cuda:
    """The handful of CUDA runtime calls the backend makes, with errors turned into BackendError."""

    def __init__(self):
        self.rt = _cudart()
        if self.rt is None:
            raise BackendError("the TensorRT backend needs cuda-python (pip install cuda-python)")

    def check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self):
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def to_device(self, dst: int, array: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, kind, stream), "copy to device")

    def to_host(self, array: np.ndarray, src: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, kind, stream), "copy to host")

    def synchronize(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


# ----------------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Slot:
    """One optimization profile of one engine: its context, device buffers and, if static, its CUDA graph."""

    engine: object
    profile: int
    batch: Range
    seq: Range
    context: object = None
    buffers: dict = field(default_factory=dict)      # tensor name -> device pointer (sized for max shapes)
    shapes: dict = field(default_factory=dict)       # tensor name -> shape last set
    graph: object = None
    graph_exec: object = None
    graph_failed: bool = False

    @property
    def is_static(self) -> bool:
        return self.batch.is_static and self.seq.is_static


def _pad(array: np.ndarray, batch: int, seq: Optional[int]) -> np.ndarray:
    """Zero-pad axis 0 to ``batch`` and (for rank >= 2) axis 1 to ``seq``. Zero mask = padding token/row."""
    pads = [(0, batch - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    if array.ndim >= 2 and seq is not None:
        pads[1] = (0, seq - array.shape[1])
    return np.pad(array, pads) if any(p[1] for p in pads) else array


class TensorRTBackend(Backend):
    """Runs the transformer graph from TensorRT engines in the package.

    precision: pick the engine of this precision (fp32/fp16/bf16); default: the newest matching build
    cuda_graphs: capture and replay CUDA graphs for profiles with static shapes
    verify: check the engine file's sha256 against its sidecar before loading (size is always checked)
    device: CUDA device index
    """

    name = "tensorrt"

    def __init__(self, package, *, manifest: Optional[Manifest] = None, precision: Optional[str] = None,
                 cuda_graphs: bool = True, verify: bool = True, device: int = 0, graph: str = "transformer"):
        super().__init__()
        if graph != "transformer":
            raise BackendError("the TensorRT backend runs the transformer only; decode the VAE with onnxruntime")
        if precision is not None and precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.package = package_path(package)
        try:
            self.manifest = manifest if manifest is not None else load_manifest(self.package, verify=False)
        except PackageError as err:
            raise BackendError(str(err)) from None
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.verify = verify
        self.device = device
        self.null_class = self.manifest.model.null_class
        self.sidecars: list[tuple[Path, Sidecar]] = []
        self._slots: list[_Slot] = []
        self._engines: list = []
        self._cuda: Optional[_Cuda] = None
        self._stream = None
        self._runtime = None
        self._logger = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        require_tensorrt("the TensorRT backend", self.device)
        import tensorrt as trt

        self._cuda = _Cuda()
        self._cuda.check(self._cuda.rt.cudaSetDevice(self.device), "cudaSetDevice")
        self.sidecars = select_engines(self.package, self.manifest, precision=self.precision,
                                       trt_version=trt.__version__, gpu=gpu_info(self.device))
        self.precision = self.sidecars[0][1].precision
        self._stream = self._cuda.stream()
        self._logger = trt.Logger(trt.Logger.WARNING)                 # must outlive the runtime and engines
        self._runtime = trt.Runtime(self._logger)
        try:
            for path, side in self.sidecars:
                engine_path = path.parent / side.engine
                verify_engine_file(engine_path, side, self.verify)
                engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
                if engine is None:
                    raise EngineMismatchError(f"TensorRT could not load {engine_path}; rebuild it: "
                                              f"{rebuild_command(self.package, [s for _, s in self.sidecars])}")
                self._engines.append(engine)
                for index in range(engine.num_optimization_profiles):
                    lo, opt, hi = engine.get_tensor_profile_shape("x", index)
                    self._slots.append(_Slot(engine, index, Range(lo[0], opt[0], hi[0]), Range(lo[1], opt[1], hi[1])))
            self._describe_io(trt, self._engines[0])
        except BaseException:
            self._deactivate()
            raise

    def _describe_io(self, trt, engine) -> None:
        contract = self.manifest.graph
        specs = {s.name: s for s in contract.inputs + contract.outputs}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            info = TensorInfo(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                              specs[name].shape if name in specs else tuple(engine.get_tensor_shape(name)))
            target = self.inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs
            target[name] = info

    def _deactivate(self) -> None:
        cuda = self._cuda
        for slot in self._slots:
            if slot.graph_exec is not None:
                cuda.rt.cudaGraphExecDestroy(slot.graph_exec)
            if slot.graph is not None:
                cuda.rt.cudaGraphDestroy(slot.graph)
            for ptr in slot.buffers.values():
                cuda.free(ptr)
            slot.context = None
        self._slots, self._engines = [], []
        if self._stream is not None:
            cuda.rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._runtime = None

    # -- inference ------------------------------------------------------------------------------------------
    def profile_ranges(self) -> list[tuple[Range, Range]]:
        """(batch, seq) range of every profile, in the order calls are matched against them."""
        return [(s.batch, s.seq) for s in self._slots]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch, seq = feed["x"].shape[:2]
        try:
            choice = choose_profile(self.profile_ranges(), batch, seq)
        except BucketError as err:
            raise BackendError(str(err)) from None
        slot = self._slots[choice.index]
        self._prepare(slot)
        arrays = {}
        for name, info in self.inputs.items():
            array = np.asarray(feed[name])
            if array.dtype != info.dtype:
                array = array.astype(info.dtype)
            if name == "y":
                array = np.concatenate([array, np.full(choice.batch - batch, self.null_class, array.dtype)])
            else:
                array = _pad(array, choice.batch, choice.seq)
            arrays[name] = np.ascontiguousarray(array)
        stream = self._stream
        reshaped = False
        for name, array in arrays.items():
            if slot.shapes.get(name) != array.shape:
                if not slot.context.set_input_shape(name, array.shape):
                    raise BackendError(f"TensorRT refused shape {array.shape} for input {name!r}")
                slot.shapes[name] = array.shape
                reshaped = True
            self._cuda.to_device(slot.buffers[name], array, stream)
        self._enqueue(slot, reshaped)
        outputs = {}
        for name, info in self.outputs.items():
            shape = tuple(slot.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=info.dtype)
            self._cuda.to_host(host, slot.buffers[name], stream)
            outputs[name] = host
        self._cuda.synchronize(stream)
        return {name: out[:batch, :seq] if out.ndim >= 2 else out[:batch] for name, out in outputs.items()}

    def _prepare(self, slot: _Slot) -> None:
        """Create the slot's context on first use and give every tensor a buffer sized for the profile max."""
        if slot.context is not None:
            return
        import tensorrt as trt

        engine = slot.engine
        # One context per profile: let each allocate activation memory for its own profile only.
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "ON_PROFILE_CHANGE", None)
        context = engine.create_execution_context(strategy) if strategy is not None else \
            engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        if not context.set_optimization_profile_async(slot.profile, int(self._stream)):
            raise BackendError(f"TensorRT could not select optimization profile {slot.profile}")
        max_shapes = {}
        for name in self.inputs:
            max_shapes[name] = tuple(engine.get_tensor_profile_shape(name, slot.profile)[2])
            context.set_input_shape(name, max_shapes[name])
        for name in self.outputs:
            max_shapes[name] = tuple(context.get_tensor_shape(name))
        for name, shape in max_shapes.items():
            itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
            slot.buffers[name] = self._cuda.malloc(int(np.prod(shape)) * itemsize)
            context.set_tensor_address(name, slot.buffers[name])
        slot.shapes = {name: max_shapes[name] for name in self.inputs}
        slot.context = context

    def _enqueue(self, slot: _Slot, reshaped: bool) -> None:
        """Run the slot's context; for static profiles through a CUDA graph captured on the second call (the
        first enqueue after a shape change does TensorRT's lazy setup, which must not be captured)."""
        rt, stream = self._cuda.rt, self._stream
        if slot.graph_exec is not None:
            self._cuda.check(rt.cudaGraphLaunch(slot.graph_exec, stream), "cudaGraphLaunch")
            return
        if not slot.context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT inference failed (see the TensorRT log above)")
        if not (self.cuda_graphs and slot.is_static) or slot.graph_failed or reshaped:
            return
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        try:
            self._cuda.synchronize(stream)
            self._cuda.check(rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            ok = slot.context.execute_async_v3(int(stream))
            slot.graph = self._cuda.check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not ok:
                raise BackendError("TensorRT enqueue failed during CUDA graph capture")
            slot.graph_exec = self._cuda.check(rt.cudaGraphInstantiate(slot.graph, 0), "cudaGraphInstantiate")
        except BackendError:
            # Some engines (data-dependent shapes, certain plugins) cannot be captured; run them eagerly.
            slot.graph_failed = True
            if slot.graph is not None:
                rt.cudaGraphDestroy(slot.graph)
                slot.graph = None
