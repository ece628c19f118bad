"""Where the toolkit keeps what it can rebuild: ``$XDG_CACHE_HOME/fit-toolkit/KIND`` (default ``~/.cache``).

Kinds in use: ``openvino`` (compiled models), ``tensorrt`` (TensorRT timing caches), ``web`` (the npm prefix
fit-web looks in for onnxruntime-web).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder of ``kind`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fit-toolkit" / kind
