"""``fit-run``: generate images from a model package on ONNX Runtime (or TensorRT). Thin wrapper over engines.

Every mistake a user can make ends as one line on stderr and exit status 2, before any output file is written.
Images are generated a few at a time and each is saved (atomically) as soon as it is done, so any ``--num``
starts at once and an interruption (Ctrl-C, a full disk) leaves only complete files: those already listed on
stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import click
from PIL import Image
from cli.common import Command, Interrupted, Passed, check_writable, runtime_options, user_errors
from engines.errors import BackendError, PackageError
from engines.pipeline import GenerationError, load
from engines.png import save_png, tile_images
from engines.rope import EXTRAPOLATIONS
from engines.sampler import MAX_CFG, MAX_STEPS, SAMPLERS

USER_ERRORS = (PackageError, BackendError, GenerationError, OSError)
CHUNK = 8           # images sampled together in one step loop; each is written as soon as its chunk finishes


def output_path(out: Path, index: int, count: int, grid: bool) -> Path:
    """``out`` for one image or a grid; ``stem-1.png`` ... ``stem-N.png`` for several (index 0-based)."""
    if count == 1 or grid:
        return out
    return out.with_name(f"{out.stem}-{index + 1}{out.suffix}")


@click.command(cls=Command, prog="fit-run")
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--width", "-W", type=Passed("int"), default=None, help="Image width in pixels (default: the model's).")
@click.option("--height", "-H", type=Passed("int"), default=None,
              help="Image height in pixels (default: the model's).")
@click.option("--class", "label", default=None,
              help="Class id or name, or a comma-separated list cycled over --num (default: unconditional).")
@click.option("--num", "-n", type=Passed("int"), default=1, show_default=True,
              help="Number of images; each is written as soon as it is done.")
@click.option("--steps", type=Passed("int"), default=None,
              help=f"Sampler steps, 1 to {MAX_STEPS:,} (default: the package's).")
@click.option("--sampler", type=Passed("name", SAMPLERS, numeric=False), default=None,
              help="Integrator (default: the package's).")
@click.option("--cfg", type=Passed("float"), default=None,
              help=f"Classifier-free guidance scale, 0 to {MAX_CFG:g}; 1 = off.")
@click.option("--seed", type=Passed("int"), default=0, show_default=True,
              help="Seed of image 1 (0 to 2**64 - 1); image i uses seed + i - 1.")
@click.option("--time-shift", type=Passed("float"), default=None,
              help="Time shift S of the fixed-grid samplers (euler, heun, ab2, unipc): shorter steps near noise for "
                   "S > 1 (default: the package's).")
@click.option("--tail-compression", type=Passed("float"), default=None,
              help="Tail compression C of the same samplers, 0 to 1: each time t of the grid becomes t + C t (1 - t), "
                   "shorter steps near data (default: the package's).")
@click.option("--extrapolation", type=Passed("name", EXTRAPOLATIONS, numeric=False), default=None,
              help="RoPE extrapolation for sizes beyond training (default: the package's).")
@runtime_options
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("fit-run.png"), show_default=True,
              help="Output PNG; several images become NAME-1.png, NAME-2.png, ... unless --grid.")
@click.option("--grid", is_flag=True, help="Write several images as one grid PNG.")
@click.option("--snap", is_flag=True, help="Round a size off the model's pixel grid to the nearest valid one.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(package, width, height, label, num, steps, sampler, cfg, seed, time_shift, tail_compression, extrapolation,
         backend, precision, threads, out, grid, snap, quiet):
    """Generate images from a FiT model PACKAGE (default: the model shipped with fit-toolkit)."""
    written = 0
    try:
        with user_errors(*USER_ERRORS):
            request = dict(width=width, height=height, label=label, seed=seed, num=num, snap=snap, steps=steps,
                           sampler=sampler, cfg=cfg, extrapolation=extrapolation, time_shift=time_shift,
                           tail_compression=tail_compression)
            for path in run(package, request, backend, precision, threads, out, grid, quiet):
                click.echo(str(path))
                written += 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {written} complete image file(s) written") from None


def run(package, request: dict, backend: str, precision, threads: int, out: Path, grid: bool,
        quiet: bool) -> Iterator[Path]:
    """Check the request (``Pipeline.prepare`` arguments), then generate its images CHUNK at a time and save each
    as it is done; yields the paths written."""
    if out.suffix.lower() != ".png":
        raise GenerationError(f"output {out} must end in .png")
    num = request["num"]
    check_writable(output_path(out, 0, num if isinstance(num, int) else 1, grid))   # numbered files: same folder
    with load(package, backend=backend, precision=precision, threads=threads) as pipe:
        jobs = pipe.prepare(**request)
        size = (jobs[0].request.width, jobs[0].request.height)
        wanted = (request["width"] or pipe.default_size[0], request["height"] or pipe.default_size[1])
        if size != wanted:
            click.echo(f"fit-run: snapped {wanted[0]}x{wanted[1]} to {size[0]}x{size[1]}", err=True)
        if grid and num > 1 and num * size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
            raise GenerationError(f"a grid of {num} images of {size[0]}x{size[1]} would have about "
                                  f"{num * size[0] * size[1]:,} pixels, more than Pillow opens without a "
                                  f"decompression-bomb warning ({Image.MAX_IMAGE_PIXELS:,}); drop --grid")
        from tqdm import tqdm

        settings = jobs[0].settings
        steps_per_chunk = settings.sampler.steps if settings.sampler.method != "dopri5" else None
        chunks = range(0, num, CHUNK)
        total = steps_per_chunk * len(chunks) if steps_per_chunk else None
        grid_images, grid_params = [], []
        with tqdm(total=total, desc=f"{settings.sampler.method} x{num}", unit="step", disable=quiet, leave=False,
                  file=sys.stderr) as bar:
            for chunk, first in enumerate(chunks):
                offset = chunk * (steps_per_chunk or 0)

                def progress(done, _total, _t):
                    bar.update(max(0, offset + done - bar.n))

                chunk_jobs = jobs[first:first + CHUNK]
                images = pipe.generate_many(chunk_jobs, callback=progress)
                for i, (job, image) in enumerate(zip(chunk_jobs, images)):
                    params = pipe.parameters(job)
                    if grid and num > 1:
                        grid_images.append(image)
                        grid_params.append(params)
                    else:
                        yield save_png(image, output_path(out, first + i, num, grid), params)
        if grid_images:
            yield save_png(tile_images(grid_images), out, {"grid": grid_params})


if __name__ == "__main__":  # pragma: no cover
    main()
