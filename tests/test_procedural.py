"""The procedural shapes dataset: deterministic, within its token budget, every class drawable and distinct."""
import numpy as np
import pytest
import torch

from engines.rope import image_grid
from fit.config import FiTConfig
from fit.data import DataError, open_dataset
from fit.data.batching import pad_batch
from fit.data.procedural import SHAPES, ProceduralShapes, _draw_mask, canvas_grids, draw
from fit.flow import unpatchify


def pixel_config(**changes):
    base = dict(context_size=64, patch_size=8, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=8,
                learn_sigma=False, use_sit=True)
    return FiTConfig(**{**base, **changes})


def test_at_least_eight_distinct_shapes():
    assert len(SHAPES) >= 8 and len(set(SHAPES)) == len(SHAPES)
    masks = [_draw_mask(s, 64, 64, 32.0, 32.0, 24.0) for s in SHAPES]
    for i, a in enumerate(masks):
        assert 0.1 < a.mean() < 0.9, SHAPES[i]
        for j in range(i):
            # Every pair differs on a good part of the canvas: the classes are separable by shape alone.
            assert np.abs(a - masks[j]).mean() > 0.04, (SHAPES[i], SHAPES[j])


def test_items_are_a_function_of_seed_and_index():
    a, b, c = ProceduralShapes(seed=3), ProceduralShapes(seed=3), ProceduralShapes(seed=4)
    for i in (0, 17, 999_999):
        x, y = a.load(i), b.load(i)
        assert torch.equal(x["feature"], y["feature"]) and x["label"] == y["label"]
    assert not torch.equal(a.load(5)["feature"], c.load(5)["feature"]) or a.load(5)["label"] != c.load(5)["label"]
    assert not torch.equal(a.load(5)["feature"], a.load(6)["feature"])


def test_items_follow_the_dataset_contract_and_budget():
    ds = ProceduralShapes(seed=0, patch_size=8, max_tokens=64, min_tokens=48, max_aspect=2.0)
    labels, sizes = set(), set()
    for i in range(200):
        s = ds.load(i, torch.Generator())
        h, w = (int(v) for v in s["size"])
        n = s["feature"].shape[0]
        assert 48 <= n == h * w <= 64 and max(h, w) <= 2 * min(h, w)
        assert s["feature"].shape[1] == ds.token_dim == 8 * 8 * 3
        assert s["feature"].dtype == torch.float32 and s["feature"].abs().max() <= 1.0
        assert torch.equal(s["grid"], torch.from_numpy(image_grid(h, w)))
        img, label = ds.image(i)
        assert torch.allclose(unpatchify(s["feature"], h, w, 8), torch.from_numpy(img))
        labels.add(s["label"])
        sizes.add((h, w))
    assert labels == set(range(len(SHAPES)))
    assert len(sizes) >= 8                                   # many canvas sizes and aspect ratios
    assert {(h > w) for h, w in sizes} == {True, False}


def test_variety_of_colours_positions_and_sizes():
    ds = ProceduralShapes(seed=1)
    images = [ds.image(i)[0] for i in range(64)]
    corners = np.array([im[:, 0, 0] for im in images])
    assert corners.std(axis=0).min() > 0.3                   # backgrounds vary in every channel
    fg_fraction = []
    for im in images:
        bg = im[:, 0, 0][:, None, None]
        fg_fraction.append((np.abs(im - bg).max(axis=0) > 0.3).mean())
    assert 0.05 < min(fg_fraction) and max(fg_fraction) < 0.9 and np.std(fg_fraction) > 0.05


def test_shape_stays_on_the_canvas():
    rng = np.random.default_rng(0)
    for label in range(len(SHAPES)):
        for h, w in [(40, 80), (80, 40), (64, 64)]:
            img = draw(rng, label, h, w, gradient_prob=0.0)
            bg = img[:, 0, 0][:, None, None]
            border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
            # Edges of the canvas are (almost) all background: the shape is whole.
            assert (np.abs(border - bg[:, :, 0]).max(axis=0) > 0.2).mean() < 0.1


def test_canvas_grids():
    grids = canvas_grids(64, 48, 2.0)
    assert (8, 8) in grids and (5, 10) in grids and (4, 16) not in grids
    with pytest.raises(ValueError, match="no patch grid"):
        canvas_grids(4, 5)


def test_open_dataset_spec_and_errors():
    ds = open_dataset("procedural:7", pixel_config(), 64)
    assert ds.seed == 7 and ds.max_tokens == 64 and ds.min_tokens == 48 and ds.num_classes == 8
    batch = pad_batch([ds.load(i) for i in range(4)])
    assert batch["feature"].shape[0] == 4 and batch["feature"].shape[2] == 192
    with pytest.raises(DataError, match="integer seed"):
        open_dataset("procedural:abc", pixel_config(), 64)
    with pytest.raises(DataError, match="3 channels"):
        open_dataset("procedural:0", pixel_config(in_channels=4), 64)
    with pytest.raises(DataError):
        open_dataset("procedural:0", pixel_config(num_classes=4), 64)
