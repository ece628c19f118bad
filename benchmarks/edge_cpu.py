"""Edge-CPU table: every transformer variant and CPU runtime side by side, with its quality.

    python benchmarks/edge_cpu.py [--xl-depth 4] [--repeats 16] [--out benchmarks/results/edge_cpu]

For the shipped default model and for the FiTv2-XL shape with ``--xl-depth`` of its 36 blocks (random weights,
exported with ``fit-export onnx``), one run on this machine measures:

- variants: fp32 (``transformer.onnx``), the ONNX Runtime-tuned copy (``ort``), the OpenVINO-tuned copy (``ov``),
  int8 dynamic per channel and int8 static (QDQ, calibrated on the package's own trajectories), all written by
  this repository's commands (``fit-export ort-optimize`` / ``ov-optimize`` / ``quantize``); runtimes: ONNX
  Runtime (each variant) and OpenVINO f32 / bf16 (the fp32 graph and its ``ov`` copy);
- size on disk of what each one opens (its graph plus the file its weights come from);
- load time: backend creation + activation (OpenVINO: first with an empty compiled-model cache, then warm);
- per-step latency: one network evaluation with guidance (batch 2) at the model's training token count
  (default model 25 tokens, XL 256), median of ``--repeats`` calls per engine, taken in blocks of 4 that
  alternate between the engines (the machine is shared; alternating spreads its noise evenly). Each block starts
  after a 0.2 s pause and one untimed call: every runtime keeps its own worker threads spinning for a while after
  a call, and on a 2-core machine the threads of the engine timed just before would otherwise run against the
  next one (timing one call per engine in turn measured the second of two ONNX Runtime sessions 15-20 % slow);
- image time: one whole image through ``engines.load().generate`` (default model: 80x80, its default heun
  16 steps, guidance 4, VAE decode; XL: 256x256, 10 Euler steps, guidance 1.5, no VAE);
- quality beside each: cosine of the output against ONNX Runtime fp32 on the timed feed, and PSNR of the image
  against the fp32 image of the same seed.

Per-call time is linear in depth (all blocks have one shape), so the full 36-block XL figures scale as
``fixed + 36/xl_depth x block part``; the ratios between engines here are close to full depth's because the blocks
dominate. Writes ``<out>.json`` and ``<out>.md``. A script, not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, XL_FULL_DEPTH, cpu_name
from engines.metrics import cosine, psnr  # after common, which puts the repository on the path


def prepare_packages(name: str, work: Path, xl_depth: int) -> dict:
    """{"fp32": package with the tuned copy, "int8-dynamic": ..., "int8-static": ...} for one model."""
    from fit_export.tune import optimize_package
    from fit_export.quantize import quantize_package

    if name == "default":
        from engines.pipeline import DEFAULT_MODEL_DIR
        from engines.package import load_manifest

        base = work / "default"
        shutil.copytree(DEFAULT_MODEL_DIR, base)
        doc = json.loads((base / "manifest.json").read_text())          # the shipped int8 is re-made below
        doc["transformer"]["variants"] = [v for v in doc["transformer"]["variants"] if v["precision"] != "int8"]
        doc["files"].pop("transformer.int8.onnx")
        (base / "transformer.int8.onnx").unlink()
        (base / "manifest.json").write_text(json.dumps(doc))
        load_manifest(base)
    else:
        from fit.config import preset
        from fit.model import FiT
        from fit_export import export_package
        import torch

        torch.manual_seed(0)
        model = FiT(preset("fitv2-xl").replace(depth=xl_depth)).eval()
        with torch.no_grad():                  # the zero-initialised output layers would hide every difference
            for param in model.parameters():
                if not param.abs().sum():
                    param.normal_(0, 0.02)
        base = export_package(model, None, work / "xl")
        optimize_package(base)
        optimize_package(base, runtime="openvino")
    packages = {"fp32": Path(base)}
    for mode in ("dynamic", "static"):
        out = work / f"{name}-int8-{mode}"
        entry = quantize_package(base, out, mode=mode, per_channel=True, calibration_images=4, accuracy=False)
        packages[f"int8-{mode}"] = out
        packages[f"int8-{mode}-record"] = entry
    return packages


ENGINES = [  # label, backend, package key, engines.load precision, extra options
    ("ONNX Runtime fp32 (transformer.onnx)", "onnxruntime", "fp32", "fp32", {"ort_optimized": False}),
    ("ONNX Runtime tuned copy (ort)", "onnxruntime", "fp32", "ort", {}),
    ("ONNX Runtime int8 dynamic", "onnxruntime", "int8-dynamic", "int8", {}),
    ("ONNX Runtime int8 static (QDQ)", "onnxruntime", "int8-static", "int8", {}),
    ("OpenVINO f32 (transformer.onnx)", "openvino", "fp32", "f32", {"ov_optimized": False}),
    ("OpenVINO f32 (tuned copy ov)", "openvino", "fp32", "f32", {}),
    ("OpenVINO bf16 (transformer.onnx)", "openvino", "fp32", "bf16", {"ov_optimized": False}),
    ("OpenVINO bf16 (tuned copy ov)", "openvino", "fp32", "bf16", {}),
]
BLOCK = 4                 # timed calls per engine in a row
PAUSE_S = 0.2             # before each block: the previous engine's worker threads stop spinning


def files_size(package: Path, backend) -> int:
    from engines.manifest import graph_files
    from engines.package import load_manifest

    manifest = load_manifest(package)
    return sum((package / n).stat().st_size for n in graph_files(manifest, backend.model_path.name))


def measure(name: str, packages: dict, repeats: int, threads: int, work: Path) -> list[dict]:
    import engines
    from engines.backends import create_backend
    from engines.package import load_manifest

    manifest = load_manifest(packages["fp32"])
    tokens = manifest.sizes.train_token_budget
    feed = manifest.graph.example_feed(batch=2, seq=tokens, seed=1)
    feed["y"] = np.array([1, manifest.model.null_class])
    rows, backends = [], []
    for label, backend, key, precision, extra in ENGINES:
        options = dict(extra, threads=threads)
        if backend == "openvino":
            options["cache_dir"] = str(work / f"ov-cache-{name}")
        start = time.perf_counter()
        b = create_backend(backend, packages[key], precision=precision, **options).activate()
        load = time.perf_counter() - start
        row = {"model": name, "engine": label, "variant": getattr(b, "variant", None), "precision": b.precision,
               "bytes": files_size(packages[key], b), "load_s": load}
        if backend == "openvino":
            b.deactivate()
            start = time.perf_counter()
            b.activate()
            row["load_warm_s"] = time.perf_counter() - start
        b.infer(feed)
        rows.append(row)
        backends.append(b)
    times = [[] for _ in backends]
    for _ in range(-(-repeats // BLOCK)):
        for i, b in enumerate(backends):
            time.sleep(PAUSE_S)
            b.infer(feed)
            for _ in range(BLOCK):
                start = time.perf_counter()
                b.infer(feed)
                times[i].append(time.perf_counter() - start)
    reference = backends[0].infer(feed)["v"]
    for row, b, t in zip(rows, backends, times):
        row["step_ms"] = 1000 * statistics.median(t)
        row["step_cosine"] = cosine(b.infer(feed)["v"], reference)
        b.deactivate()
    size = (80, 80) if name == "default" else (256, 256)
    settings = {} if name == "default" else {"steps": 10, "sampler": "euler", "cfg": 1.5}
    images = []
    for row, (label, backend, key, precision, extra) in zip(rows, ENGINES):
        options = dict(extra, threads=threads)
        if backend == "openvino":
            options["cache_dir"] = str(work / f"ov-cache-{name}")
        with engines.load(packages[key], backend=backend, precision=precision, **options) as pipe:
            start = time.perf_counter()
            image = pipe.generate(width=size[0], height=size[1], label=1, seed=3, output="array", **settings)
            row["image_s"] = time.perf_counter() - start
        images.append(image.astype(np.float64))
    for row, image in zip(rows, images):
        value = psnr(image, images[0], 255.0)
        row["image_psnr_db"] = value if np.isfinite(value) else "inf"
        row["speedup_vs_fp32"] = rows[0]["step_ms"] / row["step_ms"]
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Edge-CPU variants and runtimes ({result['date']}, {result['machine']})", "",
             f"`python benchmarks/edge_cpu.py --xl-depth {result['xl_depth']} --repeats {result['repeats']}`; "
             f"onnxruntime {result['versions']['onnxruntime']}, openvino {result['versions']['openvino']}, "
             f"{result['threads'] or 'default'} threads. {result['note']}", ""]
    head = ("| model | engine | on disk | load | per step (batch 2) | vs ORT fp32 | image | output cosine | "
            "image PSNR vs fp32 |")
    lines += [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        load = f"{r['load_s']:.2f} s" + (f" (cached {r['load_warm_s']:.2f} s)" if "load_warm_s" in r else "")
        db = r["image_psnr_db"]
        lines.append(f"| {r['model']} | {r['engine']} | {r['bytes'] / 1e6:.1f} MB | {load} | {r['step_ms']:.1f} ms | "
                     f"{r['speedup_vs_fp32']:.2f}x | {r['image_s']:.2f} s | {r['step_cosine']:.6f} | "
                     f"{db if isinstance(db, str) else f'{db:.1f} dB'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xl-depth", type=int, default=4,
                        help=f"blocks of the FiTv2-XL shape (of {XL_FULL_DEPTH})")
    parser.add_argument("--repeats", type=int, default=16, help="timed calls per engine (in blocks of 4)")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0: each runtime's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "edge_cpu"))
    args = parser.parse_args()
    import onnxruntime
    import openvino

    rows, records = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("default", f"FiTv2-XL {args.xl_depth}/{XL_FULL_DEPTH} blocks"):
            key = "default" if name == "default" else "xl"
            print(f"preparing {name}", file=sys.stderr)
            packages = prepare_packages(key, work, args.xl_depth)
            records[name] = {k: {f: v.get(f) for f in ("quantization", "validation")}
                             for k, v in packages.items() if k.endswith("-record")}
            print(f"measuring {name}", file=sys.stderr)
            rows += measure(name, packages, args.repeats, args.threads, work)
    result = {"date": datetime.date.today().isoformat(),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
              "xl_depth": args.xl_depth, "repeats": args.repeats, "threads": args.threads,
              "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
              "note": f"Per-call time is linear in depth: the full FiTv2-XL is about {XL_FULL_DEPTH}/{args.xl_depth} x "
                      f"the block part of the XL row. XL weights are random.",
              "rows": rows, "quantization_records": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
