"""A simulated TensorRT + CUDA runtime for the TensorRT tests that need no GPU: "device" memory is host memory, an
engine is ONNX Runtime on the package graph, and a context only sees what was bound to it by address, shape and
profile."""
import ctypes
import json
import types

import numpy as np
import pytest

from engines.backends.tensorrt.install import GpuInfo
from tests.runtime_helpers import copy_package, tiny_package

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The tiny exported package (shared by a module's tests; copy it before changing it)."""
    return tiny_package(tmp_path_factory)[0]


@pytest.fixture
def own_package(package, tmp_path):
    """A test's own copy of the tiny package."""
    return copy_package(package, tmp_path / "pkg")
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


class FakeCudart:
    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, gpu=H100, driver=12080, runtime=12080):
        self.gpu, self.memory, self.capturing, self.launches = gpu, {}, None, 0
        self.driver, self.runtime = driver, runtime

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=self.gpu.name.encode(), major=self.gpu.compute_capability[0],
                                        minor=self.gpu.compute_capability[1])

    def cudaDriverGetVersion(self):
        return 0, self.driver

    def cudaRuntimeGetVersion(self):
        return 0, self.runtime

    def cudaSetDevice(self, device):
        return (0,)

    def cudaMalloc(self, nbytes):
        buffer = np.zeros(nbytes, np.uint8)
        self.memory[buffer.ctypes.data] = buffer
        return 0, buffer.ctypes.data

    def cudaFree(self, ptr):
        self.memory.pop(ptr)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert self.capturing is None, "copies must stay outside the captured graph"
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in graph_exec:
            op()
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)


def fake_tensorrt(cudart, version="10.15.1"):
    """A module with the slice of the TensorRT 10 API the backend uses; engines are JSON plans run by ORT."""
    import onnxruntime

    trt = types.SimpleNamespace(__version__=version, executed=[])
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(ON_PROFILE_CHANGE="per-profile")
    trt.nptype = lambda dtype: _NP[dtype]
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    class Context:
        def __init__(self, engine):
            self.engine, self.profile, self.shapes, self.addresses = engine, None, {}, {}

        def set_optimization_profile_async(self, index, stream):
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            if name == "v":
                b, n, _ = self.shapes["x"]
                return (b, n, self.engine.out_dim)
            return self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def _view(self, name, shape, dtype):
            count = int(np.prod(shape))
            raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

        def _run(self):
            feed = {n: self._view(n, self.shapes[n], _NP[d]).copy() for n, d in self.engine.dtypes.items() if n != "v"}
            out = self.engine.session.run(None, feed)[0]
            self._view("v", out.shape, out.dtype)[...] = out
            trt.executed.append((self.engine.name, self.profile, self.shapes["x"][:2]))

        def execute_async_v3(self, stream):
            if cudart.capturing is not None:
                cudart.capturing.append(self._run)
            else:
                self._run()
            return True

    class Engine:
        def __init__(self, plan):
            self.name, self.profiles, self.dtypes = plan["name"], plan["profiles"], plan["dtypes"]
            self.out_dim = plan["out_dim"]
            self.session = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.num_optimization_profiles = len(self.profiles)
            self.num_io_tensors = len(self.dtypes)

        def get_tensor_profile_shape(self, name, index):
            shapes = self.profiles[index][name]
            return shapes["min"], shapes["opt"], shapes["max"]

        def get_tensor_name(self, i):
            return list(self.dtypes)[i]

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_mode(self, name):
            return "out" if name == "v" else "in"

        def create_execution_context(self, strategy=None):
            assert strategy == "per-profile"
            return Context(self)

    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine(json.loads(data))})
    return trt
