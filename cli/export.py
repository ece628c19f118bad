"""``fit-export``: model packages (``onnx``), validation against PyTorch (``validate``), the ONNX Runtime- and
OpenVINO-tuned graph copies (``ort-optimize``, ``ov-optimize``), int8 and fp16 variants (``quantize``, ``fp16``),
TensorRT engines (``build``, ``trt-check``). Thin wrappers."""
from __future__ import annotations

import os
import sys

import click

from cli.common import BACKEND, Group, Named, UserError, check_writable, user_errors
from cli.trt import build, trt_check
from engines.buckets import BucketError, parse_sizes
from engines.contract import PRECISIONS
from engines.errors import PackageError
from engines.manifest import QUANTIZATION_MODES
from engines.rope import EXTRAPOLATIONS, canonical_extrapolation
from engines.sampler import SAMPLERS
from engines.backends.tensorrt.store import QDQ_HIGH_PRECISIONS, QDQ_PRECISIONS
from engines.metrics import QualityGate


def _user_errors():
    # Imported lazily so ``fit-export --help`` does not load torch.
    from fit.config import ConfigError
    from fit.loading import CheckpointError
    from fit_export.onnx_export import ExportError
    from fit_export.validate import ValidationError
    from engines.errors import BackendError
    return ConfigError, CheckpointError, ExportError, ValidationError, PackageError, BackendError


def _buckets(text):
    if not text:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() and int(t) > 0 for t in items):
        raise click.BadParameter(f"{text!r} is not a list of positive token counts (e.g. 256,1024)",
                                 param_hint="--buckets")
    return [int(t) for t in items]


@click.group(cls=Group, prog="fit-export", extra="export")
def main():
    """Export FiT models to ONNX model packages (onnx), check them against PyTorch (validate), add the ONNX
    Runtime- or OpenVINO-tuned graph (ort-optimize, ov-optimize), an int8 or fp8 variant (quantize) or an fp16
    variant (fp16), and build and check TensorRT engines (build, trt-check)."""


@main.command("onnx", short_help="Write a model package (ONNX graphs + manifest) from a checkpoint.")
@click.option("--config", "config", required=True, help="Preset name (fitv2-xl, fitv2-tiny, ...) or official YAML.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights (.safetensors / .bin / .pt).")
@click.option("--random-weights", is_flag=True, help="Export freshly initialised weights (tests, benchmarks).")
@click.option("--out", "out", required=True, type=click.Path(), help="Package directory to write.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--vae", "vae", type=click.Path(file_okay=False), help="Local diffusers AutoencoderKL directory; "
              "adds vae_decoder.onnx.")
@click.option("--name", help="Package name in the manifest (default: the preset or output directory name).")
@click.option("--sizes", help="Declared pixel sizes WIDTHxHEIGHT,... (default: training budget, 5 aspect ratios).")
@click.option("--buckets", help="Token budgets, e.g. 256,1024 (default: training budget + larger sizes).")
@click.option("--include-weights", is_flag=True, help="Store the PyTorch weights so validate needs no checkpoint.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (docs/export.md says why 18).")
@click.option("--class-names", help="Comma-separated class names, one per class (fit-run --class NAME).")
@click.option("--cfg", "default_cfg", type=float, default=1.5, show_default=True,
              help="Default guidance scale recorded for runtimes.")
@click.option("--sampler", "default_sampler", type=click.Choice(SAMPLERS), default="euler", show_default=True,
              help="Default sampler recorded for runtimes.")
@click.option("--steps", "default_steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Default sampler steps recorded for runtimes.")
@click.option("--time-shift", "default_time_shift", type=float, default=1.0, show_default=True,
              help="Default time shift of the fixed-grid samplers (euler, heun, ab2, unipc) recorded for runtimes.")
@click.option("--tail-compression", "default_tail_compression", type=float, default=0.0, show_default=True,
              help="Default tail compression (0 to 1) of the fixed-grid samplers recorded for runtimes.")
@click.option("--force", is_flag=True, help="Replace an existing package at --out.")
def onnx_command(config, checkpoint, random_weights, out, precision, vae, name, sizes, buckets, include_weights,
                 opset, class_names, default_cfg, default_sampler, default_steps, default_time_shift,
                 default_tail_compression, force):
    """Write a model package: transformer.onnx (+ vae_decoder.onnx) and manifest.json."""
    if checkpoint is None and not random_weights:
        raise UserError("pass --checkpoint PATH (or --random-weights for an untrained model)")
    if checkpoint is not None and random_weights:
        raise UserError("--checkpoint and --random-weights exclude each other")
    with user_errors(BucketError):
        sizes = parse_sizes(sizes) if sizes else None
    buckets = _buckets(buckets)
    errors = _user_errors()
    from fit_export.package import export_package
    with user_errors(*errors):
        path = export_package(config, checkpoint, out, precision=precision, vae_dir=vae, name=name, force=force,
                              sizes=sizes, buckets=buckets, include_weights=include_weights, opset=opset,
                              class_names=[c.strip() for c in class_names.split(",")] if class_names else None,
                              default_cfg=default_cfg, default_sampler=default_sampler, default_steps=default_steps,
                              default_time_shift=default_time_shift,
                              default_tail_compression=default_tail_compression)
    click.echo(f"wrote {path}")


@main.command("validate", short_help="Compare a package's ONNX graph or TensorRT engines with PyTorch.")
@click.argument("package", type=click.Path())
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights the package was exported from "
              "(default: the package's weights.safetensors).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--provider", "providers", multiple=True, help="ONNX Runtime execution provider(s) "
              "(default: CPU, plus CUDA when available).")
@click.option("--method", "methods", multiple=True, type=Named(EXTRAPOLATIONS, canonical_extrapolation),
              help="RoPE extrapolation method(s) to test (default: every method the manifest lists).")
@click.option("--e2e-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Euler steps of the end-to-end sampling case.")
@click.option("--backend", type=BACKEND, default="onnxruntime", show_default=True,
              help="Run the package's ONNX graph on ONNX Runtime, or its TensorRT engines (needs a GPU).")
@click.option("--precision", help="Transformer variant or precision to validate (fp32, int8, ...; OpenVINO: f32 or "
              "bf16; TensorRT: which engines, fp32/fp16/bf16/int8/fp8, default the newest matching build).")
@click.option("--recorded", is_flag=True, help="Print the quality records the package's Q/DQ variants were written "
              "with (measured on the CPU per size and extrapolation method) and run nothing.")
def validate_command(package, checkpoint, report, providers, methods, e2e_steps, backend, precision, recorded):
    """Compare the package's ONNX graph or TensorRT engines with the PyTorch reference; exit 1 on a failure. The
    TensorRT int8/fp8 engines are also shown with the CPU record of the Q/DQ variant they were built from."""
    if report:
        check_writable(report)
    errors = _user_errors()
    with user_errors(*errors):
        from fit_export.qdq import recorded_quality
        records = recorded_quality(package, None if recorded else precision if backend == "tensorrt" else "")
    for text, _ in records:
        click.echo(text)
    if recorded:
        if not records:
            raise UserError(f"{package} holds no Q/DQ variant with a quality record (fit-export quantize --for "
                            f"tensorrt writes one)")
        sys.exit(0 if all(passed for _, passed in records) else 1)
    with user_errors(*errors):
        from fit_export.validate import validate_package
        result = validate_package(package, checkpoint=checkpoint, backend=backend, providers=providers or None,
                                  precision=precision, methods=methods or None, e2e_steps=e2e_steps)
        text = result.table()
    click.echo(text)
    if report:
        try:
            result.write_json(report)
        except OSError as e:
            raise UserError(f"cannot write the report {report}: {e.strerror}") from e
        click.echo(f"report: {report}")
    sys.exit(0 if result.passed else 1)


@main.command("quantize", short_help="Write a package with an int8 variant (ONNX Runtime) or an int8/fp8 Q/DQ "
              "variant (TensorRT).")
@click.argument("package", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(), help="Package directory to write.")
@click.option("--for", "runtime", type=click.Choice(("onnxruntime", "tensorrt")), default="onnxruntime",
              show_default=True, help="onnxruntime: an int8 graph for ONNX Runtime (and OpenVINO with --from fp32); "
              "tensorrt: a Q/DQ graph TensorRT builds int8/fp8 engines from, gated on its quality on the CPU.")
@click.option("--format", "fmt", type=click.Choice(QDQ_PRECISIONS), default="int8", show_default=True,
              help="--for tensorrt: int8 or fp8 (E4M3) matrix products.")
@click.option("--mode", type=click.Choice(QUANTIZATION_MODES), default=None,
              help="--for onnxruntime: dynamic (default; activations quantized per call) or static (QDQ with ranges "
                   "calibrated on the package's own sampling trajectories). TensorRT variants are always static.")
@click.option("--per-channel", is_flag=True, help="One weight scale per output channel (better quality; TensorRT "
              "variants always have it).")
@click.option("--calibration-images", type=click.IntRange(min=1), default=None,
              help="Images sampled to record calibration activations (default 8; --for tensorrt: one per declared "
                   "size, at least 8).")
@click.option("--calibration-sizes", help="--for tensorrt: calibrate on these sizes WIDTHxHEIGHT,... only (default: "
              "every declared size).")
@click.option("--high-precision", type=click.Choice(QDQ_HIGH_PRECISIONS), default="fp16", show_default=True,
              help="--for tensorrt: what the rest of the graph computes in (the typed conversion of fit-export build).")
@click.option("--min-step-cosine", type=float, default=QualityGate.min_step_cosine, show_default=True,
              help="--for tensorrt gate: per-step cosine against fp32, every step of every size and method.")
@click.option("--min-psnr", type=float, default=QualityGate.min_psnr_db, show_default=True,
              help="--for tensorrt gate: image PSNR (dB) against fp32 from the same seeds, every size and method.")
@click.option("--max-accuracy-drop", type=float, default=QualityGate.max_accuracy_drop, show_default=True,
              help="--for tensorrt gate: shape-accuracy drop against fp32 at any training size (default model).")
@click.option("--keep-default", is_flag=True, help="Keep the package's default variant; int8 runs with "
              "--precision int8 (default: int8 becomes the default; TensorRT variants never do).")
@click.option("--ort-format", is_flag=True, help="Also write the ORT-format model and the operator configuration "
              "of a reduced ONNX Runtime build.")
@click.option("--from", "source", help="fp32 variant to quantize (default: the one ONNX Runtime runs, the tuned copy "
              "when present; 'fp32': the standard graph, so OpenVINO runs the int8 variant too).")
@click.option("--no-accuracy", is_flag=True, help="Skip the shape-accuracy part of the validation record.")
@click.option("--force", is_flag=True, help="Replace an existing package at --out.")
def quantize_command(package, out, runtime, fmt, mode, per_channel, calibration_images, calibration_sizes,
                     high_precision, min_step_cosine, min_psnr, max_accuracy_drop, keep_default, ort_format, source,
                     no_accuracy, force):
    """Write --out: PACKAGE plus an int8 variant for ONNX Runtime (transformer.int8.onnx: MatMul/Gemm weights in
    int8, onnxruntime.quantization) with a validation record against fp32, or with --for tensorrt a Q/DQ variant
    (transformer.trt-int8.onnx / transformer.trt-fp8.onnx) whose quality per size and extrapolation method is
    measured on the CPU first: below the gate nothing is written (one line naming the worst case, exit 2)."""
    from engines.pipeline import GenerationError
    from fit_export.onnx_export import ExportError
    from fit_export.ort_format import OrtFormatError
    from fit_export.quantize import QuantizeError, quantize_package
    progress = lambda message: click.echo(message, err=True)
    errors = (QuantizeError, OrtFormatError, ExportError, PackageError, GenerationError, BucketError, OSError)
    if runtime == "tensorrt":
        from fit_export.qdq import format_record, quantize_for_tensorrt
        given = [flag for flag, value in (("--mode dynamic", mode == "dynamic"), ("--per-channel", per_channel),
                                          ("--keep-default", keep_default), ("--ort-format", ort_format),
                                          ("--from", source)) if value]
        if given:
            raise UserError(f"{given[0]} does not apply to --for tensorrt (Q/DQ variants are static, per channel, "
                            f"made from transformer.onnx and never the default variant)")
        with user_errors(BucketError):
            sizes = parse_sizes(calibration_sizes) if calibration_sizes else None
        gate = QualityGate(min_step_cosine, min_psnr, max_accuracy_drop)
        with user_errors(*errors):
            entry = quantize_for_tensorrt(package, out, fmt, high_precision, calibration_images, sizes, gate,
                                          accuracy=not no_accuracy, force=force, progress=progress)
        click.echo(format_record(entry["name"], entry["validation"]))
        click.echo(f"wrote {out}: {entry['file']} ({fmt} Q/DQ for TensorRT, {high_precision} elsewhere); build it "
                   f"with: fit-export build {out} --precision {fmt}")
        return
    if fmt != "int8" or calibration_sizes or high_precision != "fp16":
        raise UserError("--format, --calibration-sizes and --high-precision are for --for tensorrt (Q/DQ variants); "
                        "ONNX Runtime's variant is int8")
    mode = mode or "dynamic"
    with user_errors(*errors):
        entry = quantize_package(package, out, mode=mode, per_channel=per_channel,
                                 calibration_images=calibration_images or 8, force=force, keep_default=keep_default,
                                 accuracy=not no_accuracy, ort_format=ort_format, source=source, progress=progress)
    v = entry["validation"]
    click.echo(f"wrote {out}: {entry['file']} ({mode}{', per channel' if per_channel else ''}); vs fp32: case "
               f"cosine min {v['min_case_cosine']:.5f}, per-step cosine min {v['min_step_cosine']:.5f}, image PSNR "
               f"{float(v['image_psnr_db']):.1f} dB ({'meets' if v['passed'] else 'below'} the int8 targets)")
    for precision, sizes in v.get("shapes_accuracy", {}).get("accuracy", {}).items():
        click.echo(f"shape accuracy {precision}: " + ", ".join(f"{s} {a * 100:.1f}%" for s, a in sizes.items()))


@main.command("ort-optimize", short_help="Add the ONNX Runtime-tuned graph copy (fused attention and RoPE).")
@click.argument("package", type=click.Path())
def ort_optimize_command(package):
    """Add transformer.ort.onnx (opset 23: attention and RoPE as fused ops, tuned for ONNX Runtime) to a fp32
    package; the ONNX Runtime backend runs it instead of transformer.onnx, which stays unchanged for TensorRT."""
    from fit_export.onnx_export import ExportError
    from fit_export.tune import TuneError, optimize_package
    with user_errors(TuneError, PackageError, ExportError):
        entry = optimize_package(package)
    check = entry["check"]
    click.echo(f"wrote {os.path.join(package, entry['file'])}: {entry['fused_attention']} attention blocks and "
               f"{entry['fused_rotary']} RoPE rotations fused; "
               f"vs transformer.onnx max abs {check['max_abs_relative_to_scale']:.1e} of scale, "
               f"cosine {check['cosine']:.7f}")


@main.command("ov-optimize", short_help="Add the OpenVINO-tuned graph copy (RoPE rotation as one MatMul).")
@click.argument("package", type=click.Path())
def ov_optimize_command(package):
    """Add transformer.ov.onnx (the interleaved RoPE rotation as one MatMul, which OpenVINO runs faster, notably in
    bf16) to a fp32 package; the OpenVINO backend runs it instead of transformer.onnx, which stays unchanged."""
    from fit_export.onnx_export import ExportError
    from fit_export.tune import TuneError, optimize_package
    with user_errors(TuneError, PackageError, ExportError):
        entry = optimize_package(package, runtime="openvino")
    check = entry["check"]
    click.echo(f"wrote {os.path.join(package, entry['file'])}: {entry['fused_rotary']} RoPE rotations as MatMul; "
               f"vs transformer.onnx max abs {check['max_abs_relative_to_scale']:.1e} of scale, "
               f"cosine {check['cosine']:.7f}")


@main.command("fp16", short_help="Add an fp16 variant (for GPUs with float16 arithmetic, e.g. WebGPU shader-f16).")
@click.argument("package", type=click.Path())
@click.option("--from", "source", default="fp32", show_default=True,
              help="fp32 variant to convert (one every runtime runs: the package's standard graph).")
@click.option("--steps", type=click.IntRange(min=1), help="Sampler steps of the images compared with fp32 "
              "(default: the package's).")
def fp16_command(package, source, steps):
    """Add transformer.fp16.onnx to a fp32 package: its graph converted to float16 with the norms, Softmax and
    the summing reductions kept in float32 (the fp16 export's rule), float32 x/v as the package's graph, checked
    against fp32 by images at a training, an off-square and an extrapolated size (PSNR, ONNX Runtime CPU). The
    default variant stays; fit-run --precision fp16 runs it, and so does the web page on WebGPU with shader-f16."""
    from fit_export.fp16_variant import Fp16VariantError, add_fp16_variant
    from fit_export.onnx_export import ExportError
    with user_errors(Fp16VariantError, PackageError, ExportError):
        entry = add_fp16_variant(package, source, steps=steps, progress=lambda message: click.echo(message, err=True))
    check, quality = entry["check"], entry["validation"]
    images = ", ".join(f"{r['kind']} {r['size'][0]}x{r['size'][1]} {float(r['psnr_db']):.1f} dB"
                       for r in quality["images"])
    click.echo(f"wrote {os.path.join(package, entry['file'])}: {check['low_nodes']} nodes in fp16, "
               f"{check['fp32_nodes']} in fp32, graph cosine {check['validation_cosine']:.7f} vs {entry['source']}; "
               f"images vs {entry['source']} on ONNX Runtime CPU: {images}")


main.add_command(build)
main.add_command(trt_check)


if __name__ == "__main__":
    main()
