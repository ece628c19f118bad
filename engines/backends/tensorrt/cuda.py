"""The CUDA runtime calls the TensorRT backend makes, through cuda-python (no torch, no CuPy).

:func:`cudart` imports cuda-python's runtime bindings (``cuda.bindings.runtime`` since cuda-python 12.6,
``cuda.cudart`` before), :func:`driver_problem` says when the installed NVIDIA driver is too old for them (a
cuda-python 13 binding on a CUDA 12 driver answers every call with ``cudaErrorInsufficientDriver``), and
:class:`Cuda` wraps the handful of calls the backend uses, turning error codes into BackendError.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from engines.errors import BackendError


def cudart():
    """cuda-python's runtime bindings module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            return None
    return runtime


def cuda_version_text(version: int) -> str:
    """12040 -> "12.4" (the encoding of cudaDriverGetVersion / cudaRuntimeGetVersion)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_problem(rt=None) -> Optional[str]:
    """Why the NVIDIA driver cannot run the installed cuda-python bindings (None when it can).

    The driver reports the newest CUDA it supports (cudaDriverGetVersion); the bindings report the CUDA
    version they were built for (cudaRuntimeGetVersion). CUDA's minor-version compatibility lets a driver run
    any runtime of its own major version, so the majors are compared.
    """
    rt = rt or cudart()
    if rt is None:
        return "cuda-python is not installed"
    err, driver = rt.cudaDriverGetVersion()
    if err != rt.cudaError_t.cudaSuccess:
        return f"cudaDriverGetVersion failed ({err})"
    if driver == 0:
        return "no NVIDIA driver is loaded"
    err, runtime = rt.cudaRuntimeGetVersion()
    if err != rt.cudaError_t.cudaSuccess:
        return f"cudaRuntimeGetVersion failed ({err})"
    if driver // 1000 < runtime // 1000:
        major = driver // 1000
        return (f"the NVIDIA driver supports CUDA {cuda_version_text(driver)} but the installed cuda-python needs "
                f"CUDA {cuda_version_text(runtime)}: install the CUDA {major} build (pip install "
                f"'fit-toolkit[tensorrt-cu{major}]') or a newer driver")
    return None


class Cuda:
    """The CUDA runtime calls of the backend, with errors turned into BackendError."""

    def __init__(self):
        self.rt = cudart()
        if self.rt is None:
            raise BackendError("the TensorRT backend needs cuda-python (pip install 'fit-toolkit[tensorrt-cu12]' "
                               "or '[tensorrt-cu13]')")

    def check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def set_device(self, device: int) -> None:
        self.check(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self):
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def destroy_stream(self, stream) -> None:
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def to_device(self, dst: int, array: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, kind, stream), "copy to device")

    def to_host(self, array: np.ndarray, src: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, kind, stream), "copy to host")

    def synchronize(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def begin_capture(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        return self.check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def instantiate(self, graph):
        return self.check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec, stream) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph) -> None:
        self.rt.cudaGraphDestroy(graph)

    def destroy_graph_exec(self, graph_exec) -> None:
        self.rt.cudaGraphExecDestroy(graph_exec)
