"""Export FiTv2-XL (random weights) to a model package and record export time, file sizes and peak memory.

    python benchmarks/export_xl.py                          # full FiTv2-XL, fp32 (2.7 GB -> external data)
    python benchmarks/export_xl.py --depth 4 --precision fp16 --json out.json

``--depth`` exports fewer blocks to bound the time; every block is the same size, so export time and file size
scale about linearly with depth (the JSON records the depth used and a linear estimate for the full model).
Peak memory is the process's maximum resident set size (the model, the exported program and the saved graph).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from common import peak_rss_mib
from engines.package import load_manifest  # after common, which puts the repository on the path


def run(config: str = "fitv2-xl", depth: int | None = None, precision: str = "fp32", out_dir=None) -> dict:
    import torch

    from fit.config import preset
    from fit.model import FiT, parameter_count
    from fit_export import export_package

    cfg = preset(config)
    full_depth = cfg.depth
    if depth:
        cfg = cfg.replace(depth=depth)
    rss_start = peak_rss_mib()
    torch.manual_seed(0)
    model = FiT(cfg).eval()
    rss_model = peak_rss_mib()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        start = time.perf_counter()
        package = export_package(model, None, Path(tmp) / "pkg", precision=precision, name=config)
        seconds = time.perf_counter() - start
        files = {p.name: p.stat().st_size for p in sorted(package.iterdir())}
        manifest = load_manifest(package)
    onnx_bytes = sum(v for k, v in files.items() if k.startswith("transformer.onnx"))
    scale = full_depth / cfg.depth
    return {
        "config": config, "depth": cfg.depth, "full_depth": full_depth, "precision": precision,
        "parameters": parameter_count(model), "export_seconds": round(seconds, 2),
        "files": files, "transformer_bytes": onnx_bytes,
        "external_data": manifest.transformer.external_data,
        "peak_rss_mb": round(peak_rss_mib(), 1), "rss_before_model_mb": round(rss_start, 1),
        "rss_after_model_mb": round(rss_model, 1),
        "estimate_full_depth": None if scale == 1 else {"export_seconds": round(seconds * scale, 1),
                                                        "transformer_bytes": int(onnx_bytes * scale)},
        "torch": torch.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fitv2-xl")
    parser.add_argument("--depth", type=int, help="export this many blocks instead of all of them")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--out-dir", help="where the temporary package goes (default: system temp)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    result = run(args.config, args.depth, args.precision, args.out_dir)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
