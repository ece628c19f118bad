"""FiTv2-XL export (random weights) keeps its weights in external data. Slow: run with ``pytest -m slow``.
(``benchmarks/export_xl.py`` measures the same export's time, sizes and memory.)"""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_fitv2_xl_export_uses_external_data(tmp_path):
    import torch

    from fit.config import preset
    from fit.model import FiT, parameter_count
    from fit_export import export_package

    torch.manual_seed(0)
    model = FiT(preset("fitv2-xl")).eval()
    package = export_package(model, None, tmp_path / "pkg", name="fitv2-xl")
    files = {p.name: p.stat().st_size for p in package.iterdir()}
    manifest = json.loads((package / "manifest.json").read_text())
    parameters = parameter_count(model)
    assert parameters > 600e6
    # fp32 XL is ~2.7 GB: over protobuf's 2 GB, so the weights must sit in transformer.onnx.data.
    assert manifest["transformer"]["external_data"] == "transformer.onnx.data"
    assert files["transformer.onnx"] < 50e6
    assert sum(v for k, v in files.items() if k.startswith("transformer.onnx")) >= 4 * parameters
