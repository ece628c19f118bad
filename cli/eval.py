"""``fit-eval``: class accuracy and Fréchet distance of a FiTv2 trained on procedural shapes, across sizes and RoPE
extrapolation methods."""
from __future__ import annotations

import json
import os
import sys

import click


def _fail(error: Exception):
    click.echo(f"fit-eval: error: {error}", err=True)
    sys.exit(2)


def _config_next_to(checkpoint: str):
    """The network config beside a checkpoint: fit-train's config.yaml, or a model package's manifest.json."""
    from engines.manifest import load_manifest
    from fit.config import FiTConfig

    here = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.exists(os.path.join(here, "config.yaml")):
        return os.path.join(here, "config.yaml")
    if os.path.exists(os.path.join(here, "manifest.json")):
        return FiTConfig.from_dict(load_manifest(here).model.config)
    raise ValueError(f"no --config given and neither config.yaml nor a package manifest.json next to {checkpoint}")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="EMA weights (.safetensors/.pt) or a fit-train checkpoint (its EMA is used).")
@click.option("--config", "config_spec", help="Preset or YAML of the network. Default: config.yaml next to "
              "--checkpoint (what fit-train writes) or the manifest of the package it is in.")
@click.option("--num", "num_per_class", type=int, default=16, show_default=True, help="Samples per class and cell.")
@click.option("--sizes", help="Comma-separated HEIGHTxWIDTH in pixels. Default: Table III's rows scaled to the model's "
              "token budget (square, 1:2, 1:3 inside it; 1.56x, 2.25x and wider grids beyond it).")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated RoPE methods (normal, linear, ntk-aware, yarn, vision-ntk, vision-yarn, "
                   "ntk-aware-pro1, ntk-aware-pro2) or 'all'.")
@click.option("--sampler", type=click.Choice(["euler", "heun", "sde"]), default="heun", show_default=True)
@click.option("--steps", type=int, default=16, show_default=True, help="Sampler steps.")
@click.option("--cfg-scale", type=float, default=4.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--vae", type=click.Path(file_okay=False),
              help="For a latent model: the diffusers AutoencoderKL folder its latents come from.")
@click.option("--classifier", type=click.Path(dir_okay=False), help="Shape classifier weights (default: shipped).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table (Markdown) here; rows as JSON "
              "next to it (.json).")
def main(checkpoint, config_spec, num_per_class, sizes, methods, sampler, steps, cfg_scale, seed, vae, classifier,
         threads, out):
    """Generate NUM samples per class at each size with each RoPE extrapolation method; report the shape
    classifier's accuracy and the Fréchet distance on its features (a table shaped like FiTv2's Table III)."""
    import torch

    from fit.eval.classifier import load_classifier
    from fit.eval.evaluate import (METHODS, EvalSettings, LatentDecoder, default_sizes, evaluate, format_table,
                                   parse_size)
    from fit.flow import SamplerSettings
    from fit.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        if config_spec is None:
            config_spec = _config_next_to(checkpoint)
        if num_per_class < 2:
            raise ValueError("--num must be at least 2 (the Fréchet distance needs a covariance)")
        size_list = [parse_size(s) for s in _csv(sizes)] if sizes is not None else None
        method_list = list(METHODS) if methods.strip().lower() == "all" else _csv(methods)
        if size_list == [] or not method_list:
            raise ValueError("give at least one size and one method")
        model = load_model(config_spec, checkpoint)
        clf = load_classifier(classifier)
        decoder = LatentDecoder(vae) if vae else None
        if size_list is None:
            size_list = default_sizes(model.config.context_size,
                                      model.patch_size * (decoder.downsample if decoder else 1))
        settings = EvalSettings(num_per_class, SamplerSettings(sampler, steps=steps), cfg_scale, seed)
        rows = evaluate(model, clf, size_list, method_list, settings, progress=lambda m: click.echo(m, err=True),
                        decoder=decoder)
    except (ValueError, OSError, ImportError) as e:      # EvalError, ConfigError, CheckpointError, DataError
        _fail(e)
    table = format_table(rows, budget=model.config.context_size)
    click.echo(table)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(out)[0] + ".json", "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
