"""The tiny latent autoencoder: it learns, and its folder is an sd-vae-ft-ema-style VAE for prepare and export."""
import json

import pytest
import torch

from fit.autoencoder import AutoencoderSettings, build_autoencoder, crop_batch, shapes_for, train_autoencoder
from fit.data.procedural_images import write_image_folder


def tiny(**changes):
    base = dict(block_out_channels=(8, 16), norm_num_groups=4, steps=60, batch_size=4, crop=16, lr=3e-3,
                warmup_steps=5, scale_images=8)
    return AutoencoderSettings(**{**base, **changes})


def test_crops_are_deterministic_and_in_range():
    shapes = shapes_for(tiny(), seed=0)
    a, b = crop_batch(shapes, 10, 3, 16), crop_batch(shapes, 10, 3, 16)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 and not torch.equal(a[0], a[1])


def test_trains_and_saves_a_loadable_scaled_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    result = train_autoencoder(tiny(), str(tmp_path / "vae"), progress=False, log=lambda line: None)
    assert result["loss_last"] < 0.85 * result["loss_first"]          # it learns to reconstruct
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["latent_channels"] == 4
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "vae" / "reconstructions.png").exists()
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae"), local_files_only=True)
    assert vae.config.scaling_factor == pytest.approx(result["scaling_factor"])
    # scaling_factor makes the latents of fresh images unit-variance (what the diffusion model expects).
    x = crop_batch(shapes_for(tiny(), seed=7), 0, 8, 32)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert 0.6 < float(z.std()) < 1.6


def test_decoder_only_keeps_the_latent_space(tmp_path):
    from diffusers import AutoencoderKL

    torch.set_num_threads(1)
    first = tiny(steps=5)
    train_autoencoder(first, str(tmp_path / "a"), progress=False, log=lambda line: None)
    train_autoencoder(tiny(steps=5, init_from=str(tmp_path / "a"), decoder_only=True), str(tmp_path / "b"),
                      progress=False, log=lambda line: None)
    a, b = (AutoencoderKL.from_pretrained(str(tmp_path / d), local_files_only=True) for d in "ab")
    assert a.config.scaling_factor == b.config.scaling_factor
    assert all(torch.equal(p, q) for p, q in zip(a.encoder.parameters(), b.encoder.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.decoder.parameters(), b.decoder.parameters()))


def test_prepare_reads_the_saved_vae(tmp_path):
    from fit.data.latent_folder import LatentFolder
    from fit.data.prepare import prepare_folder

    vae = build_autoencoder(tiny())                                     # 2x downsampling: 4 px per patch-2 token
    vae.save_pretrained(str(tmp_path / "vae"))
    counts = write_image_folder(str(tmp_path / "img"), 12, max_tokens=25, unit=4, progress=False)
    assert sum(counts.values()) == 12
    report = prepare_folder(str(tmp_path / "img"), str(tmp_path / "lat"), 25, vae=str(tmp_path / "vae"),
                            progress=False)
    assert sum(report.written.values()) == 12 and list(report.written) == ["from_16_to_25"]
    data = LatentFolder(str(tmp_path / "lat"), 25)
    sample = data.load(0, torch.Generator().manual_seed(0))
    assert 16 <= sample["feature"].shape[0] == int(sample["size"].prod()) <= 25
    assert data.token_dim == 16


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderSettings(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="crop"):
        AutoencoderSettings(crop=50)
    with pytest.raises(ValueError, match="init_from"):
        AutoencoderSettings(decoder_only=True)
