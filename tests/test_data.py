"""Data formats: the official flexible-latent folder, padded batching, ``prepare``, dataset specs."""
import json
import os
import sys
import types

import pytest
import torch

from fit.config import preset
from fit.data import DATA_KINDS, DataError, open_dataset
from fit.data.batching import image_sample, pad_batch
from fit.data.latent_folder import LatentFolder, folder_names, write_latent
from fit.data.prepare import crop_side, prepare_folder, resize_size
from fit.flow import unpatchify
from tests.data_helpers import make_images, make_latents


def test_pad_batch_pads_to_longest_with_masks():
    a = image_sample(torch.randn(4, 4, 8), 2, label=1)            # 2 x 4 patches
    b = image_sample(torch.randn(4, 6, 6), 2, label=3)            # 3 x 3 patches
    a["noise"], b["noise"] = torch.ones(8, 16), torch.ones(9, 16)
    batch = pad_batch([a, b], token_keys=("noise",))
    assert batch["feature"].shape == (2, 9, 16) and batch["grid"].shape == (2, 2, 9)
    assert batch["mask"].tolist() == [[1] * 8 + [0], [1] * 9]
    assert batch["size"].tolist() == [[[2, 4]], [[3, 3]]] and batch["label"].tolist() == [1, 3]
    assert batch["feature"][0, 8].abs().sum() == 0 and batch["noise"][0, 8].sum() == 0 and batch["noise"][1].sum() == 144
    assert batch["grid"][0, :, :8].tolist() == [[0, 1, 2, 3] * 2, [0] * 4 + [1] * 4]   # column, row
    assert pad_batch([a], pad_to=12)["mask"].shape == (1, 12)
    with pytest.raises(ValueError):
        pad_batch([a, b], pad_to=4)


def test_latent_folder_reads_official_layout_and_picks(tmp_path):
    root = make_latents(tmp_path, large=[("big_a", True), ("big_b", False)])
    data = LatentFolder(str(root), 64)
    assert len(data) == 10 and data.token_dim == 16 and data.num_classes == 3
    pair = next(e for e in data.entries if "big_a" in e[0])
    assert len(pair) == 2 and "resize" in pair[0] and "crop" in pair[1]
    index = data.entries.index(pair)
    seen = {float(data.load(index, torch.Generator().manual_seed(s))["feature"][0, 0]) for s in range(20)}
    assert seen == {1.0, -1.0}                                                # random resize / crop pick
    assert float(LatentFolder(str(root), 64, pick="crop").load(index)["feature"][0, 0]) == -1.0
    s = data.load(0, torch.Generator().manual_seed(0))
    assert s["feature"].shape == (16, 16) and s["size"].tolist() == [4, 4] and s["grid"].shape == (2, 16)
    flips = {data.load(0, torch.Generator().manual_seed(k))["feature"][0, 0].item() for k in range(20)}
    assert len(flips) == 2                                                    # both stored flips are used


def test_latent_folder_skips_corrupt_files_and_counts(tmp_path):
    root = make_latents(tmp_path)
    bad = root / folder_names(64)["fits"] / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.warns(UserWarning, match="skipped 1"):
        data = LatentFolder(str(root), 64)
    assert len(data) == 8 and len(data.skipped) == 1
    with pytest.raises(DataError, match="bad.safetensors"):
        LatentFolder(str(root), 64, strict=True)


def test_latent_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        LatentFolder(str(tmp_path / "nope"), 64)
    with pytest.raises(DataError, match="make one with"):
        LatentFolder(str(tmp_path), 64)
    make_latents(tmp_path / "d", budget=256)
    with pytest.raises(DataError, match="budgets 256"):
        LatentFolder(str(tmp_path / "d"), 64)
    big = tmp_path / "big"
    os.makedirs(big / folder_names(16)["fits"])
    write_latent(str(big / folder_names(16)["fits"] / "x.safetensors"), torch.zeros(2, 8, 8, 16), 0)
    with pytest.raises(DataError, match="no readable samples"):
        with pytest.warns(UserWarning):
            LatentFolder(str(big), 16)


def test_open_dataset_checks_against_config(tmp_path, monkeypatch):
    root = make_latents(tmp_path)
    cfg = preset("fitv2-tiny")
    assert len(open_dataset(str(root), cfg, 64)) == 8
    with pytest.raises(DataError, match="tokens of 16 channels"):
        open_dataset(str(root), cfg.replace(in_channels=3), 64)
    with pytest.raises(DataError, match="3 classes"):
        open_dataset(str(root), cfg.replace(num_classes=2), 64)
    with pytest.raises(DataError, match="unknown data kind"):
        open_dataset("nosuch:1", cfg, 64)
    fake = types.ModuleType("fake_data_kind")
    fake.from_spec = lambda arg, config, max_tokens: LatentFolder(str(root), max_tokens) if arg == "x" else None
    monkeypatch.setitem(sys.modules, "fake_data_kind", fake)
    monkeypatch.setitem(DATA_KINDS, "fake", "fake_data_kind")
    assert len(open_dataset("fake:x", cfg, 64)) == 8


# ---- prepare ------------------------------------------------------------------------------------------------

def test_resize_rules_follow_the_official_preprocessing():
    assert resize_size(256, 256, 256, 16) == (256, 256)
    assert resize_size(512, 256, 256, 16) == (352, 176)                 # area 256^2, sides on the 16 grid
    assert resize_size(100, 70, 256, 16) == (96, 64)                     # small: own size, floored to the grid
    assert resize_size(10, 50, 256, 16) == (16, 80)                      # a side below 16 is scaled up
    w, h = resize_size(4000, 10, 256, 16)                                # very thin: trimmed to the budget
    assert (w // 16) * (h // 16) <= 256 and h == 16
    assert crop_side(256, 16) == 256 and crop_side(1024, 16) == 512


def test_prepare_pixels_writes_the_official_layout(tmp_path):
    images = make_images(tmp_path / "img")
    with pytest.warns(UserWarning, match="skipped 1"):
        report = prepare_folder(str(images), str(tmp_path / "out"), 64, progress=False)
    names = folder_names(64)
    assert len(report.skipped) == 1 and report.written == {names["fits"]: 2, names["resize"]: 6, names["crop"]: 6}
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["classes"] == ["circle", "square"]
    data = LatentFolder(str(tmp_path / "out"), 64)
    assert len(data) == 8 and data.num_classes == 2 and data.token_dim == 12
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "out" / names["resize"] / "circle_0.safetensors"))
    h, w = saved["size"].tolist()
    assert h * w <= 64 and saved["feature"].shape == (2, h, w, 12) and saved["label"].tolist() == [0]
    img = unpatchify(saved["feature"][0].reshape(h * w, 12), h, w, 2)
    flipped = unpatchify(saved["feature"][1].reshape(h * w, 12), h, w, 2)
    assert torch.allclose(img.flip(-1), flipped) and img.min() >= -1 and img.max() <= 1
    crop = load_file(str(tmp_path / "out" / names["crop"] / "square_3.safetensors"))
    assert crop["size"].tolist() == [8, 8]
    # a second run finds everything in place; other settings into the same folder are refused
    with pytest.warns(UserWarning, match="skipped 1"):
        again = prepare_folder(str(images), str(tmp_path / "out"), 64, progress=False)
    assert again.existing == 14 and not again.written
    with pytest.raises(DataError, match="other settings"):
        prepare_folder(str(images), str(tmp_path / "out"), 64, patch_size=1, progress=False)
    with pytest.raises(DataError, match="broken.jpg"):
        prepare_folder(str(images), str(tmp_path / "strict"), 64, strict=True, progress=False)


@pytest.mark.parametrize("bits", [16, 8])
def test_prepare_scales_16_bit_grayscale(tmp_path, bits):
    """A 16-bit grayscale PNG (Pillow mode I;16) is scaled to 0..255, not clipped at 255 (almost all white)."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    top = 65535 if bits == 16 else 255
    values = np.linspace(0, top, 16 * 16).reshape(16, 16).astype(np.uint16 if bits == 16 else np.uint8)
    os.makedirs(tmp_path / "img" / "gray")
    Image.fromarray(values).save(tmp_path / "img" / "gray" / "ramp.png")
    prepare_folder(str(tmp_path / "img"), str(tmp_path / "out"), 64, progress=False)
    saved = load_file(str(tmp_path / "out" / folder_names(64)["fits"] / "gray_ramp.safetensors"))
    h, w = saved["size"].tolist()
    pixels = unpatchify(saved["feature"][0].reshape(h * w, 12), h, w, 2)        # (3, 16, 16) in [-1, 1]
    expected = torch.from_numpy(values.astype(np.float32) / top * 2 - 1)
    assert torch.allclose(pixels, expected.expand(3, -1, -1), atol=1 / 127.5)


def test_prepare_bad_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_folder(str(tmp_path / "nope"), str(tmp_path / "o"), 64)
    with pytest.raises(DataError, match="no class subfolders"):
        prepare_folder(str(tmp_path), str(tmp_path / "o"), 64)
    os.makedirs(tmp_path / "a" / "cls")
    with pytest.raises(DataError, match="no images"):
        prepare_folder(str(tmp_path / "a"), str(tmp_path / "o"), 64)


def test_prepare_with_a_local_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=32)
    vae.save_pretrained(tmp_path / "vae")
    images = make_images(tmp_path / "img")
    (images / "circle" / "broken.jpg").unlink()
    prepare_folder(str(images), str(tmp_path / "out"), 16, vae=str(tmp_path / "vae"), progress=False)
    data = LatentFolder(str(tmp_path / "out"), 16)
    assert data.token_dim == 16                                          # 4 latent channels x 2 x 2
    sample = data.load(0, torch.Generator().manual_seed(0))
    assert sample["feature"].shape[0] == int(sample["size"].prod()) <= 16
    with pytest.raises(DataError, match="AutoencoderKL"):
        prepare_folder(str(images), str(tmp_path / "o2"), 16, vae=str(tmp_path / "img"), progress=False)


def test_resize_keeps_an_image_that_exactly_fills_a_non_square_budget():
    from fit.data.prepare import resize_size
    # 64 x 96 px = 4 x 6 = 24 tokens of 16 px: exactly the budget; sqrt(24)**2 is not 24 in floating point.
    assert resize_size(64, 96, 24, 16) == (64, 96)
    assert resize_size(96, 64, 24, 16) == (96, 64)
