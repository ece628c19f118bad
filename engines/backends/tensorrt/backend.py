"""TensorRT backend: runs the transformer from engines built into the package by ``fit-export build``.

The engines come from the package's engine store (:mod:`engines.backends.tensorrt.store`: sidecars, matching, the rebuild
line), what is installed from :mod:`engines.backends.tensorrt.install`, the CUDA calls from :mod:`engines.backends.tensorrt.cuda`.

At run time each optimization profile (one per resolution bucket, ``engines.buckets``) gets its own execution
context; a call goes to the profile that holds it with the least padding and nearest opt
(:func:`engines.buckets.choose_profile`), padded up to the profile's minimum where needed (:func:`pad_feed`;
padding is masked). Device buffers are allocated once per profile at its max shapes, so tensor addresses never
change; for a profile whose shapes are static the enqueue is captured once into a CUDA graph and replayed.

Needs TensorRT 10 or 11, cuda-python and an NVIDIA GPU; everything here imports without them, and
:func:`engines.backends.tensorrt.install.tensorrt_status` says which is missing. Imports neither torch nor anything that does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from engines.backends import Backend, TensorInfo, package_path
from engines.backends.tensorrt.cuda import Cuda
from engines.buckets import BucketError, Range, choose_profile
from engines.errors import BackendError, PackageError
from engines.manifest import Manifest
from engines.package import load_manifest
from engines.backends.tensorrt.store import (PRECISIONS, QDQ_PRECISIONS, TYPED_PRECISIONS, EngineMismatchError, Sidecar,
                                             qdq_variant, rebuild_command, select_engines, verify_engine_file)
from engines.backends.tensorrt.install import gpu_info, require_tensorrt


def pad_feed(feed: dict[str, np.ndarray], batch: int, seq: int, null_class: int) -> dict[str, np.ndarray]:
    """Pad a graph feed up to ``batch`` rows and ``seq`` tokens: new rows and tokens are zeros (mask 0, so
    masked out), new labels are the null class. Arrays already of that size are returned as they are."""
    out = {}
    for name, array in feed.items():
        array = np.asarray(array)
        rows = batch - array.shape[0]
        if name == "y":
            padded = np.concatenate([array, np.full(rows, null_class, array.dtype)]) if rows else array
        else:
            pads = [(0, rows)] + [(0, 0)] * (array.ndim - 1)
            if array.ndim >= 2:
                pads[1] = (0, seq - array.shape[1])
            padded = np.pad(array, pads) if any(p[1] for p in pads) else array
        out[name] = padded
    return out


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


class TensorRTBackend(Backend):
    """Runs the transformer graph from TensorRT engines in the package.

    precision: pick the engine of this precision (fp32/fp16/bf16, or int8/fp8 built from the package's Q/DQ
        variant; its name, ``trt-int8``, works too); default: the newest matching build
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
        self.package = package_path(package)
        try:
            self.manifest = manifest if manifest is not None else load_manifest(self.package, verify=False)
        except PackageError as err:
            raise BackendError(str(err)) from None
        transformer = self.manifest.transformer
        engine_source = (f"built from {transformer.file} in {', '.join(TYPED_PRECISIONS)}, or from a Q/DQ variant in "
                         f"{', '.join(QDQ_PRECISIONS)}")
        if precision is not None and precision not in PRECISIONS:
            named = next((v for v in transformer.all_variants() if v.name == precision), None)
            if named is not None and named.runtime == self.name:
                precision = named.precision                       # trt-int8 -> int8: the engines built from it
            elif named is not None:
                raise BackendError(f"TensorRT does not run the transformer variant {precision!r}: its engines are "
                                   f"{engine_source}; choose --precision {'|'.join(PRECISIONS)} or another backend")
            else:
                raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        default = transformer.default
        if precision is None and default.runtime == self.name:
            precision = default.precision
        elif precision is None and default.precision not in TYPED_PRECISIONS:
            # Every runtime honours the manifest's default variant (one seed, one image): an engine would not.
            raise BackendError(f"the package's default transformer variant is {default.name!r} ({default.precision}), "
                               f"which TensorRT does not run (its engines are {engine_source}); run it on "
                               f"onnxruntime, or choose an engine with --precision {'|'.join(PRECISIONS)}")
        self.variant = transformer.base.name          # what the engines were built from (set from their sidecar)
        if precision in QDQ_PRECISIONS:
            self.variant = qdq_variant(transformer, precision, self.package).name     # refused when there is none
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.verify = verify
        self.device = device
        self.null_class = self.manifest.model.null_class
        self.sidecars: list[tuple[Path, Sidecar]] = []
        self._slots: list[_Slot] = []
        self._engines: list = []
        self._cuda: Optional[Cuda] = None
        self._stream = None
        self._runtime = None
        self._logger = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        require_tensorrt("the TensorRT backend", self.device)
        import tensorrt as trt

        self._cuda = Cuda()
        self._cuda.set_device(self.device)
        self.sidecars = select_engines(self.package, self.manifest, precision=self.precision,
                                       trt_version=trt.__version__, gpu=gpu_info(self.device))
        self.precision = self.sidecars[0][1].precision
        self.variant = self.sidecars[0][1].variant or self.variant
        self._stream = self._cuda.stream()
        self._logger = trt.Logger(trt.Logger.WARNING)                 # must outlive the runtime and engines
        trt.init_libnvinfer_plugins(self._logger, "")                 # engines may hold TensorRT's own plugins
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
                cuda.destroy_graph_exec(slot.graph_exec)
            if slot.graph is not None:
                cuda.destroy_graph(slot.graph)
            for ptr in slot.buffers.values():
                cuda.free(ptr)
            slot.context = None
        self._slots, self._engines = [], []
        if self._stream is not None:
            cuda.destroy_stream(self._stream)
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
        arrays = {name: np.asarray(feed[name], dtype=info.dtype) for name, info in self.inputs.items()}
        arrays = {name: np.ascontiguousarray(array) for name, array in
                  pad_feed(arrays, choice.batch, choice.seq, self.null_class).items()}
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
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
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
        cuda, stream = self._cuda, self._stream
        if slot.graph_exec is not None:
            cuda.launch(slot.graph_exec, stream)
            return
        if not slot.context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT inference failed (see the TensorRT log above)")
        if not (self.cuda_graphs and slot.is_static) or slot.graph_failed or reshaped:
            return
        try:
            cuda.synchronize(stream)
            cuda.begin_capture(stream)
            ok = slot.context.execute_async_v3(int(stream))
            slot.graph = cuda.end_capture(stream)
            if not ok:
                raise BackendError("TensorRT enqueue failed during CUDA graph capture")
            slot.graph_exec = cuda.instantiate(slot.graph)
        except BackendError:
            # Some engines (data-dependent shapes, certain plugins) cannot be captured; run them eagerly.
            slot.graph_failed = True
            if slot.graph is not None:
                cuda.destroy_graph(slot.graph)
                slot.graph = None
