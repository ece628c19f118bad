"""engines.backends's registry: built-in backends are listed by "module:Class" and imported only when created."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
import engines.backends as b
before = dict(b._REGISTRY)
assert all(isinstance(v, str) for v in before.values()), before
assert not any(m in sys.modules for m in ("onnxruntime", "tensorrt", "openvino")), "a runtime library was imported"
assert [b.resolve_backend_name(n) for n in ("ort", "onnx", "trt", "ov")] == ["onnxruntime", "onnxruntime", "tensorrt",
                                                                           "openvino"]
import engines.backends.onnxruntime, engines.backends.tensorrt.backend, engines.backends.openvino
assert "openvino" not in sys.modules, "importing the OpenVINO backend module imported openvino"
assert b._REGISTRY == before, "a backend module registered itself on import"
for name, path in before.items():
    module, attr = path.split(":")
    assert getattr(sys.modules[module], attr).name == name, name
print("registry OK")
"""


def test_builtin_backends_are_registered_by_path_only():
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "registry OK" in proc.stdout
