"""Per-step denoiser latency and peak memory: PyTorch eager vs ONNX Runtime (fp32 and int8), same weights.

    python benchmarks/runtime_vs_torch.py [--xl-depth 2] [--repeats 5] [--out benchmarks/results/runtime]

Measures, in one run on this machine:
- the machine's fp32 GEMM throughput: numpy, torch.mm and a one-MatMul ONNX Runtime graph at 2048^3 at the start
  and end of the run, and numpy inside every timing process before and after it times; the peak is the best of
  them all (machines here are shared), and every latency is also given as the share of that peak its FLOPs
  (linear layers + attention matmuls) reach;
- one transformer call (one Euler step without CFG) at the demo config (the shipped default model's config when
  installed, else ``--demo-config``) and at the FiTv2-XL shape with ``--xl-depth`` of its 36 blocks (random
  weights). Time per call is linear in depth (every block has the same shape), so the XL shape also runs at
  ``--scaling-depth`` blocks (PyTorch and the two fp32 ORT graphs) and the full 36-block figure is estimated as
  ``fixed + 36 x per-block`` from the two depths, with its share of the GEMM peak;
- the ceiling of one FiTv2-XL block on ONNX Runtime: its five linear layers (MatMul at the block's shapes) and
  its attention (ONNX ``Attention``, the op the tuned copy runs) alone in one graph, nothing else; the share of
  the GEMM peak the block's FLOPs would reach if LayerNorm, RoPE, modulation and residual adds took no time;
  and the linear layers and the attention each alone;
- batch 1 and 2 at 256 and 1024 tokens; each (engine, model, batch, tokens) runs in its own process, which
  reports its best and median latency and its peak RSS (VmHWM) above the RSS after loading;
- ONNX Runtime on the package graph (``transformer.onnx``, standard ops, opset 18) and on its ONNX Runtime-tuned
  copy with fused attention and RoPE (``fit-export ort-optimize``, ``fit_export/tune.py``), side by side;
- ONNX Runtime int8 dynamic quantization (weights int8, activations quantized per call) of each: per-tensor
  weights on the package graph, per-channel weights on the fused copy; latency and the change of the output
  (cosine vs fp32) and of a sampled image (PSNR vs the fp32 image, same seed);
- end-to-end ``fit-run`` time for a 96x64 image and its cold-start share (a fresh process each time).

Writes ``<out>.json`` and ``<out>.md`` (a markdown table with date and machine). A script, not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, XL_FULL_DEPTH, cpu_name, peak_rss_mib, rss_mib
from engines.metrics import cosine, psnr  # after common, which puts the repository on the path


def numpy_gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of fp32 GEMM throughput through numpy's BLAS, measured where it is used (machines here are shared)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    return 2 * n ** 3 / min(_timed(lambda: a @ b) for _ in range(repeats)) / 1e9


# --------------------------------------------------------------------------------------------------------------
# Work done in child processes
# --------------------------------------------------------------------------------------------------------------

def make_inputs(config: dict, batch: int, tokens: int, seed: int = 0) -> dict:
    """A graph feed of ``batch`` rows, each the near-square grid isqrt(tokens) x tokens // isqrt(tokens) (every
    token real), built without importing torch."""
    from engines.contract import GraphContract
    from engines.rope import RopeSettings

    head_dim = config["hidden_size"] // config["num_heads"]
    token_dim = config["patch_size"] ** 2 * config["in_channels"]
    side = math.isqrt(tokens)
    padded = GraphContract(token_dim, token_dim, head_dim).padded_batch(
        [(side, tokens // side)] * batch, RopeSettings(head_dim), np.arange(batch) % config["num_classes"])
    x = np.random.default_rng(seed).standard_normal(padded.x.shape, dtype=np.float32)
    return padded.feed(np.full(batch, 0.5), x)


def mlp_hidden(config: dict) -> int:
    from fit.config import FiTConfig

    return FiTConfig.from_dict(config).mlp_hidden_size


def block_kernels_graph(config: dict, batch: int, tokens: int, parts=("linear", "attention")):
    """One block's linear layers (qkv, proj, the SwiGLU MLP's three; weights constant) and/or its attention
    (ONNX Attention-23 with an additive mask, (B, H, N, Dh) inputs) as independent nodes of one graph; returns
    the serialized model and a feed for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, heads = config["hidden_size"], config["num_heads"]
    head_dim, hidden = d // heads, mlp_hidden(config)
    rng = np.random.default_rng(0)
    nodes, shapes, inits = [], {}, []
    if "linear" in parts:
        weights = {"w_qkv": ("x", (d, 3 * d)), "w_proj": ("x", (d, d)), "w_gate": ("x", (d, hidden)),
                   "w_up": ("x", (d, hidden)), "w_down": ("h", (hidden, d))}
        inits = [numpy_helper.from_array(0.02 * rng.standard_normal(shape, dtype=np.float32), name)
                 for name, (_, shape) in weights.items()]
        nodes += [helper.make_node("MatMul", [source, name], [f"{name}_out"]) for name, (source, _) in weights.items()]
        shapes.update(x=[batch, tokens, d], h=[batch, tokens, hidden])
    if "attention" in parts:
        shapes.update({k: [batch, heads, tokens, head_dim] for k in "qkv"}, bias=[batch, 1, tokens, tokens])
        nodes.append(helper.make_node("Attention", ["q", "k", "v", "bias"], ["attention_out"],
                                      scale=head_dim ** -0.5))
    graph = helper.make_graph(nodes, "block_kernels",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()],
                              [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    feed = {k: rng.standard_normal(v, dtype=np.float32) for k, v in shapes.items()}
    if "bias" in feed:
        feed["bias"] = np.zeros(shapes["bias"], np.float32)
    return onnx.ModelProto.SerializeToString(model), feed


def worker(spec: dict) -> dict:
    """Time one (engine, model, batch, tokens) case; returns latency, memory and an output sample."""
    feed = make_inputs(spec["config"], spec["batch"], spec["tokens"])
    if spec["engine"] == "ceiling":
        import onnxruntime as ort

        model, kernel_feed = block_kernels_graph(spec["config"], spec["batch"], spec["tokens"], spec["parts"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        def call():
            return session.run(None, kernel_feed)[-1][:, :1]
    elif spec["engine"] == "torch":
        import torch

        from fit.config import FiTConfig
        from fit.model import FiT

        torch.set_num_threads(spec["threads"])
        model = FiT(FiTConfig.from_dict(spec["config"])).eval()
        model.load_state_dict(torch.load(spec["weights"], weights_only=True))
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def call():
            with torch.inference_mode():
                return model(tensors["x"], tensors["t"], tensors["y"], mask=tensors["mask"],
                             rope_cos=tensors["rope_cos"], rope_sin=tensors["rope_sin"]).numpy()
    else:
        from engines.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(None, model_path=spec["onnx"], threads=spec["threads"]).activate()

        def call():
            return backend.infer(feed)["v"]
    gemm = numpy_gemm_gflops()
    base = rss_mib()
    warm_up = time.perf_counter()                                  # first-shape planning, weight prepacking,
    for calls in range(1, 100):                                    # thread pool and arena: at least 3 calls
        out = call()                                               # and 1 s before timing
        if calls >= 3 and time.perf_counter() - warm_up >= 1.0:
            break
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    gemm = max(gemm, numpy_gemm_gflops())
    np.save(spec["output"], out)
    return {"ms": 1000 * min(times), "ms_median": 1000 * statistics.median(times), "gemm_gflops": round(gemm, 1),
            "peak_mib_above_load": round(peak_rss_mib() - base, 1), "rss_after_load_mib": round(base, 1)}


# --------------------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------------------

def _best_rate(flop: float, fn, repeats: int = 5, warm_up_s: float = 1.0) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``fn``, after ``warm_up_s`` seconds of calls."""
    start = time.perf_counter()
    while time.perf_counter() - start < warm_up_s:
        fn()
    return flop / min(_timed(fn) for _ in range(repeats)) / 1e9


def peak_gemm_gflops(threads: int, n: int = 2048) -> dict:
    """fp32 GEMM throughput of this machine at n^3 through four BLAS paths, each warmed up for a second: numpy,
    torch.mm, and ONNX Runtime MatMul with both operands as inputs and with B a constant (the way a model's
    weights run: ONNX Runtime prepacks constant B). The best of them is the peak every latency is compared
    with."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    flop = 2 * n ** 3
    rates = {"numpy": _best_rate(flop, lambda: a @ b)}
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    rates["torch"] = _best_rate(flop, lambda: torch.mm(ta, tb))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for key, constant in (("onnxruntime", False), ("onnxruntime_prepacked", True)):
        inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a",) + ("b",) * (not constant)]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", inputs,
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                                  [numpy_helper.from_array(b, "b")] if constant else [])
        session = ort.InferenceSession(onnx.helper.make_model(graph).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feed = {"a": a} if constant else {"a": a, "b": b}
        rates[key] = _best_rate(flop, lambda: session.run(None, feed))
    return {k: round(v, 1) for k, v in rates.items()}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def transformer_flops(config: dict, batch: int, tokens: int) -> float:
    """Multiply-add FLOPs of one call (linear layers and attention matmuls; elementwise work ignored)."""
    d, depth = config["hidden_size"], config["depth"]
    hidden = mlp_hidden(config)
    mlp = 3 * d * hidden if config.get("use_swiglu") else 2 * d * hidden
    per_token = 4 * d * d + mlp                                     # qkv + proj, MLP
    attention = 2 * tokens * d                                      # QK^T and AV per token
    return 2 * batch * tokens * depth * (per_token + attention)


def run_child(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.unlink(f.name)
    if proc.returncode:
        raise RuntimeError(f"worker failed for {spec['engine']} {spec['model']}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ORT_VARIANTS = ("ort", "ort-fused", "ort-int8", "ort-fused-int8")


def prepare_model(name: str, config: dict, work: Path, int8: bool = True) -> dict:
    """Random weights (seeded, zero-initialised layers made random), saved for torch; exported for ORT as the
    package graph, its tuned copy, and (``int8``) int8 copies of both."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fit.config import FiTConfig
    from fit.model import FiT
    from fit_export.onnx_export import export_transformer
    from fit_export.tune import optimize_graph

    torch.manual_seed(0)
    model = FiT(FiTConfig.from_dict(config)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.02)
    weights = work / f"{name}.pt"
    paths = {variant: work / f"{name}.{variant}.onnx" for variant in ORT_VARIANTS}
    torch.save(model.state_dict(), weights)
    export_transformer(model, paths["ort"])
    cfg = model.config
    optimize_graph(paths["ort"], paths["ort-fused"], cfg.head_dim, cfg.token_dim)
    if not int8:
        return {"model": model, "weights": str(weights), "ort": str(paths["ort"]), "ort-fused": str(paths["ort-fused"])}
    logging.getLogger().setLevel(logging.ERROR)          # quantize_dynamic's pre-processing advice
    quantize_dynamic(str(paths["ort"]), str(paths["ort-int8"]), weight_type=QuantType.QInt8)
    quantize_dynamic(str(paths["ort-fused"]), str(paths["ort-fused-int8"]), weight_type=QuantType.QInt8,
                     per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])   # not ONNX Attention: the
    # quantizer takes every node named "Attention" for com.microsoft.Attention
    return {"model": model, "weights": str(weights), **{k: str(v) for k, v in paths.items()}}


def image_psnr(model, prepared: dict, work: Path, steps: int) -> dict:
    """Same seed through the fp32 package graph and each other ORT variant (96x64 image, Euler) -> PSNR of the
    images against the fp32 one."""
    import engines
    from fit_export import export_package

    package = export_package(model, None, work / "psnr-package", force=True)
    images = {}
    for variant in ORT_VARIANTS:
        with engines.load(package, model_path=prepared[variant]) as pipe:
            images[variant] = pipe.generate(width=96, height=64, label=1, seed=0, steps=steps, output="array")
    return {"image": "96x64", "steps": steps,
            **{f"{v}_psnr_db": round(psnr(images["ort"], images[v], 255), 2) for v in ORT_VARIANTS[1:]}}


def fit_run_times(package: str, steps: int, runs: int) -> dict:
    """Wall time of complete fit-run processes (cold start included) and of the import + load part alone."""
    out = Path(tempfile.mkdtemp()) / "x.png"
    base = [sys.executable, "-m", "cli.run", package, "-W", "96", "-H", "64", "--steps", str(steps), "-q",
            "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = [_timed(lambda: subprocess.run(base, check=True, cwd=ROOT, env=env, capture_output=True))
            for _ in range(runs)]
    startup = [_timed(lambda: subprocess.run([sys.executable, "-c", "import cli.run, engines; "
                                              f"engines.load({package!r}).close()"], check=True, cwd=ROOT,
                                             env=env, capture_output=True)) for _ in range(runs)]
    return {"fit_run_96x64_s": round(min(full), 3), "import_and_load_s": round(min(startup), 3), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--demo-config", default="fitv2-tiny", help="preset used when no default model is shipped")
    parser.add_argument("--xl-depth", type=int, default=2,
                        help=f"blocks of the FiTv2-XL shape to run (of {XL_FULL_DEPTH})")
    parser.add_argument("--scaling-depth", type=int, default=4,
                        help="second FiTv2-XL depth for the full-depth estimate (0: skip it and the block ceiling)")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--tokens", default="256,1024")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=8, help="steps of the end-to-end and PSNR images")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runtime_vs_torch"))
    args = parser.parse_args()
    if args.worker:
        with open(args.worker) as f:
            print(json.dumps(worker(json.load(f))))
        return

    from fit.config import preset
    from engines.package import load_manifest
    from engines.pipeline import DEFAULT_MODEL_DIR

    default_manifest = DEFAULT_MODEL_DIR / "manifest.json"
    if default_manifest.is_file():
        demo_name, demo_config = "demo (default model)", load_manifest(DEFAULT_MODEL_DIR).model.config
    else:
        demo_name, demo_config = f"demo ({args.demo_config})", preset(args.demo_config).to_dict()
    xl_config = {**preset("fitv2-xl").to_dict(), "depth": args.xl_depth}
    models = {demo_name: demo_config, f"FiTv2-XL shape, {args.xl_depth}/{XL_FULL_DEPTH} blocks": xl_config}

    gemm_runs = [peak_gemm_gflops(args.threads)]
    peak = max(gemm_runs[0].values())
    print(f"fp32 GEMM: {gemm_runs[0]} GFLOP/s ({args.threads} threads)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="fit-bench-"))
    rows, image_checks, scaling = [], {}, []
    for name, config in models.items():
        prepared = prepare_model(name.split()[0].lower(), config, work)
        for batch in map(int, args.batches.split(",")):
            for tokens in map(int, args.tokens.split(",")):
                outputs = {}
                row = {"model": name, "batch": batch, "tokens": tokens,
                       "gflop": round(transformer_flops(config, batch, tokens) / 1e9, 2)}
                for engine in ("torch",) + ORT_VARIANTS:
                    spec = {"engine": "torch" if engine == "torch" else "ort", "model": name, "config": config,
                            "weights": prepared["weights"], "onnx": prepared.get(engine), "batch": batch,
                            "tokens": tokens,
                            "repeats": args.repeats, "threads": args.threads,
                            "output": str(work / f"out-{engine}.npy")}
                    result = run_child(spec)
                    outputs[engine] = np.load(spec["output"])
                    peak = max(peak, result["gemm_gflops"])
                    row[engine] = result
                    print(f"{name} b{batch} n{tokens} {engine}: {result['ms']:.1f} ms", flush=True)
                for variant in ORT_VARIANTS:
                    row[f"{variant}_vs_torch"] = round(row["torch"]["ms"] / row[variant]["ms"], 2)
                    row[f"{variant}_cosine"] = round(cosine(outputs[variant], outputs["ort"]), 6)
                row["ort_vs_torch_cosine"] = round(cosine(outputs["ort"], outputs["torch"]), 6)
                rows.append(row)
        if name.startswith("demo"):
            image_checks = image_psnr(prepared["model"], prepared, work, args.steps)
            package = (str(DEFAULT_MODEL_DIR) if default_manifest.is_file() else str(work / "psnr-package"))
            end_to_end = fit_run_times(package, args.steps, runs=3)
        if name.startswith("FiTv2-XL") and args.scaling_depth:
            scaling = full_depth_estimates(rows, name, config, args, work)
            peak = max([peak] + [e[k]["gemm_gflops"] for e in scaling for k in (*CEILING_PARTS, *FP32_ENGINES)])
    gemm_runs.append(peak_gemm_gflops(args.threads))     # again at the end: the machine is shared
    peak = max([peak] + list(gemm_runs[-1].values()))
    for entry in scaling:
        block_gflop = entry["block_gflop"]
        flops = {"ceiling": block_gflop, "ceiling_attention": entry["attention_gflop"],
                 "ceiling_linear": block_gflop - entry["attention_gflop"]}
        for key, gflop in flops.items():
            entry[key]["pct_of_gemm_peak"] = round(100 * gflop / (entry[key]["ms"] / 1000) / peak, 1)
        for engine in FP32_ENGINES:
            e = entry[engine]
            e["full_pct_of_gemm_peak"] = round(100 * entry["full_gflop"] / (e["full_ms"] / 1000) / peak, 1)
            e["block_pct_of_gemm_peak"] = round(100 * block_gflop / (e["block_ms"] / 1000) / peak, 1)
    for row in rows:                                    # % of the best GEMM rate measured anywhere in this run
        for engine in ("torch",) + ORT_VARIANTS:
            row[engine]["pct_of_gemm_peak"] = round(100 * row["gflop"] / (row[engine]["ms"] / 1000) / peak, 1)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(),
               "threads": args.threads, "python": platform.python_version(), "platform": platform.platform()}
    import onnxruntime
    import torch
    report = {"date": datetime.date.today().isoformat(), "machine": machine, "gemm_fp32_gflops": round(peak, 1),
              "gemm_runs_gflops": gemm_runs,
              "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
              "xl_scaling": f"per-call time is linear in depth: full FiTv2-XL ~ {XL_FULL_DEPTH}/{args.xl_depth} x "
                            f"the block part of these figures", "rows": rows, "full_depth": scaling,
              "image_psnr": image_checks,
              "end_to_end": end_to_end}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


FP32_ENGINES = ("torch", "ort", "ort-fused")
CEILING_PARTS = {"ceiling": ("linear", "attention"), "ceiling_linear": ("linear",), "ceiling_attention": ("attention",)}


def full_depth_estimates(rows: list, name: str, config: dict, args, work: Path) -> list:
    """Run the FiTv2-XL shape again at ``args.scaling_depth`` blocks (PyTorch, ORT graph, ORT tuned copy) and the
    one-block kernel ceiling; per engine: per-block and fixed time from the two depths and the 36-block estimate."""
    shallow, deep = args.xl_depth, args.scaling_depth
    if deep == shallow:
        raise SystemExit("--scaling-depth must differ from --xl-depth")
    deep_config = {**config, "depth": deep}
    prepared = prepare_model("xl-scaling", deep_config, work, int8=False)
    estimates = []
    for row in (r for r in rows if r["model"] == name):
        batch, tokens = row["batch"], row["tokens"]
        entry = {"batch": batch, "tokens": tokens, "depths": [shallow, deep],
                 "full_gflop": round(transformer_flops({**config, "depth": XL_FULL_DEPTH}, batch, tokens) / 1e9, 2),
                 "block_gflop": round(transformer_flops({**config, "depth": 1}, batch, tokens) / 1e9, 3),
                 "attention_gflop": round(4 * batch * tokens ** 2 * config["hidden_size"] / 1e9, 3)}
        base = {"model": name, "batch": batch, "tokens": tokens, "repeats": args.repeats, "threads": args.threads,
                "output": str(work / "out-scaling.npy")}
        for engine in FP32_ENGINES:
            result = run_child({**base, "engine": "torch" if engine == "torch" else "ort", "config": deep_config,
                                "weights": prepared["weights"], "onnx": prepared.get(engine)})
            block = (result["ms"] - row[engine]["ms"]) / (deep - shallow)
            fixed = row[engine]["ms"] - shallow * block
            entry[engine] = {"ms_at_depths": [row[engine]["ms"], result["ms"]], "block_ms": round(block, 2),
                             "fixed_ms": round(fixed, 2), "full_ms": round(fixed + XL_FULL_DEPTH * block, 1),
                             "gemm_gflops": result["gemm_gflops"]}
            print(f"{name} b{batch} n{tokens} {engine} at depth {deep}: {result['ms']:.1f} ms; "
                  f"block {block:.1f} ms", flush=True)
        for key, parts in CEILING_PARTS.items():
            entry[key] = run_child({**base, "engine": "ceiling", "config": config, "parts": parts})
            print(f"{key} b{batch} n{tokens}: {entry[key]['ms']:.1f} ms", flush=True)
        estimates.append(entry)
    return estimates


def markdown(report: dict) -> str:
    lines = [f"Runtime benchmark, {report['date']}, {report['machine']['cpu']} ({report['machine']['cores']} cores, "
             f"{report['machine']['threads']} threads), torch {report['versions']['torch']}, onnxruntime "
             f"{report['versions']['onnxruntime']}. fp32 GEMM peak (best of numpy, torch.mm "
             f"and ONNX Runtime MatMul, with B an input and with B a prepacked constant, at 2048^3, each warmed up "
             f"for 1 s, at the start and end of the run, and numpy inside every timing process): "
             f"{report['gemm_fp32_gflops']} GFLOP/s. Latency: best of the repeats. *graph*: the package's "
             "standard-op transformer.onnx; *fused*: its ONNX Runtime-tuned copy, attention and RoPE as fused "
             "opset-23 ops (`fit-export ort-optimize`); int8: dynamic quantization, per-tensor weights on the graph, per-channel "
             "on the fused copy; cosine: output vs the fp32 graph.",
             "", "| model | batch | tokens | GFLOP | torch ms (% peak) | ORT graph ms (% peak) | ORT fused ms (% peak) "
             "| int8 graph ms | int8 fused ms | graph/torch | fused/torch | int8 fused/torch | int8 fused/fused "
             "| int8 cosine graph / fused | torch peak MiB | ORT graph / fused peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ms = {k: r[k]["ms"] for k in ("torch", "ort", "ort-fused", "ort-int8", "ort-fused-int8")}
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['tokens']} | {r['gflop']} "
            f"| {ms['torch']:.1f} ({r['torch']['pct_of_gemm_peak']}%) | {ms['ort']:.1f} ({r['ort']['pct_of_gemm_peak']}%) "
            f"| {ms['ort-fused']:.1f} ({r['ort-fused']['pct_of_gemm_peak']}%) | {ms['ort-int8']:.1f} "
            f"| {ms['ort-fused-int8']:.1f} | {r['ort_vs_torch']}x | {r['ort-fused_vs_torch']}x "
            f"| {r['ort-fused-int8_vs_torch']}x | {ms['ort-fused'] / ms['ort-fused-int8']:.2f}x "
            f"| {r['ort-int8_cosine']} / {r['ort-fused-int8_cosine']} | {r['torch']['peak_mib_above_load']} "
            f"| {r['ort']['peak_mib_above_load']} / {r['ort-fused']['peak_mib_above_load']} |")
    if report.get("full_depth"):
        depths = report["full_depth"][0]["depths"]
        lines += ["", f"FiTv2-XL at its full {XL_FULL_DEPTH} blocks, estimated from the runs at {depths[0]} and "
                  f"{depths[1]} blocks (per-block time = difference / {depths[1] - depths[0]}; full = fixed + "
                  f"{XL_FULL_DEPTH} x per-block). *Block ceiling*: one block's five linear layers and its ONNX "
                  "Attention alone on ONNX Runtime (nothing else), the most the block's FLOPs can reach on this "
                  "machine's kernels; then each part alone.", "",
                  "| batch | tokens | GFLOP (36 blocks) | torch ms (% peak) | ORT graph ms (% peak) "
                  "| ORT fused ms (% peak) | fused/torch | ORT fused per block ms (% peak) "
                  "| block ceiling ms (% peak) | linear layers alone ms (% peak) | attention alone ms (% peak) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in report["full_depth"]:
            cell = lambda k: f"{e[k]['full_ms']:.0f} ({e[k]['full_pct_of_gemm_peak']}%)"
            lines.append(f"| {e['batch']} | {e['tokens']} | {e['full_gflop']} | {cell('torch')} | {cell('ort')} "
                         f"| {cell('ort-fused')} | {e['torch']['full_ms'] / e['ort-fused']['full_ms']:.2f}x "
                         f"| {e['ort-fused']['block_ms']:.1f} ({e['ort-fused']['block_pct_of_gemm_peak']}%) "
                         + "".join(f"| {e[k]['ms']:.1f} ({e[k]['pct_of_gemm_peak']}%) " for k in CEILING_PARTS)
                         + "|")
    e2e, q = report["end_to_end"], report["image_psnr"]
    lines += ["", f"{report['xl_scaling']}.",
              f"Image PSNR vs the fp32 graph ({q['image']}, {q['steps']} steps): fused {q['ort-fused_psnr_db']} dB, "
              f"int8 graph {q['ort-int8_psnr_db']} dB, int8 fused {q['ort-fused-int8_psnr_db']} dB.",
              f"fit-run 96x64, {e2e['steps']} steps, cold process: {e2e['fit_run_96x64_s']} s "
              f"(of which import + package load: {e2e['import_and_load_s']} s).", ""]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
