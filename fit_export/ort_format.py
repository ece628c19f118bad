"""ONNX Runtime's ORT format of a graph, and the operator configuration of a reduced ONNX Runtime build for it.

Mobile and embedded apps link ONNX Runtime's minimal build, which loads only ORT-format models and, built with
``--include_ops_by_config``, only the kernels a configuration file names. :func:`write_ort_format` converts one
ONNX file with ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed optimizations, no type reduction, so the
file runs on any CPU ONNX Runtime) and writes the configuration next to it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path


class OrtFormatError(ValueError):
    """The graph cannot be converted to the ORT format."""


def write_ort_format(onnx_path) -> dict:
    """Write ``NAME.ort`` and ``NAME.required_operators.config`` next to ``onnx_path`` (NAME: its stem); returns
    the variant fields ``{"ort_format": file name, "operator_config": file name}``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnx_path = Path(onnx_path)
    folder = Path(tempfile.mkdtemp(prefix=".ort-format-", dir=onnx_path.parent))
    try:
        log = io.StringIO()
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(onnx_path, output_dir=folder, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as err:             # the converter raises what ONNX Runtime raised
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OrtFormatError(f"cannot convert {onnx_path.name} to the ORT format: {first}") from None
        models, configs = list(folder.glob("*.ort")), list(folder.glob("*.config"))
        if len(models) != 1 or len(configs) != 1:
            raise OrtFormatError(f"the ORT converter wrote {sorted(p.name for p in folder.iterdir())}, expected "
                                 f"one .ort model and one .config")
        model = onnx_path.with_suffix(".ort")
        config = onnx_path.with_name(f"{onnx_path.stem}.required_operators.config")
        shutil.move(models[0], model)
        text = configs[0].read_text().replace(str(models[0]), model.name)       # names the file, not the temp path
        config.write_text(text)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"ort_format": model.name, "operator_config": config.name}
