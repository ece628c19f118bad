"""Export of the FiT transformer to ONNX and TensorRT, model packages, and numerical validation.

    from fit_export import export_package, validate_package
    path = export_package("fitv2-tiny", "model.safetensors", "out/pkg", precision="fp16")
    report = validate_package(path, checkpoint="model.safetensors")
"""
from fit_export.onnx_export import ExportError
from fit_export.package import export_package

__all__ = ["ExportError", "export_package", "validate_package"]


def __getattr__(name):
    # validate pulls in polygraphy and onnxruntime; load it only when asked for.
    if name == "validate_package":
        from fit_export.validate import validate_package
        return validate_package
    raise AttributeError(name)
