"""The GPU check: what has never run on a GPU, run once on one, into one JSON + markdown report.

    python -m scripts.gpu_check list                 # the steps, in order (scripts/gpu_check.sh --dry-run)
    python -m scripts.gpu_check run STEP --out DIR   # one step -> DIR/steps/STEP.json
    python -m scripts.gpu_check report --out DIR [--report-dir R]   # R/gpu_check.json + .md (R: DIR)

``scripts/gpu_check.sh`` runs every step in its own process (a crash or timeout in one does not stop the others)
and then the report. Steps (each records its numbers, what it compared and ``passed``):

* ``pytest_gpu``   ``pytest -m gpu`` (the TensorRT tests run when ``tensorrt`` imports, else they skip)
* ``train_bf16``   fit.train.train on CUDA, fp32 and bf16 autocast from the same weights over the same batches:
  per-step losses close (mean relative difference <= 5 %)
* ``ddp_nccl``     (under ``torchrun --nproc_per_node=1``) an NCCL process group, a DDP step with an all-reduce,
  then fit.train.train inside that process group
* ``sampling``     fit.sampling.sample on CUDA and on CPU from the same noise (TF32 off): cosine >= 0.9999
* ``export_onnx``  export_package from a model on CUDA; ONNX Runtime (CPU) on the package against the CUDA model
* ``latency``      the denoiser at the FiTv2-XL shape (random weights, bf16 autocast), eager vs torch.compile,
  batch 1/2/8 x 256/1024 tokens (CUDA events, median of repeats)
* ``tensorrt_qdq`` when TensorRT imports: the int8 and fp8 Q/DQ variants of a tiny package (fit-export quantize
  --for tensorrt), their strongly typed engines (fp8 only at compute capability >= 8.9) and fit-export validate
  --backend tensorrt on them; skipped (and reported so) without TensorRT or a GPU

Every step takes ``--device`` (default cuda) so the plumbing also runs on a CPU (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MAX_REL = 0.05
SAMPLING_MIN_COSINE = 0.9999
EXPORT_MAX_ABS = 1e-3                    # x output scale: ONNX Runtime fp32 vs CUDA fp32 (TF32 off)
XL_SHAPES = tuple((b, n) for n in (256, 1024) for b in (1, 2, 8))     # (batch, tokens)


def _tiny_model(device: str):
    """fitv2-tiny with every weight random (zero-initialised output layers would hide differences)."""
    from tests.runtime_helpers import tiny_model

    return tiny_model().to(device)


def _train_config():
    """fitv2-tiny on the procedural shapes (RGB pixels, ``procedural:SEED``)."""
    from fit.config import preset

    return preset("fitv2-tiny").replace(context_size=64, in_channels=3)


def _no_tf32():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# ----------------------------------------------------------------------------------------------------------
# Steps: each returns a JSON-ready dict with at least "passed"
# ----------------------------------------------------------------------------------------------------------

def step_pytest_gpu(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """``pytest -m gpu`` on the test modules with gpu tests, in a subprocess; counts from its JUnit XML."""
    import xml.etree.ElementTree as ET

    junit = out / "pytest-gpu.xml"
    # Only the modules that hold gpu tests: collecting the rest would need every optional package installed.
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                     if "pytest.mark.gpu" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *modules]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    skips = []
    if junit.is_file():
        root = ET.parse(junit).getroot()
        for suite in root.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        skips = sorted({s.get("message", "") for s in root.iter("skipped")})
    return {"command": " ".join(command[1:]), "returncode": proc.returncode, **counts,
            "skip_reasons": skips[:5], "tail": proc.stdout.strip().splitlines()[-3:],
            "passed": proc.returncode in (0, 5) and not counts["failures"] and not counts["errors"]}


def _losses(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def step_train_bf16(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """fp32 and bf16-autocast training from the same weights over the same batches; per-step losses compared."""
    from fit.train import TrainSettings, train

    steps = 3 if quick else 30
    config = _train_config()
    runs = {}
    for precision in ("fp32", "bf16"):
        settings = TrainSettings(data="procedural:0", steps=steps, batch_size=8, log_every=1, save_every=steps,
                                 tensorboard=False, precision=precision, seed=0, lr=1e-3)
        start = time.perf_counter()
        train(config, settings, str(out / f"train-{precision}"), device=device, progress=False)
        runs[precision] = {"losses": _losses(out / f"train-{precision}"), "seconds": time.perf_counter() - start}
    fp32, bf16 = runs["fp32"]["losses"], runs["bf16"]["losses"]
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(fp32, bf16)]
    return {"steps": steps, "config": "fitv2-tiny", "fp32_losses": fp32, "bf16_losses": bf16,
            "mean_rel_diff": statistics.fmean(rel), "max_rel_diff": max(rel),
            "seconds": {k: round(v["seconds"], 2) for k, v in runs.items()},
            "bf16_differs": fp32 != bf16,                # identical losses: autocast did not take effect
            "passed": all(map(math.isfinite, fp32 + bf16)) and statistics.fmean(rel) <= TRAIN_MAX_REL
            and fp32 != bf16}


def step_ddp_nccl(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """Run under torchrun: an NCCL (gloo on CPU) process group, one DDP step, then fit.train.train in it."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fit.train import TrainSettings, train
    from fit_export.onnx_export import TransformerGraph

    if "LOCAL_RANK" not in os.environ:
        return {"passed": False, "error": "not started by torchrun (scripts/gpu_check.sh runs it under torchrun)"}
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        model = TransformerGraph(_tiny_model(device))
        net = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
        loss = net(*_xl_feed(model.model.config, 2, 16, device)).float().pow(2).mean()
        loss.backward()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
        steps = 2 if quick else 10
        result = train(_train_config(),
                       TrainSettings(data="procedural:0", steps=steps, batch_size=4, log_every=1, save_every=steps,
                                     tensorboard=False), str(out / "train-ddp"), device=device, progress=False)
        return {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "ddp_loss": float(loss.detach()),
                "all_reduced_loss": float(reduced), "grads_finite": grads_finite, "train_steps": result["step"],
                "train_final_loss": result["loss"],
                "passed": grads_finite and math.isfinite(result["loss"]) and dist.get_backend() == backend}
    finally:
        dist.destroy_process_group()


def step_sampling(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """fit.sampling.sample on ``device`` and on CPU from the same noise: the latents must agree."""
    from engines.metrics import cosine
    from fit.flow import SamplerSettings
    from fit.sampling import LatentRequest, request_noise, sample

    _no_tf32()
    model = _tiny_model("cpu")
    requests = [LatentRequest(8, 8, 1), LatentRequest(6, 10, 3)]
    noise = [request_noise(model, r, 7 + i) for i, r in enumerate(requests)]
    results = {}
    for where in ("cpu", device):
        model = model.to(where)
        start = time.perf_counter()
        latents = sample(model, requests, sampler=SamplerSettings("euler", 4 if quick else 20), cfg_scale=1.5,
                         noise=noise, device=where)
        results[where] = ([z.float().cpu().numpy() for z in latents], time.perf_counter() - start)
    cos = min(cosine(a, b) for a, b in zip(results["cpu"][0], results[device][0]))
    max_abs = max(float(abs(a - b).max()) for a, b in zip(results["cpu"][0], results[device][0]))
    return {"device": device, "steps": 4 if quick else 20, "min_cosine": cos, "max_abs_diff": max_abs,
            "seconds": {k: round(v[1], 3) for k, v in results.items()}, "passed": cos >= SAMPLING_MIN_COSINE}


def step_export_onnx(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """Export a package from a model on ``device``; ONNX Runtime (CPU) on it against the model on ``device``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from engines.package import load_manifest
    from fit_export import export_package
    from fit_export.onnx_export import TransformerGraph

    _no_tf32()
    model = _tiny_model(device)
    start = time.perf_counter()
    package = export_package(model, None, out / "package", force=True)
    seconds = time.perf_counter() - start
    manifest = load_manifest(package, verify=True)
    feed = manifest.graph.example_feed(batch=2, seq=12)
    session = ort.InferenceSession(str(package / manifest.transformer.file), providers=["CPUExecutionProvider"])
    got = session.run(None, feed)[0]
    with torch.no_grad():
        ref = TransformerGraph(model)(*[torch.from_numpy(feed[n]).to(device) for n in manifest.graph.INPUT_NAMES])
    ref = ref.float().cpu().numpy()
    scale = float(np.abs(ref).max())
    err = float(np.abs(got - ref).max())
    still_on_device = all(p.device.type == torch.device(device).type for p in model.parameters())
    return {"device": device, "export_seconds": round(seconds, 2), "max_abs": err, "scale": scale,
            "model_left_on_device": still_on_device,
            "passed": still_on_device and err <= EXPORT_MAX_ABS * max(scale, 1e-12)}


def _xl_feed(cfg, batch: int, tokens: int, device: str):
    """The model's inputs for ``batch`` square images of ``tokens`` tokens, built by the graph contract."""
    import numpy as np
    import torch

    from engines.contract import GraphContract

    side = int(math.isqrt(tokens))
    contract = GraphContract(cfg.token_dim, cfg.patch_size ** 2 * cfg.out_channels, cfg.head_dim)
    rng = np.random.default_rng(0)
    padded = contract.padded_batch([(side, side)] * batch, cfg.rope_settings(), rng.integers(0, cfg.num_classes, batch))
    feed = padded.feed(rng.uniform(0, 1, batch), rng.standard_normal(padded.x.shape))
    return tuple(torch.from_numpy(feed[name]).to(device) for name in contract.INPUT_NAMES)


def step_latency(out: Path, device: str = "cuda", quick: bool = False, config: str = "fitv2-xl",
                 shapes=XL_SHAPES, compile_too: bool = True) -> dict:
    """Denoiser latency (the graph-contract forward) eager vs torch.compile, bf16 autocast, random weights."""
    import torch

    from fit.config import preset
    from fit.model import FiT
    from fit_export.onnx_export import TransformerGraph

    torch.manual_seed(0)
    cfg = preset(config)
    graph = TransformerGraph(FiT(cfg).to(device).eval())
    modes = {"eager": graph}
    if compile_too:
        modes["compile"] = torch.compile(graph, dynamic=True)      # one compilation for every shape
    repeats = 3 if quick else 20

    def timed(fn, args) -> float:
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            return begin.elapsed_time(end)
        start = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - start) * 1000

    rows = {shape: {"batch": shape[0], "tokens": shape[1]} for shape in shapes}
    result = {"config": config, "device": device, "dtype": "bf16 autocast", "repeats": repeats}
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        for name, fn in modes.items():                # every eager number first: compiling may run out of time
            for b, n in shapes:
                args = _xl_feed(cfg, b, n, device)
                start = time.perf_counter()
                for _ in range(2):
                    fn(*args)                              # warm-up (compilation for torch.compile)
                rows[b, n][f"{name}_warmup_s"] = round(time.perf_counter() - start, 2)
                rows[b, n][f"{name}_ms"] = statistics.median(timed(fn, args) for _ in range(repeats))
                _write_step(out, "latency", {**result, "rows": list(rows.values()), "passed": False,
                                             "error": "partial: the step did not finish"})
    return {**result, "rows": list(rows.values()),
            "passed": all(math.isfinite(r.get(f"{m}_ms", math.nan)) for r in rows.values() for m in modes)}


QDQ_GATE = {"min_step_cosine": 0.99, "min_psnr_db": 20.0}     # random weights: the plumbing, not the model


def step_tensorrt_qdq(out: Path, device: str = "cuda", quick: bool = False) -> dict:
    """Q/DQ variants -> int8/fp8 engines -> validation against PyTorch, on a tiny package with random weights."""
    from engines.backends.tensorrt.install import gpu_info, tensorrt_status
    from engines.backends.tensorrt.store import FP8_MIN_COMPUTE_CAPABILITY
    from engines.metrics import QualityGate

    missing = tensorrt_status() if device == "cuda" else ["a CUDA device (--device cpu)"]
    if missing:
        return {"skipped": "needs " + "; ".join(missing), "passed": True}
    from fit_export import export_package
    from fit_export.qdq import quantize_for_tensorrt
    from fit_export.tensorrt import build_engines, plan_build
    from fit_export.validate import validate_package

    gpu = gpu_info()
    formats = ["int8"] + (["fp8"] if tuple(gpu.compute_capability) >= FP8_MIN_COMPUTE_CAPABILITY else [])
    source = export_package(_tiny_model("cpu"), None, out / "qdq-source", force=True, include_weights=True,
                            sizes=[(256, 256), (384, 128), (320, 320)], buckets=[256, 400], default_steps=4)
    results = {}
    for fmt in formats:
        package = out / f"qdq-{fmt}"
        start = time.perf_counter()
        entry = quantize_for_tensorrt(source, package, fmt, calibration_images=3, gate=QualityGate(**QDQ_GATE),
                                      force=True)
        quantize_seconds = time.perf_counter() - start
        start = time.perf_counter()
        build_engines(plan_build(package, precision=fmt, batch="1:2"), log=lambda message: None)
        build_seconds = time.perf_counter() - start
        report = validate_package(package, backend="tensorrt", precision=fmt, e2e_steps=4)
        cases = [c for c in report.cases if not c.note.startswith("skipped")]
        results[fmt] = {"quantize_seconds": round(quantize_seconds, 1), "build_seconds": round(build_seconds, 1),
                        "cpu_record_worst": entry["validation"]["worst"],
                        "engine_min_case_cosine": min((c.cosine for c in cases), default=math.nan),
                        "engine_min_step_cosine": report.end_to_end[0].min_step_cosine,
                        "engine_psnr_db": report.end_to_end[0].psnr_db, "validation_passed": report.passed}
    return {"gpu": gpu.name, "compute_capability": list(gpu.compute_capability), "formats": results,
            "fp8_skipped": "fp8" not in formats, "passed": all(r["validation_passed"] for r in results.values())}


STEPS: dict[str, Callable[..., dict]] = {
    "pytest_gpu": step_pytest_gpu,
    "train_bf16": step_train_bf16,
    "ddp_nccl": step_ddp_nccl,
    "sampling": step_sampling,
    "export_onnx": step_export_onnx,
    "latency": step_latency,
    "tensorrt_qdq": step_tensorrt_qdq,
}
# Steps scripts/gpu_check.sh starts under torchrun.
TORCHRUN_STEPS = ("ddp_nccl",)


def run_step(name: str, out: Path, device: str = "cuda", quick: bool = False, **options) -> dict:
    """Run one step (``options``: the latency step's config/shapes/compile_too), catching its failure, and
    write ``out/steps/NAME.json``."""
    start = time.perf_counter()
    try:
        result = STEPS[name](out, device=device, quick=quick, **options)
    except Exception as err:                                          # the report says what broke, and where
        result = {"passed": False, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc().splitlines()[-8:]}
    result = {**result, "wall_seconds": round(time.perf_counter() - start, 2)}
    return _write_step(out, name, result)


def _write_step(out: Path, name: str, result: dict) -> dict:
    result = {"step": name, **result}
    (Path(out) / "steps").mkdir(parents=True, exist_ok=True)
    (Path(out) / "steps" / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------

def environment() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        info["torch"] = None
    for module in ("onnxruntime", "onnx", "tensorrt", "polygraphy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def write_report(out: Path, report_dir=None) -> dict:
    """Merge ``out/steps/*.json`` (in step order; a step that left no file is reported missing) into
    ``gpu_check.json`` and ``gpu_check.md`` in ``report_dir`` (default ``out``)."""
    out = Path(out)
    report_dir = Path(report_dir or out)
    report_dir.mkdir(parents=True, exist_ok=True)
    steps = []
    for name in STEPS:
        path = out / "steps" / f"{name}.json"
        steps.append(json.loads(path.read_text()) if path.is_file() else
                     {"step": name, "passed": False, "error": "no result (the step was killed or timed out)"})
    report = {"environment": environment(), "passed": all(s["passed"] for s in steps), "steps": steps}
    (report_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (report_dir / "gpu_check.md").write_text(markdown(report))
    return report


def _summary(step: dict) -> str:
    if "error" in step:
        return step["error"]
    if "skipped" in step:
        return f"skipped: {step['skipped']}"
    name = step["step"]
    if name == "pytest_gpu":
        return (f"{step['tests']} tests, {step['failures']} failed, {step['errors']} errors, {step['skipped']} "
                f"skipped" + (f" ({step['skip_reasons'][0]})" if step.get("skip_reasons") else ""))
    if name == "train_bf16":
        return (f"{step['steps']} steps: bf16 vs fp32 loss mean rel diff {step['mean_rel_diff']:.3%}, max "
                f"{step['max_rel_diff']:.3%}")
    if name == "ddp_nccl":
        return (f"{step['backend']} world {step['world_size']}, DDP step + {step['train_steps']} training steps, "
                f"final loss {step['train_final_loss']:.4f}")
    if name == "sampling":
        return f"{step['device']} vs cpu: min cosine {step['min_cosine']:.7f}, max abs diff {step['max_abs_diff']:.2e}"
    if name == "export_onnx":
        return f"max abs {step['max_abs']:.2e} (scale {step['scale']:.3g}), export {step['export_seconds']} s"
    if name == "latency":
        return f"{len(step['rows'])} shapes of {step['config']} ({step['dtype']})"
    if name == "tensorrt_qdq":
        return "; ".join(f"{fmt}: engine min case cosine {r['engine_min_case_cosine']:.5f}, image "
                         f"{r['engine_psnr_db']:.1f} dB, build {r['build_seconds']} s" for fmt, r in
                         step["formats"].items()) + (" (fp8: GPU below sm_89)" if step["fp8_skipped"] else "")
    return ""


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# GPU check", "", f"{env['date']}: {env.get('gpu', 'no GPU')}, torch {env.get('torch')} (CUDA "
             f"{env.get('cuda')}), Python {env['python']}, onnxruntime {env.get('onnxruntime')}, tensorrt "
             f"{env.get('tensorrt')}. Produced by `scripts/gpu_check.sh`.", "",
             "| step | result | summary | seconds |", "|---|---|---|---|"]
    for step in report["steps"]:
        lines.append(f"| {step['step']} | {'ok' if step['passed'] else 'FAIL'} | {_summary(step)} | "
                     f"{step.get('wall_seconds', '')} |")
    latency = next((s for s in report["steps"] if s["step"] == "latency" and "rows" in s), None)
    if latency:
        modes = [m for m in ("eager", "compile") if any(f"{m}_ms" in r for r in latency["rows"])]
        lines += ["", f"Denoiser latency, {latency['config']} random weights, {latency['dtype']}, median of "
                      f"{latency['repeats']} (ms):", "",
                  "| batch | tokens | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
        for row in latency["rows"]:
            lines.append(f"| {row['batch']} | {row['tokens']} | "
                         + " | ".join(f"{row[m + '_ms']:.2f}" if m + "_ms" in row else "-" for m in modes) + " |")
    lines += ["", f"**{'PASSED' if report['passed'] else 'FAILED'}**", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the steps in order (torchrun steps marked)")
    run = sub.add_parser("run", help="run one step")
    run.add_argument("step", choices=list(STEPS))
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--device", default="cuda")
    run.add_argument("--quick", action="store_true", help="fewer steps and repeats (plumbing checks)")
    run.add_argument("--config", default="fitv2-xl", help="latency: model preset (default fitv2-xl)")
    run.add_argument("--shapes", default=",".join(f"{b}x{n}" for b, n in XL_SHAPES),
                     help="latency: BATCHxTOKENS,... (tokens a square number)")
    run.add_argument("--no-compile", action="store_true", help="latency: eager only")
    rep = sub.add_parser("report", help="merge the step results into gpu_check.json/.md")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--report-dir", type=Path, help="where gpu_check.json/.md go (default: --out)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in STEPS:
            print(f"{name} torchrun" if name in TORCHRUN_STEPS else name)
        return 0
    if args.command == "run":
        options = {}
        if args.step == "latency":
            shapes = tuple(tuple(int(v) for v in item.split("x")) for item in args.shapes.split(","))
            options = {"config": args.config, "shapes": shapes, "compile_too": not args.no_compile}
        result = run_step(args.step, args.out, args.device, args.quick, **options)
        print(f"{args.step}: {'ok' if result['passed'] else 'FAIL'} {_summary(result)}")
        return 0 if result["passed"] else 1
    report = write_report(args.out, args.report_dir)
    print((Path(args.report_dir or args.out) / "gpu_check.md").read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
