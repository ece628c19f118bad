"""The graph contracts' feeds (engines/contract.py): the transformer's padded batch as docs/runtime-spec.md §6 lays
it out, and the VAE decoder's contract."""
import numpy as np
import pytest

from engines.contract import GraphContract, VaeDecoderContract, patchify
from engines.errors import PackageError
from engines.rope import RopeSettings, rope_tables

CONTRACT = GraphContract(token_dim=8, out_token_dim=8, head_dim=16)        # patch 2, 2 latent channels
ROPE = RopeSettings(16)
GRIDS = [(2, 3), (1, 2)]                                                   # 6 tokens, and 2 padded to 6


def latents(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 2 * h, 2 * w)).astype(np.float32) for h, w in GRIDS]


def test_rows_hold_their_tokens_then_zero_padding():
    noise = latents()
    batch = CONTRACT.padded_batch(GRIDS, ROPE, [3, 5], [patchify(z, 2) for z in noise])
    feed = batch.feed([0.25, 0.5])
    assert list(feed) == list(CONTRACT.INPUT_NAMES)
    assert {k: v.dtype.name for k, v in feed.items()} == {"x": "float32", "t": "float32", "y": "int64",
                                                         "rope_cos": "float32", "rope_sin": "float32",
                                                         "mask": "float32"}
    assert batch.lengths == [6, 2] and feed["x"].shape == (2, 6, 8) and feed["rope_cos"].shape == (2, 6, 16)
    np.testing.assert_array_equal(feed["x"][0], patchify(noise[0], 2))
    np.testing.assert_array_equal(feed["x"][1, :2], patchify(noise[1], 2))
    np.testing.assert_array_equal(feed["mask"], [[1] * 6, [1, 1, 0, 0, 0, 0]])
    for i, (h, w) in enumerate(GRIDS):
        cos, sin = rope_tables(ROPE, h, w)
        np.testing.assert_array_equal(feed["rope_cos"][i, :h * w], cos)
        np.testing.assert_array_equal(feed["rope_sin"][i, :h * w], sin)
    assert not feed["x"][1, 2:].any() and not feed["rope_cos"][1, 2:].any() and not feed["rope_sin"][1, 2:].any()
    np.testing.assert_array_equal(feed["y"], [3, 5])
    np.testing.assert_array_equal(feed["t"], np.float32([0.25, 0.5]))
    for latent, back in zip(noise, batch.unpack(feed["x"], 2)):
        np.testing.assert_array_equal(back, latent)


def test_guidance_doubles_rows_cond_then_uncond_with_each_rows_own_tables():
    other = ROPE.with_method("ntk-aware", 1)
    batch = CONTRACT.padded_batch(GRIDS, [ROPE, other], [3, 5], [patchify(z, 2) for z in latents()], null_class=10)
    state = np.random.default_rng(1).standard_normal(batch.x.shape).astype(np.float32)
    feed = batch.feed(np.float32([0.25, 0.5]), state)
    assert batch.guided and feed["x"].shape == (4, 6, 8)
    np.testing.assert_array_equal(feed["y"], [3, 5, 10, 10])
    np.testing.assert_array_equal(feed["t"], np.float32([0.25, 0.5, 0.25, 0.5]))
    for name in ("x", "rope_cos", "rope_sin", "mask"):
        np.testing.assert_array_equal(feed[name][:2], feed[name][2:])
    np.testing.assert_array_equal(feed["x"][:2], state)
    np.testing.assert_array_equal(feed["rope_cos"][1, :2], rope_tables(other, 1, 2)[0])
    assert not np.array_equal(rope_tables(other, 1, 2)[0], rope_tables(ROPE, 1, 2)[0])


def test_feed_follows_the_contract_precision():
    half = GraphContract(8, 8, 16, "fp16").padded_batch(GRIDS, ROPE, [0, 0]).feed([0.5, 0.5])
    assert half["x"].dtype == np.float16 and half["rope_cos"].dtype == np.float32 and half["t"].dtype == np.float32


@pytest.mark.parametrize("grids, rope, labels", [
    (GRIDS, ROPE, [1]),                   # a label short
    (GRIDS, [ROPE], [1, 2]),              # RoPE settings short
    ([], ROPE, []),                       # no rows
    ([(0, 3)], ROPE, [1]),                # an empty grid
])
def test_rows_that_do_not_match_are_refused(grids, rope, labels):
    with pytest.raises(ValueError):
        CONTRACT.padded_batch(grids, rope, labels)


def test_vae_decoder_contract():
    vae = VaeDecoderContract(latent_channels=4, downsample=8)
    assert [s.to_dict() for s in vae.inputs] == [{"name": "latent", "dtype": "float32",
                                                  "shape": ["batch", 4, "height", "width"]}]
    assert [s.to_dict() for s in vae.outputs] == [{"name": "image", "dtype": "float32",
                                                   "shape": ["batch", 3, "8*height", "8*width"]}]
    assert vae.axes()["latent"] == {0: "batch", 2: "height", 3: "width"}
    assert vae.image_shape(2, 5, 7) == (2, 3, 40, 56)
    assert vae.feed(latent=np.zeros((1, 4, 2, 2), np.float64))["latent"].dtype == np.float32
    vae.check_names(["latent"], ["image"], "decoder")
    with pytest.raises(PackageError, match="do not follow the VAE decoder contract"):
        vae.check_names(["z"], ["image"], "decoder")
