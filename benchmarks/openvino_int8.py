"""OpenVINO's own int8 (NNCF post-training quantization) against ONNX Runtime int8, at the FiTv2-XL shape.

    pip install nncf        # not a dependency of fit-toolkit: this script decides whether it should be
    python benchmarks/openvino_int8.py [--xl-depth 4] [--repeats 16] [--calibration 8]

One run on this machine: the XL shape with ``--xl-depth`` of its 36 blocks (random weights; exported, tuned and
quantized by benchmarks/edge_cpu.py's ``prepare_packages``, i.e. this repository's commands), one guided evaluation
(batch 2 × 256 tokens) per call, timed as benchmarks/edge_cpu.py times (blocks of 4 calls per engine after a pause
and an untimed call, alternating engines):

- ONNX Runtime fp32 (``transformer.onnx``), the reference;
- ONNX Runtime int8 dynamic (``fit-export quantize``, what the package ships);
- OpenVINO f32 and bf16 on ``transformer.onnx``;
- OpenVINO int8 from ``nncf.quantize`` (transformer preset) of ``transformer.onnx``, calibrated on
  ``--calibration`` random feeds of the graph contract, computed in f32 and with the bf16 hint.

Prints a markdown table: per-call median, ratio to ONNX Runtime fp32, output cosine against it. A script, not a
test.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import XL_FULL_DEPTH, cpu_name
from edge_cpu import BLOCK, PAUSE_S, prepare_packages
from engines.metrics import cosine  # after common, which puts the repository on the path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xl-depth", type=int, default=4,
                        help=f"blocks of the FiTv2-XL shape (of {XL_FULL_DEPTH})")
    parser.add_argument("--repeats", type=int, default=16, help="timed calls per engine (in blocks of 4)")
    parser.add_argument("--calibration", type=int, default=8, help="calibration feeds for nncf.quantize")
    args = parser.parse_args()
    try:
        import nncf
    except ImportError:
        sys.exit("openvino_int8.py: error: needs NNCF (pip install nncf)")
    import onnxruntime as ort
    import openvino as ov

    from engines.package import load_manifest

    with tempfile.TemporaryDirectory() as tmp:
        packages = prepare_packages("xl", Path(tmp), args.xl_depth)
        base = packages["fp32"]
        manifest = load_manifest(base)
        tokens = manifest.sizes.train_token_budget
        null = manifest.model.null_class

        def feed(seed, label=1):
            f = manifest.graph.example_feed(batch=2, seq=tokens, seed=seed)
            f["y"] = np.array([label, null])
            return f

        timed = feed(1)
        calibration = [feed(100 + i, i % 10) for i in range(args.calibration)]
        core = ov.Core()
        model = core.read_model(str(base / "transformer.onnx"))
        start = time.perf_counter()
        quantized = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration))
        quantize_s = time.perf_counter() - start

        def ov_engine(graph, precision):
            request = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                        "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            return lambda f: np.array(next(iter(request.infer(f).values())), copy=True)

        def ort_engine(path):
            options = ort.SessionOptions()
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return lambda f: session.run(["v"], f)[0]

        engines = {
            "ONNX Runtime fp32 (transformer.onnx)": ort_engine(base / "transformer.onnx"),
            "ONNX Runtime int8 dynamic": ort_engine(packages["int8-dynamic"] / "transformer.int8.onnx"),
            "OpenVINO f32": ov_engine(model, "f32"),
            "OpenVINO bf16": ov_engine(model, "bf16"),
            "OpenVINO int8 (NNCF), f32": ov_engine(quantized, "f32"),
            "OpenVINO int8 (NNCF), bf16 hint": ov_engine(quantized, "bf16"),
        }
        times = {name: [] for name in engines}
        for _ in range(-(-args.repeats // BLOCK)):
            for name, run in engines.items():
                time.sleep(PAUSE_S)
                run(timed)
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    run(timed)
                    times[name].append(time.perf_counter() - start)
        reference = engines["ONNX Runtime fp32 (transformer.onnx)"](timed)
        base_ms = 1000 * statistics.median(times["ONNX Runtime fp32 (transformer.onnx)"])
        print(f"{datetime.date.today().isoformat()}, {cpu_name()}; FiTv2-XL {args.xl_depth}/{XL_FULL_DEPTH} blocks, "
              f"batch 2 x {tokens} tokens, median of {args.repeats} calls; onnxruntime {ort.__version__}, openvino "
              f"{ov.__version__}, nncf {nncf.__version__} (quantize {quantize_s:.0f} s, {len(calibration)} feeds)\n")
        print("| engine | per call | vs ORT fp32 | output cosine |")
        print("|---|---:|---:|---:|")
        for name, run in engines.items():
            ms = 1000 * statistics.median(times[name])
            print(f"| {name} | {ms:.1f} ms | {base_ms / ms:.2f}x | {cosine(run(timed), reference):.6f} |")


if __name__ == "__main__":
    main()
