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

from cli.common import BACKEND, Command, Interrupted, Named, check_writable, user_errors
from engines.errors import BackendError
from engines.errors import PackageError
from engines.pipeline import SEED_LIMIT, GenerationError, Request, load
from engines.png import tile_images, save_png
from engines.rope import EXTRAPOLATIONS, canonical_extrapolation
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
@click.option("--width", "-W", type=int, default=None, help="Image width in pixels (default: the model's).")
@click.option("--height", "-H", type=int, default=None, help="Image height in pixels (default: the model's).")
@click.option("--class", "label", default=None,
              help="Class id or name, or a comma-separated list cycled over --num (default: unconditional).")
@click.option("--num", "-n", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of images; each is written as soon as it is done.")
@click.option("--steps", type=int, default=None, help=f"Sampler steps, 1 to {MAX_STEPS:,} (default: the package's).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Integrator (default: the package's).")
@click.option("--cfg", type=float, default=None, help=f"Classifier-free guidance scale, 0 to {MAX_CFG:g}; 1 = off.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of image 1 (0 to 2**64 - 1); image i uses seed + i - 1.")
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
    written = 0
    try:
        with user_errors(*USER_ERRORS):
            for path in run(package, width, height, label, num, steps, sampler, cfg, seed, extrapolation, backend,
                            threads, out, grid, snap, quiet, precision):
                click.echo(str(path))
                written += 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {written} complete image file(s) written") from None


def run(package, width, height, label, num, steps, sampler, cfg, seed, extrapolation, backend, threads, out, grid,
        snap, quiet, precision=None) -> Iterator[Path]:
    """Generate the images CHUNK at a time and save each as it is done; yields the paths written."""
    if out.suffix.lower() != ".png":
        raise GenerationError(f"output {out} must end in .png")
    check_writable(output_path(out, 0, num, grid))          # numbered files all go to this same folder
    options = {"threads": threads} if backend in ("onnxruntime", "openvino") else {}
    with load(package, backend=backend, precision=precision, **options) as pipe:
        wanted = (pipe.default_size[0] if width is None else width, pipe.default_size[1] if height is None else height)
        size = pipe.check_size(*wanted, snap=snap)
        if size != wanted:
            click.echo(f"fit-run: snapped {wanted[0]}x{wanted[1]} to {size[0]}x{size[1]}", err=True)
        class_ids = [pipe.resolve_label(part) for part in label.split(",")] if label else [pipe.resolve_label(None)]
        settings = pipe.settings(steps=steps, sampler=sampler, cfg=cfg, extrapolation=extrapolation)

        def request(i: int) -> Request:
            return pipe.check_request(Request(size[0], size[1], class_ids[i % len(class_ids)], seed + i))

        request(0)                                      # size, class and seed of image 1, before any work
        if seed >= 0 and seed + num - 1 >= SEED_LIMIT:
            raise GenerationError(f"--seed {seed} with --num {num} needs seeds up to {seed + num - 1}; seeds must "
                                  f"be below 2**64")
        if grid and num > 1 and num * size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
            raise GenerationError(f"a grid of {num} images of {size[0]}x{size[1]} would have about "
                                  f"{num * size[0] * size[1]:,} pixels, more than Pillow opens without a "
                                  f"decompression-bomb warning ({Image.MAX_IMAGE_PIXELS:,}); drop --grid")
        from tqdm import tqdm

        steps_per_chunk = settings.sampler.steps if settings.sampler.method != "dopri5" else None
        chunks = range(0, num, CHUNK)
        total = steps_per_chunk * len(chunks) if steps_per_chunk else None
        grid_images, grid_params = [], []
        with tqdm(total=total, desc=f"{settings.sampler.method} x{num}", unit="step", disable=quiet, leave=False,
                  file=sys.stderr) as bar:
            for chunk, first in enumerate(chunks):
                requests = [request(i) for i in range(first, min(num, first + CHUNK))]
                offset = chunk * (steps_per_chunk or 0)

                def progress(done, _total, _t):
                    bar.update(max(0, offset + done - bar.n))

                images = pipe.generate_many(requests, settings, callback=progress)
                for i, (req, image) in enumerate(zip(requests, images)):
                    params = pipe.parameters(req, settings)
                    if grid and num > 1:
                        grid_images.append(image)
                        grid_params.append(params)
                    else:
                        yield save_png(image, output_path(out, first + i, num, grid), params)
        if grid_images:
            yield save_png(tile_images(grid_images), out, {"grid": grid_params})


if __name__ == "__main__":  # pragma: no cover
    main()
