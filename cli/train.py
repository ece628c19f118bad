"""``fit-train``: train FiTv2 (``run``), turn an image folder into training data (``prepare``), and train a tiny
latent autoencoder on the procedural shapes (``vae``)."""
from __future__ import annotations

import click

from cli.common import Group, Interrupted, UserError, user_errors

USER_ERRORS = (ValueError, OSError)   # ConfigError, DataError, CheckpointError are ValueErrors


@click.group(cls=Group, prog="fit-train", extra="train")
def main():
    """Train FiTv2 flexible-resolution diffusion transformers (run), turn an image folder into training data
    (prepare), train a tiny latent autoencoder on the procedural shapes (vae)."""


@main.command(short_help="Train a model (also under torchrun).")
@click.option("--config", "config_spec", required=True, help="Preset name (fitv2-tiny, ...) or YAML file.")
@click.option("--data", help="Latent folder (official format) or KIND:ARG, e.g. procedural:0. Default: train.data.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints, logs, EMA).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out (if any).")
@click.option("--init", "init_from", type=click.Path(dir_okay=False),
              help="Pretrained weights to start from (HR post-training); default: the config's pretrain_ckpt.")
@click.option("--steps", type=int, help="Total optimizer steps.")
@click.option("--batch-size", type=int, help="Global batch size (split over processes).")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--warmup-steps", type=int, help="Linear warmup steps, then constant.")
@click.option("--grad-clip", type=float, help="Max gradient norm (0 = off).")
@click.option("--ema-decay", type=float, help="EMA decay per step.")
@click.option("--timestep-shift", type=float,
              help="Shift logit-normal timesteps toward noise: t/(t + s(1-t)); >1 for large tokens (default 1).")
@click.option("--seed", type=int, help="Seed of the data order, noise, timesteps and label dropout.")
@click.option("--max-tokens", type=int, help="Token budget L of the data (default: the config's context_size).")
@click.option("--precision", help="Training precision; auto: bf16 on GPU, fp32 on CPU.")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None, help="Recompute blocks in backward.")
@click.option("--workers", "num_workers", type=int, help="Data loader processes per training process.")
@click.option("--save-every", type=int, help="Checkpoint every N steps.")
@click.option("--log-every", type=int, help="Loss row every N steps.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to TensorBoard (OUT/tb).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(config_spec, data, out, resume, device, quiet, **overrides):
    """Train a model; under torchrun every process runs this same command."""
    from fit.train import load_run_config, train

    try:
        with user_errors(*USER_ERRORS, FloatingPointError):
            config, settings = load_run_config(config_spec)
            settings = settings.replace(**overrides)
            result = train(config, settings, out, data=data, resume=resume,
                           device=None if device == "auto" else device, progress=not quiet)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; continue with --resume --out {out}") from None
    if result["rank"] == 0:
        click.echo(f"done: step {result['step']}, EMA weights in {out}/ema.safetensors", err=True)


@main.command(short_help="Turn an image folder into training data.")
@click.argument("images", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--max-tokens", type=int, required=True, help="Token budget L (256 for 256x256 through the SD VAE).")
@click.option("--vae", type=click.Path(), help="Local diffusers AutoencoderKL folder (sd-vae-ft-ema layout).")
@click.option("--pixels", is_flag=True, help="Keep images in pixel space (3 channels, values in [-1, 1]).")
@click.option("--patch-size", type=int, default=2, show_default=True)
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--device", default="cpu", show_default=True, help="Device for the VAE.")
def prepare(images, out, max_tokens, vae, pixels, patch_size, strict, device):
    """IMAGES (one subfolder per class) -> OUT in the official flexible-latent format."""
    from fit.data.prepare import prepare_folder

    if bool(vae) == bool(pixels):
        raise UserError("pass exactly one of --vae DIR or --pixels")
    with user_errors(*USER_ERRORS):
        report = prepare_folder(images, out, max_tokens, vae=vae, patch_size=patch_size, strict=strict,
                                device=device)
    click.echo(report.summary(), err=True)


@main.command(short_help="Train a tiny latent autoencoder on the procedural shapes.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output: diffusers AutoencoderKL folder (sd-vae-ft-ema layout), loss.csv, reconstructions.png.")
@click.option("--steps", type=int, default=1200, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--crop", type=int, default=48, show_default=True, help="Square training crops (pixels).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--kl-weight", type=float, default=1e-6, show_default=True)
@click.option("--channels", default="32,64,64,64", show_default=True,
              help="block_out_channels; N entries = N-1 downsamplings.")
@click.option("--latent-channels", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init", "init_from", type=click.Path(file_okay=False),
              help="Continue from a saved autoencoder folder (its network settings win over --channels).")
@click.option("--decoder-only", is_flag=True,
              help="With --init: freeze the encoder (same latents and scaling_factor), train the decoder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def vae(out, steps, batch_size, crop, lr, kl_weight, channels, latent_channels, seed, init_from, decoder_only, quiet):
    """Train a tiny SD-VAE-like AutoencoderKL on the procedural shapes (for fit-train prepare --vae OUT)."""
    from fit.autoencoder import AutoencoderSettings, train_autoencoder

    with user_errors(*USER_ERRORS):
        if not all(c.strip().isdigit() for c in channels.split(",")):
            raise ValueError(f"--channels takes comma-separated integers such as 32,64,64,64, got {channels!r}")
        settings = AutoencoderSettings(block_out_channels=tuple(int(c) for c in channels.split(",")),
                                       latent_channels=latent_channels, steps=steps, batch_size=batch_size,
                                       crop=crop, lr=lr, kl_weight=kl_weight, seed=seed, init_from=init_from,
                                       decoder_only=decoder_only)
        train_autoencoder(settings, out, progress=not quiet, log=lambda line: click.echo(line, err=True))


if __name__ == "__main__":
    main()
