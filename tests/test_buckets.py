"""Bucket rules (engines.buckets): parsing --profiles/--batch, the smallest bucket, profile shapes, the runtime choice."""
import pytest

from engines.contract import GraphContract, TensorSpec
from engines.buckets import (BatchRange, Bucket, BucketError, BucketProfile, Range, bucket_for_size,
                             choose_profile, parse_batch, parse_profiles, plan_profiles, smallest_bucket,
                             tokens_for_size)

G = 16   # SD VAE (8) x patch 2
CONTRACT = GraphContract(16, 16, 72).inputs


def test_pixel_sizes_become_token_budgets_sorted():
    buckets = parse_profiles("256x256,320x320,224x448,160x480", G)
    assert [b.tokens for b in buckets] == [256, 300, 392, 400]
    assert buckets[0] == Bucket(256, ((256, 256),))
    assert buckets[1].sizes == ((160, 480),)                     # WIDTHxHEIGHT: 10 x 30 tokens


def test_token_counts_and_mixed_entries_and_shared_budgets():
    assert [b.tokens for b in parse_profiles("64,256,1024", G)] == [64, 256, 1024]
    buckets = parse_profiles(" 256x256 , 512x128,256, 64 ", G)     # 512x128 is also 256 tokens
    assert buckets == (Bucket(64), Bucket(256, ((256, 256), (512, 128))))
    assert parse_profiles(["128x128", "64"], G) == (Bucket(64, ((128, 128),)),)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("256x250", "nearest valid: 256x256"),
    ("0x256", "positive"),
    ("abc", "cannot read profile 'abc'"),
    ("256x", "cannot read profile"),
    ("-64", "cannot read profile"),
    ("0", "cannot read profile"),
])
def test_bad_profiles_say_what_to_do(text, fragment):
    with pytest.raises(BucketError, match=fragment):
        parse_profiles(text, G)


def test_batch_ranges_and_cfg_doubling():
    assert parse_batch("1") == BatchRange(1, 1, 1)
    assert parse_batch("1:4") == BatchRange(1, 1, 4)
    assert parse_batch("1:2:4", cfg=False) == BatchRange(1, 2, 4, cfg=False)
    assert parse_batch("1:4").graph == Range(2, 2, 8)             # cond + uncond halves
    assert parse_batch("1:4", cfg=False).graph == Range(1, 1, 4)
    for bad in ("0", "2:1", "1:2:3:4", "x", "1:a"):
        with pytest.raises(BucketError, match="--batch"):
            parse_batch(bad)


def test_smallest_bucket_holds_the_request():
    buckets = parse_profiles("64,256,1024", G)
    assert smallest_bucket(buckets, 1).tokens == 64
    assert smallest_bucket(buckets, 64).tokens == 64
    assert smallest_bucket(buckets, 65).tokens == 256
    assert bucket_for_size(buckets, 256, 256, G).tokens == 256     # 16 x 16
    assert bucket_for_size(buckets, 512, 128, G).tokens == 256     # other aspect ratio, same budget
    assert bucket_for_size(buckets, 272, 256, G).tokens == 1024    # 17 x 16 = 272 tokens
    with pytest.raises(BucketError, match="larger than the largest bucket \\(1024"):
        bucket_for_size(buckets, 1024, 1024, G)
    with pytest.raises(BucketError, match="off the pixel grid"):
        bucket_for_size(buckets, 250, 256, G)
    assert tokens_for_size(224, 448, G) == 392


def test_profiles_tile_the_sequence_axis():
    profiles = plan_profiles(parse_profiles("1024,64,256", G), parse_batch("1:2"))
    assert [p.seq for p in profiles] == [Range(1, 64, 64), Range(65, 256, 256), Range(257, 1024, 1024)]
    assert all(p.batch == Range(2, 2, 4) for p in profiles)
    assert not any(p.is_static for p in profiles)
    static = plan_profiles(parse_profiles("64,256", G), parse_batch("1"), static=True)
    assert [p.seq for p in static] == [Range(64, 64, 64), Range(256, 256, 256)]
    assert all(p.is_static for p in static)
    with pytest.raises(BucketError, match="same token budget"):
        plan_profiles([Bucket(64), Bucket(64, ((128, 128),))], parse_batch("1"))


def test_profile_shapes_cover_every_dynamic_input_including_rope():
    profile = plan_profiles(parse_profiles("64,256", G), parse_batch("1:2"))[1]
    shapes = profile.shapes(CONTRACT)
    assert list(shapes) == ["x", "t", "y", "rope_cos", "rope_sin", "mask"]
    assert shapes["x"] == ((2, 65, 16), (2, 256, 16), (4, 256, 16))
    assert shapes["rope_cos"] == ((2, 65, 72), (2, 256, 72), (4, 256, 72))
    assert shapes["rope_sin"] == shapes["rope_cos"]
    assert shapes["t"] == ((2,), (2,), (4,))
    assert shapes["mask"] == ((2, 65), (2, 256), (4, 256))
    with pytest.raises(BucketError, match="only 'batch', 'seq'"):
        profile.shapes([TensorSpec("x", "float32", ("batch", "height", 16))])


def test_profile_round_trips_through_its_dict():
    profile = plan_profiles(parse_profiles("256x256,64", G), parse_batch("1:2"))[1]
    data = profile.to_dict(CONTRACT)
    assert data["shapes"]["rope_cos"] == {"min": [2, 65, 72], "opt": [2, 256, 72], "max": [4, 256, 72]}
    assert BucketProfile.from_dict(data) == profile


def test_choose_profile_prefers_exact_cover_then_nearest_opt():
    ranges = [(p.batch, p.seq) for p in plan_profiles(parse_profiles("64,256,1024", G), parse_batch("1:2"))]
    assert choose_profile(ranges, 2, 64).index == 0
    assert choose_profile(ranges, 2, 100) == choose_profile(ranges, 2, 100)
    choice = choose_profile(ranges, 2, 100)
    assert (choice.index, choice.batch, choice.seq) == (1, 2, 100)   # no padding needed
    # Unguided single image: batch 1 is below every min (2) -> padded up with a masked row.
    choice = choose_profile(ranges, 1, 300)
    assert (choice.index, choice.batch, choice.seq) == (2, 2, 300)
    with pytest.raises(BucketError, match="rebuild the engine"):
        choose_profile(ranges, 2, 1025)
    with pytest.raises(BucketError, match="batch 5"):
        choose_profile(ranges, 5, 10)


def test_choose_profile_pads_into_static_buckets_and_breaks_ties_by_opt():
    static = [(p.batch, p.seq) for p in plan_profiles(parse_profiles("64,256", G), parse_batch("1"), static=True)]
    choice = choose_profile(static, 2, 100)
    assert (choice.index, choice.batch, choice.seq) == (1, 2, 256)
    # Overlapping profiles, both covering seq 128 exactly: the one whose opt is nearer wins.
    overlapping = [(Range(1, 1, 2), Range(1, 512, 512)), (Range(1, 1, 2), Range(1, 128, 512))]
    assert choose_profile(overlapping, 1, 128).index == 1
    assert choose_profile(overlapping, 1, 500).index == 0


def test_choose_profile_avoids_padding_before_chasing_opt():
    # A static 256-token profile would need 100 -> 256 padding (2.5x the work); the dynamic one runs the call
    # as is, although its opt is far away.
    profiles = [(Range(2, 2, 2), Range(256, 256, 256)), (Range(2, 2, 2), Range(1, 1024, 1024))]
    assert choose_profile(profiles, 2, 100).index == 1
    assert choose_profile(profiles, 2, 256).index == 0                # exact fit and exact opt
