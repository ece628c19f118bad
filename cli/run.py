"""``fit-run``: generate images from a model package on ONNX Runtime (or TensorRT). Thin wrapper over engines.

Every mistake a user can make ends as one line on stderr and exit status 2, with no output file left behind.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import BACKEND, Command, Named, check_writable, user_errors
from engines.backend import BackendError
from engines.manifest import PackageError
from engines.pipeline import GenerationError, Request, image_grid, load, save_png
from engines.rope import EXTRAPOLATIONS, canonical_extrapolation
from engines.sampler import SAMPLERS

USER_ERRORS = (PackageError, BackendError, GenerationError, OSError)


def output_paths(out: Path, count: int, grid: bool) -> list[Path]:
    """``out`` for one image or a grid; ``stem-1.png`` ... ``stem-N.png`` for several."""
    if count == 1 or grid:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def check_outputs(paths: list[Path]) -> None:
    for path in paths:
        if path.suffix.lower() != ".png":
            raise GenerationError(f"output {path} must end in .png")
        check_writable(path)


@click.command(cls=Command, prog="fit-run")
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--width", "-W", type=int, default=None, help="Image width in pixels (default: the model's).")
@click.option("--height", "-H", type=int, default=None, help="Image height in pixels (default: the model's).")
@click.option("--class", "label", default=None,
              help="Class id or name, or a comma-separated list cycled over --num (default: unconditional).")
@click.option("--num", "-n", type=click.IntRange(min=1), default=1, show_default=True, help="Number of images.")
@click.option("--steps", type=int, default=None, help="Sampler steps (default: the package's).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Integrator (default: the package's).")
@click.option("--cfg", type=float, default=None, help="Classifier-free guidance scale, >= 0; 1 = off.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of image 1; image i uses seed + i - 1.")
@click.option("--extrapolation", type=Named(EXTRAPOLATIONS, canonical_extrapolation), default=None,
              help="RoPE extrapolation for sizes beyond training (default: the package's).")
@click.option("--backend", type=BACKEND, default="onnxruntime", show_default=True)
@click.option("--precision", default=None,
              help="Transformer variant: a name the package lists or a precision (fp32, int8, fp16; OpenVINO also "
                   "bf16, TensorRT fp16/bf16 engines). Default: the package's default variant.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Runtime threads (ONNX Runtime intra-op, OpenVINO inference; 0 = auto).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("fit-run.png"), show_default=True,
              help="Output PNG; several images become NAME-1.png, NAME-2.png, ... unless --grid.")
@click.option("--grid", is_flag=True, help="Write several images as one grid PNG.")
@click.option("--snap", is_flag=True, help="Round a size off the model's pixel grid to the nearest valid one.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(package, width, height, label, num, steps, sampler, cfg, seed, extrapolation, backend, precision, threads,
         out, grid, snap, quiet):
    """Generate images from a FiT model PACKAGE (default: the model shipped with fit-toolkit)."""
    with user_errors(*USER_ERRORS):
        paths = run(package, width, height, label, num, steps, sampler, cfg, seed, extrapolation, backend, threads,
                    out, grid, snap, quiet, precision)
    for path in paths:
        click.echo(str(path))


def run(package, width, height, label, num, steps, sampler, cfg, seed, extrapolation, backend, threads, out, grid,
        snap, quiet, precision=None) -> list[Path]:
    if steps is not None and steps < 1:
        raise GenerationError(f"--steps must be at least 1, got {steps}")
    if cfg is not None and not cfg >= 0:
        raise GenerationError(f"--cfg must be a non-negative number, got {cfg}")
    paths = output_paths(out, num, grid)
    check_outputs(paths)
    options = {"threads": threads} if backend in ("onnxruntime", "openvino") else {}
    with load(package, backend=backend, precision=precision, **options) as pipe:
        wanted = (pipe.default_size[0] if width is None else width, pipe.default_size[1] if height is None else height)
        size = pipe.check_size(*wanted, snap=snap)
        if size != wanted:
            click.echo(f"fit-run: snapped {wanted[0]}x{wanted[1]} to {size[0]}x{size[1]}", err=True)
        class_ids = [pipe.resolve_label(part) for part in label.split(",")] if label else [pipe.resolve_label(None)]
        settings = pipe.settings(steps=steps, sampler=sampler, cfg=cfg, extrapolation=extrapolation)
        requests = [Request(size[0], size[1], class_ids[i % len(class_ids)], seed + i) for i in range(num)]
        from tqdm import tqdm

        total = settings.sampler.steps if settings.sampler.method != "dopri5" else None
        with tqdm(total=total, desc=f"{settings.sampler.method} x{num}", unit="step", disable=quiet, leave=False,
                  file=sys.stderr) as bar:
            def progress(done, _total, _t):
                bar.update(done - bar.n)

            images = pipe.generate_many(requests, settings, callback=progress)
        params = [pipe.parameters(r, settings) for r in requests]
    return write_images(images, params, paths, grid)


def write_images(images, params, paths, grid) -> list[Path]:
    """Save every image (atomically each); on any failure remove the files already written."""
    if grid and len(images) > 1:
        images, params = [image_grid(images)], [{"grid": params}]
    written: list[Path] = []
    try:
        for image, parameters, path in zip(images, params, paths):
            written.append(save_png(image, path, parameters))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


if __name__ == "__main__":  # pragma: no cover
    main()
