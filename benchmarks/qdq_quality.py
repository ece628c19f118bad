"""Quality of the TensorRT Q/DQ variants (int8, fp8) measured on the CPU, per size and extrapolation method.

    python benchmarks/qdq_quality.py                 # -> benchmarks/results/qdq_quality.json and .md

For the default model and the FiTv2-XL shape (``--xl-depth`` blocks, random weights with no zero-initialised layer,
``--xl-steps`` Euler steps): each format's Q/DQ graph (``fit_export.qdq.qdq_graph``, fp16 elsewhere) against the
fp32 graph on ONNX Runtime's CPU provider with ``fit_export.qdq.measure_quality`` — per-step cosine and image PSNR
per size and method, plus the shape accuracy at the training sizes for the default model; calibrated on every
declared size (the default) and on the default size only. No TensorRT engine is built: these are the numbers the
quality gate of ``fit-export quantize --for tensorrt`` sees.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from common import cpu_name  # first: puts the repository on the path
from engines.metrics import QualityGate

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = ("int8", "fp8")


def xl_package(folder: Path, depth: int, steps: int) -> Path:
    """FiTv2-XL with ``depth`` blocks, every weight random (no zero-initialised layer), 256-token training sizes
    plus one 400-token bucket beyond them."""
    import torch

    from fit.config import preset
    from fit.model import FiT
    from fit_export import export_package

    torch.manual_seed(0)
    model = FiT(preset("fitv2-xl").replace(depth=depth)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.02)
    sizes = [(256, 256), (320, 192), (192, 320), (512, 128), (320, 320), (384, 256)]
    return export_package(model, None, folder / "xl", sizes=sizes, buckets=[256, 400], default_steps=steps,
                          default_cfg=1.5)


def measure(package: Path, fmt: str, sizes, accuracy: bool, work: Path) -> dict:
    from fit_export.qdq import measure_quality, qdq_graph
    from fit_export.quantize import record_calibration

    images = max(8, len(sizes) if sizes else sum(len(b.sizes) for b in _manifest(package).sizes.buckets))
    start = time.perf_counter()
    recorded = record_calibration(package, images, sizes=sizes)
    graph = work / f"{package.name}.{fmt}.onnx"
    settings = qdq_graph(package / "transformer.onnx", graph, fmt, recorded["feeds"])
    record = measure_quality(package, graph, fmt, QualityGate(), accuracy=accuracy)
    return {"format": fmt, "calibration": "default size only" if sizes else "every declared size",
            "calibration_images": images, "quantized_nodes": settings["quantized_nodes"],
            "seconds": round(time.perf_counter() - start, 1), **record}


def both_calibrations(package: Path, accuracy: bool, work: Path) -> list[dict]:
    """Each format calibrated on every declared size (with the shape accuracy when ``accuracy``), then on the
    package's default size only."""
    runs = []
    for fmt in FORMATS:
        runs.append(measure(package, fmt, None, accuracy, work))
        runs.append(measure(package, fmt, [tuple(_manifest(package).sizes.default)], False, work))
        print(f"{package.name} {fmt} done", flush=True)
    return runs


def _manifest(package):
    from engines.package import load_manifest

    return load_manifest(package)


def markdown(result: dict) -> str:
    lines = ["# TensorRT Q/DQ variants: quality on the CPU", "",
             f"{result['date']}, {result['cpu']}, onnxruntime {result['onnxruntime']}. Produced by "
             f"`python benchmarks/qdq_quality.py`. **No TensorRT engine has been built in this repository's CI**: "
             f"these are the Q/DQ graphs run by ONNX Runtime's CPU provider (int8 and FLOAT8E4M3FN Q/DQ as they are, "
             f"fp16 tensors rounded through fp16), against the fp32 graph, from the same seeds.", ""]
    for model in result["models"]:
        lines += [f"## {model['model']}", "", model["note"], ""]
        runs = model["runs"]
        head = "| size | method | kind | " + " | ".join(f"{r['format']} ({r['calibration']})" for r in runs) + " |"
        lines += [head, "|---|---|---|" + "---|" * len(runs)]
        for i, case in enumerate(runs[0]["cases"]):
            cells = [f"{r['cases'][i]['min_step_cosine']:.5f} / {float(r['cases'][i]['image_psnr_db']):.1f}"
                     for r in runs]
            lines.append(f"| {case['width']}x{case['height']} | {case['method']} | {case['kind']} | "
                         + " | ".join(cells) + " |")
        lines += ["", "Cells: minimum per-step cosine / image PSNR (dB) over "
                  f"{runs[0]['images_per_case']} images per case.", ""]
        for r in runs:
            verdict = "passes" if r["passed"] else "is below"
            lines.append(f"- {r['format']}, calibrated on {r['calibration']}: {verdict} the default gate "
                         f"(cosine >= 0.999, image >= 35 dB); worst: {r['worst']}")
            for name, sizes in r.get("shapes_accuracy", {}).get("accuracy", {}).items():
                mean = sum(sizes.values()) / len(sizes)
                lines.append(f"  - shape accuracy {name}: mean {mean:.1%} over {len(sizes)} training sizes")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xl-depth", type=int, default=2)
    parser.add_argument("--xl-steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import onnxruntime

    from engines.pipeline import DEFAULT_MODEL_DIR

    models = []
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "machine": platform.machine(),
              "onnxruntime": onnxruntime.__version__, "models": models}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:                        # after each model: a run cut short keeps what it measured
        (args.out / "qdq_quality.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "qdq_quality.md").write_text(markdown(result))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models.append({"model": "default model", "runs": both_calibrations(DEFAULT_MODEL_DIR, True, work),
                       "note": "The shipped default model (procedural shapes, 25-token training budget, buckets 25 "
                               "and 64 tokens), its default sampler (ab2, 16 steps, guidance 4)."})
        save()
        xl = xl_package(work, args.xl_depth, args.xl_steps)
        models.append({"model": f"FiTv2-XL shape, {args.xl_depth} blocks, random weights",
                       "runs": both_calibrations(xl, False, work),
                       "note": f"hidden 1152, 16 heads; every weight random (none zero-initialised), 256-token "
                               f"training sizes and a 400-token bucket beyond them; Euler {args.xl_steps} steps, "
                               f"guidance 1.5."})
        save()
    print(markdown(result))


if __name__ == "__main__":
    main()
