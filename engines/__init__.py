"""Torch-free runtime for FiT model packages: RoPE tables, samplers, backends (ONNX Runtime, TensorRT)."""
