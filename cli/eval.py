"""``fit-eval``: class accuracy and Fréchet distance of a FiTv2 trained on procedural shapes, across sizes and RoPE
extrapolation methods."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from cli.common import Command, UserError, check_writable, user_errors
from engines.atomic import atomic_write
from engines.buckets import parse_sizes
from engines.rope import EXTRAPOLATIONS, canonical_extrapolation
from engines.sampler import SAMPLERS, SHIFTED, SamplerSettings


def _config_next_to(checkpoint: str):
    """The network config beside a checkpoint: fit-train's config.yaml, or a model package's manifest.json."""
    from engines.package import load_manifest
    from fit.config import FiTConfig

    here = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.exists(os.path.join(here, "config.yaml")):
        return os.path.join(here, "config.yaml")
    if os.path.exists(os.path.join(here, "manifest.json")):
        return FiTConfig.from_dict(load_manifest(here).model.config)
    raise ValueError(f"no --config given and neither config.yaml nor a package manifest.json next to {checkpoint}")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _outputs(out: str) -> tuple[Path, Path]:
    """The table file and the rows file next to it (.json), both checked writable before any work."""
    table = Path(out)
    if table.suffix.lower() == ".json":
        raise UserError(f"--out {out}: the rows are written as NAME.json next to the table; give the table a "
                        f"name such as table.md")
    rows = table.with_suffix(".json")
    for path in (table, rows):
        check_writable(path)
    return table, rows


@click.command(cls=Command, prog="fit-eval", extra="train")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="EMA weights (.safetensors/.pt) or a fit-train checkpoint (its EMA is used).")
@click.option("--config", "config_spec", help="Preset or YAML of the network. Default: config.yaml next to "
              "--checkpoint (what fit-train writes) or the manifest of the package it is in.")
@click.option("--num", "num_per_class", type=int, default=16, show_default=True, help="Samples per class and cell.")
@click.option("--sizes", help="Comma-separated WIDTHxHEIGHT in pixels. Default: Table III's rows scaled to the "
              "model's token budget (square, 2:1 and 3:1 wide inside it; 1.56x, 2.25x and wider grids beyond it).")
@click.option("--methods", default="all", show_default=True,
              help=f"Comma-separated RoPE extrapolation methods ({', '.join(EXTRAPOLATIONS)}) or 'all' (Table "
                   f"III's: every one but ntk-by-parts).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="heun", show_default=True)
@click.option("--steps", type=int, default=16, show_default=True, help="Sampler steps.")
@click.option("--time-shift", type=float, default=1.0, show_default=True,
              help=f"Bends the time grid of {', '.join(SHIFTED)}: above 1, shorter steps near noise (the SD3/Flux "
                   f"shift t = u / (u + s (1 - u))); 1 = even steps.")
@click.option("--tail-compression", type=float, default=0.0, show_default=True,
              help="Bends the same grid near data, 0 to 1: each time t becomes t + c t (1 - t) after the shift "
                   "(shorter steps near t = 1); 0 = none.")
@click.option("--cfg", type=float, default=4.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--vae", type=click.Path(file_okay=False),
              help="For a latent model: the diffusers AutoencoderKL folder its latents come from.")
@click.option("--classifier", type=click.Path(dir_okay=False), help="Shape classifier weights (default: shipped).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table (Markdown) here; rows as JSON "
              "next to it (.json).")
def main(checkpoint, config_spec, num_per_class, sizes, methods, sampler, steps, time_shift, tail_compression, cfg,
         seed, vae, classifier, threads, out):
    """Generate NUM samples per class at each size with each RoPE extrapolation method; report the shape
    classifier's accuracy and the Fréchet distance on its features (a table shaped like FiTv2's Table III)."""
    outputs = _outputs(out) if out else None
    with user_errors(ValueError):                        # BucketError: a bad --sizes; SettingError
        sampler_settings = SamplerSettings(sampler, steps=steps, time_shift=time_shift,
                                           tail_compression=tail_compression)
        size_list = [(h, w) for w, h in parse_sizes(sizes)] if sizes is not None else None    # (height, width)
        method_list = None if methods.strip().lower() == "all" else [canonical_extrapolation(m)
                                                                     for m in _csv(methods)]
    if method_list == []:
        raise UserError("give at least one method")
    if num_per_class < 2:
        raise UserError("--num must be at least 2 (the Fréchet distance needs a covariance)")
    import torch

    from fit.eval.classifier import load_classifier
    from fit.eval.evaluate import METHODS, EvalSettings, LatentDecoder, default_sizes, evaluate, format_table
    from fit.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    with user_errors(ValueError, OSError, ImportError):  # EvalError, ConfigError, CheckpointError, DataError
        if config_spec is None:
            config_spec = _config_next_to(checkpoint)
        model = load_model(config_spec, checkpoint)
        clf = load_classifier(classifier)
        decoder = LatentDecoder(vae) if vae else None
        if size_list is None:
            size_list = default_sizes(model.config.context_size,
                                      model.patch_size * (decoder.downsample if decoder else 1))
        settings = EvalSettings(num_per_class, sampler_settings, cfg, seed)
        rows = evaluate(model, clf, size_list, method_list or list(METHODS),
                        progress=lambda m: click.echo(m, err=True), settings=settings, decoder=decoder)
    table = format_table(rows, budget=model.config.context_size, settings=settings)
    click.echo(table)
    if outputs:
        with user_errors(OSError):
            atomic_write(outputs[0], table + "\n")
            atomic_write(outputs[1], json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    main()
