"""Torch-free runtime for FiT model packages: RoPE tables, samplers, backends (ONNX Runtime, TensorRT).

``engines.load(path).generate(width=..., height=..., label=..., seed=...)`` is the embedding API
(engines/pipeline.py). Submodules load on first use so ``import engines.rope`` stays light.
"""

__all__ = ["load"]


def load(path=None, backend: str = "onnxruntime", verify: bool = True, precision=None, **backend_options):
    """Open a model package for generation; see :func:`engines.pipeline.load`."""
    from engines.pipeline import load as _load

    return _load(path, backend=backend, verify=verify, precision=precision, **backend_options)
