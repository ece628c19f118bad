"""What is installed for TensorRT: the tensorrt package, cuda-python, a driver that can run them, and the GPU.

:func:`tensorrt_status` lists what is missing (empty when TensorRT can run here); the GPU tests skip with that
list as the reason and ``fit-export build`` / the backend refuse with it. Imports neither TensorRT nor torch.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from engines.backends.tensorrt import cuda as cuda_runtime
from engines.errors import BackendError

SUPPORTED_MAJORS = (10, 11)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "compute_capability": list(self.compute_capability)}


def gpu_info(device: int = 0) -> Optional[GpuInfo]:
    """Name and compute capability of CUDA device ``device`` (cuda-python, else nvidia-smi); None when unknown."""
    rt = cuda_runtime.cudart()
    if rt is not None:
        err, props = rt.cudaGetDeviceProperties(device)
        if err == rt.cudaError_t.cudaSuccess:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return GpuInfo(name.rstrip("\x00").strip(), (int(props.major), int(props.minor)))
    return _nvidia_smi_gpu(device)


def _nvidia_smi_gpu(device: int) -> Optional[GpuInfo]:
    """CUDA device ``device`` from nvidia-smi, only where its order is CUDA's.

    nvidia-smi lists GPUs in PCI bus order; CUDA numbers them fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID,
    and only those in CUDA_VISIBLE_DEVICES. So the answer is given when every visible GPU is the same model, or
    when CUDA uses PCI order (then CUDA_VISIBLE_DEVICES, by index or UUID, picks from nvidia-smi's list).
    """
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not re.fullmatch(r"\d+\.\d+", parts[3]):
            continue
        major, minor = parts[3].split(".")
        gpus.append((parts[0], parts[1], GpuInfo(parts[2], (int(major), int(minor)))))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        chosen = []
        for entry in wanted:
            match = [g for g in gpus if g[0] == entry or g[1].startswith(entry)]
            if not match:
                break                                     # CUDA ignores this entry and every one after it
            chosen.append(match[0])
        gpus = chosen
    if device >= len(gpus):
        return None
    if len({g[2] for g in gpus}) == 1 or os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        return gpus[device][2]
    return None


def tensorrt_version() -> Optional[str]:
    """The installed TensorRT's version; None when it is absent or cannot load its libraries."""
    try:
        import tensorrt
    except (ImportError, OSError):          # OSError: the bindings are there, libnvinfer is not
        return None
    return str(tensorrt.__version__)


def _installed_cuda_majors() -> dict[str, int]:
    """CUDA major of the installed TensorRT and cuda-python wheels, by what their distribution names say."""
    found = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        match = re.fullmatch(r"tensorrt-cu(\d+)(-libs|-bindings)?", name)
        if match:
            found["tensorrt"] = int(match.group(1))
        elif name in ("cuda-bindings", "cuda-python") and dist.version[:2].rstrip(".").isdigit():
            found.setdefault("cuda-python", int(dist.version.split(".")[0]))
    return found


def tensorrt_status(device: int = 0) -> list[str]:
    """What is missing for TensorRT here (empty when it can run): one phrase per missing piece."""
    missing = []
    version = tensorrt_version()
    if version is None:
        missing.append("the tensorrt Python package (pip install 'fit-toolkit[tensorrt-cu12]' or '[tensorrt-cu13]')")
    elif int(version.split(".")[0]) not in SUPPORTED_MAJORS:
        missing.append(f"TensorRT {' or '.join(map(str, SUPPORTED_MAJORS))} (found {version})")
    rt = cuda_runtime.cudart()
    if rt is None:
        missing.append("cuda-python (pip install 'fit-toolkit[tensorrt-cu12]' or '[tensorrt-cu13]')")
    else:
        majors = _installed_cuda_majors()
        if len(set(majors.values())) > 1:
            missing.append(f"TensorRT and cuda-python built for the same CUDA major (tensorrt is for CUDA "
                           f"{majors['tensorrt']}, cuda-python for CUDA {majors['cuda-python']})")
        problem = cuda_runtime.driver_problem(rt)
        if problem:
            missing.append(f"a driver that runs the CUDA bindings: {problem}")
    if gpu_info(device) is None:
        missing.append("an NVIDIA GPU with a working driver (none found)")
    return missing


def require_tensorrt(purpose: str, device: int = 0) -> None:
    """Raise BackendError naming everything missing for ``purpose`` (e.g. "building TensorRT engines")."""
    missing = tensorrt_status(device)
    if missing:
        raise BackendError(f"{purpose} needs {'; '.join(missing)}")
