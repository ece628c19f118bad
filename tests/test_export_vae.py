"""VAE decoder export from a local diffusers AutoencoderKL (a tiny random one saved with save_pretrained)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.package import load_manifest
from fit_export import ExportError, export_package, validate_package
from fit_export.onnx_export import load_vae, run_vae_reference
from tests.test_export import random_tiny


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=4, sample_size=32, scaling_factor=0.5)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(str(path))
    return path


def test_package_with_vae_decoder(vae_dir, tmp_path):
    model = random_tiny(0)
    package = export_package(model, None, tmp_path / "pkg", vae_dir=vae_dir, include_weights=True)
    doc = load_manifest(package).to_dict()
    assert "vae_decoder.onnx" in doc["files"]
    assert doc["latent"] == {"space": "sd-vae", "downsample": 2, "scaling_factor": 0.5, "pixel_granularity": 4}
    assert not doc["vae_decoder"]["input_is_scaled"] and doc["vae_decoder"]["check"]["max_abs_relative_to_scale"] < 1e-3

    # Dynamic height/width: sizes the export never traced (it traced 6x10).
    session = ort.InferenceSession(str(package / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    contract = load_manifest(package).vae_graph
    assert [i.name for i in session.get_inputs()] == ["latent"] and [o.name for o in session.get_outputs()] == ["image"]
    vae = load_vae(vae_dir)
    for shape in ((1, 4, 5, 9), (3, 4, 12, 4)):
        latent = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out, ref = session.run(None, contract.feed(latent=latent))[0], run_vae_reference(vae, latent)
        assert out.shape == contract.image_shape(*shape[:1], *shape[2:]) == (shape[0], 3, 2 * shape[2], 2 * shape[3])
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()

    report = validate_package(package, methods=["vision-yarn"], e2e_steps=3)
    assert report.passed, report.table()
    assert report.end_to_end[0].space == "images"


def test_vae_directory_must_hold_a_diffusers_model(tmp_path):
    with pytest.raises(ExportError, match="no config.json"):
        export_package(random_tiny(0), None, tmp_path / "pkg", vae_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_vae_must_decode_rgb(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, layers_per_block=1, norm_num_groups=4,
                  sample_size=16, out_channels=1).save_pretrained(str(tmp_path / "gray"))
    with pytest.raises(ExportError, match="1-channel images; a package's decoder gives RGB"):
        load_vae(tmp_path / "gray")
