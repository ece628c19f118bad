"""Export of the FiT transformer to ONNX and TensorRT, model packages, and numerical validation."""
