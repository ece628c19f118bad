"""``fit-export build`` (TensorRT engines) and ``fit-export trt-check`` (op support, no GPU): thin click wrappers.

Registered in the ``fit-export`` group by ``cli/export.py``.
"""
from __future__ import annotations

import json
import sys

import click

from cli.common import Command, user_errors
from engines.backends.tensorrt.store import PRECISIONS
from engines.buckets import BucketError
from engines.errors import BackendError, PackageError
from engines.package import load_manifest

USER_ERRORS = (PackageError, BucketError, BackendError, ValueError, OSError)


@click.command("build", cls=Command, prog="fit-export",
               short_help="Build TensorRT engines for a package (needs TensorRT and an NVIDIA GPU).")
@click.argument("package", type=click.Path(file_okay=False, path_type=str))
@click.option("--profiles", help="Buckets: pixel sizes WIDTHxHEIGHT (256x256,224x448) and/or token counts "
                                 "(64,256,1024). Default: the package's declared buckets.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Engine precision. Default: the ONNX graph's own. fp16/bf16 from an fp32 package build a typed "
                   "conversion of the graph, checked on ONNX Runtime first; int8/fp8 build the package's Q/DQ variant "
                   "(fit-export quantize --for tensorrt; fp8 needs compute capability 8.9+). Always strongly typed.")
@click.option("--batch", default="1", show_default=True,
              help="Images per call: N, MIN:MAX or MIN:OPT:MAX. With CFG the graph batch is twice this.")
@click.option("--cfg/--no-cfg", default=True, show_default=True,
              help="Whether calls carry cond+uncond halves (classifier-free guidance).")
@click.option("--engine-per-bucket", is_flag=True, help="One engine file per bucket instead of one engine "
                                                        "with one optimization profile per bucket.")
@click.option("--static", is_flag=True, help="Each bucket's sequence length is exactly its budget (requests "
                                             "padded); with a fixed --batch this enables CUDA graphs.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file to load and update. "
              "Default: one per TensorRT version and GPU under ~/.cache/fit-toolkit/tensorrt/.")
@click.option("--optimization-level", type=int, help="TensorRT builder optimization level 0-5 (default 3).")
@click.option("--dry-run", is_flag=True, help="Print the exact profiles and engine file names; no TensorRT needed.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--skip-op-check", is_flag=True, help="Do not check the graph against TensorRT's op support matrix.")
def build(package, profiles, precision, batch, cfg, engine_per_bucket, static, timing_cache, optimization_level,
          dry_run, as_json, skip_op_check):
    """Build TensorRT engines for PACKAGE into PACKAGE/engines/ (needs TensorRT and an NVIDIA GPU)."""
    from fit_export.tensorrt import BuildError, build_engines, plan_build
    from fit_export.trt_ops import check_model

    with user_errors(BuildError, *USER_ERRORS):
        plan = plan_build(package, profiles=profiles, precision=precision, batch=batch, cfg=cfg,
                          engine_per_bucket=engine_per_bucket, static=static, timing_cache=timing_cache,
                          optimization_level=optimization_level)
        click.echo(json.dumps(plan.to_dict(), indent=2) if as_json else plan.describe())
        if not skip_op_check:
            report = check_model(plan.package / plan.onnx_file)
            if not as_json:
                click.echo(report.format())
            if not report.ok:
                raise BuildError(f"{plan.onnx_file} uses operators TensorRT's parser rejects: "
                                 + "; ".join(str(f) for f in report.errors))
        if dry_run:
            return
        for sidecar in build_engines(plan, log=lambda msg: click.echo(msg, err=True)):
            click.echo(f"built {sidecar.with_suffix('.plan')} (+ {sidecar.name})")


@click.command("trt-check", cls=Command, prog="fit-export",
               short_help="Check a graph against TensorRT's ONNX op support (no GPU needed).")
@click.argument("package_or_onnx", type=click.Path(exists=True, path_type=str))
def trt_check(package_or_onnx):
    """Check that every op, attribute and dtype of a package's transformer.onnx (or any .onnx file) is supported
    by TensorRT's ONNX parser. Needs no GPU; exits 1 when something is not supported."""
    from pathlib import Path

    from google.protobuf.message import DecodeError

    from fit_export.trt_ops import check_model

    path = Path(package_or_onnx)
    with user_errors(DecodeError, *USER_ERRORS):
        if path.is_dir():
            path = path / load_manifest(path).transformer.file
        report = check_model(path)
    click.echo(report.format())
    sys.exit(0 if report.ok else 1)
