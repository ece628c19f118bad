"""The TensorRT backend and its parts: ``backend`` (runs engines), ``store`` (the engines of a package and their
sidecars), ``install`` (which TensorRT and CUDA wheels are present) and ``cuda`` (the CUDA runtime calls)."""
