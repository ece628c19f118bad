"""The FiT model against the official implementation: parameter names/shapes, numbers, masks, RoPE inputs, CFG,
and ``load_model`` with every checkpoint format.

Fixtures (tests/fixtures/README.md) were produced by the official code; they hold data only.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.rope import rope_tables, rope_tables_from_grid
from fit import CheckpointError, FiT, FiTConfig, load_model, preset
from fit.flow import guide

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official_outputs.json").read_text())
TENSORS = load_file(FIXTURES / "official_outputs.safetensors")
CASES = {c["name"]: c for c in OFFICIAL["cases"]}
T = torch.tensor(OFFICIAL["t"])
Y = torch.tensor(OFFICIAL["y"])
TOL = dict(atol=1e-5, rtol=1e-5)   # float32; RoPE powers are computed by numpy instead of torch


def official_state(model: str) -> dict:
    prefix = f"{model}/weights/"
    return {k[len(prefix):]: v.float() for k, v in TENSORS.items() if k.startswith(prefix)}


def official_inputs(model: str):
    """x, grid, mask, size of the padded mixed-resolution batch (sizes OFFICIAL['sizes'])."""
    return tuple(TENSORS[f"{model}/inputs/{k}"].float() if k == "x" else TENSORS[f"{model}/inputs/{k}"]
                 for k in ("x", "grid", "mask", "size"))


def official_config(model: str, **changes) -> FiTConfig:
    return FiTConfig.from_dict({**OFFICIAL["models"][model], "cfg_channels": 3, **changes})


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for model in OFFICIAL["models"]:
        files[model] = folder / f"{model}.safetensors"
        save_file(official_state(model), str(files[model]))
    return files


def build(model: str, **changes) -> FiT:
    net = load_model(official_config(model, **changes))
    net.load_state_dict(official_state(model), strict=True)
    return net


# ---------------------------------------------------------------------------------------------------------------
# Parameter names and shapes
# ---------------------------------------------------------------------------------------------------------------

OFFICIAL_STATE_DICTS = json.loads((FIXTURES / "official_state_dicts.json").read_text())["presets"]


@pytest.mark.parametrize("name", sorted(OFFICIAL_STATE_DICTS))
def test_state_dict_names_and_shapes_are_the_official_ones(name):
    with torch.device("meta"):
        model = FiT(preset(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = OFFICIAL_STATE_DICTS[name]
    assert sorted(set(expected) - set(ours)) == [], "missing parameters"
    assert sorted(set(ours) - set(expected)) == [], "parameters the official model does not have"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}


def test_published_parameter_counts():
    counts = {name: sum(np.prod(s) for s in sd.values()) for name, sd in OFFICIAL_STATE_DICTS.items()}
    assert round(counts["fitv2-xl"] / 1e6) == 671
    assert round(counts["fitv2-3b"] / 1e9, 1) == 3.0
    assert round(counts["fit-xl"] / 1e6) == 824


# ---------------------------------------------------------------------------------------------------------------
# Numbers: the official forward on a tiny network
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_the_official_model(name, weight_files):
    case = CASES[name]
    model = load_model(official_config(case["model"], **case["params"]), weight_files[case["model"]])
    assert not model.training
    x, grid, mask, size = official_inputs(case["model"])
    with torch.no_grad():
        if case.get("cfg"):
            i = torch.tensor(case["batch_index"])
            out = model.forward_with_cfg(x[i], torch.tensor(case["t"]), torch.tensor(case["y"]), grid[i], mask[i],
                                         size[i], case["cfg_scale"], case["scale_pow"])
        else:
            out = model(x, T, Y, grid, mask, size)
    torch.testing.assert_close(out, TENSORS[case["output"]], **TOL)


def test_official_cases_are_far_apart():
    """Guards the test above: each RoPE setting changes the output by far more than the tolerance."""
    outs = {n: TENSORS[c["output"]] for n, c in CASES.items() if c["model"] == "v2" and not c.get("cfg")}
    names = sorted(outs)
    gaps = [(outs[a] - outs[b]).abs().max().item() for i, a in enumerate(names) for b in names[i + 1:]]
    assert min(gaps) > 1e-2


def test_load_model_from_an_official_yaml_gives_the_official_outputs(weight_files):
    """What a user does with a released model: official YAML + checkpoint, nothing converted."""
    model = load_model(str(FIXTURES / "configs" / "tiny_extrapolation.yaml"), str(weight_files["v2"]))
    x, grid, mask, size = official_inputs("v2")
    with torch.no_grad():
        torch.testing.assert_close(model(x, T, Y, grid, mask, size), TENSORS["out/ntk_aware_pro1"], **TOL)


# ---------------------------------------------------------------------------------------------------------------
# Padding, RoPE inputs, online RoPE
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "ntk_aware_pro2", "online_ntk_aware_decouple", "v1_plain", "swiglu_adaln"])
def test_padded_batch_gives_each_image_its_own_output(case):
    model_name = CASES[case]["model"]
    model = build(model_name, **CASES[case]["params"])
    x, grid, mask, size = official_inputs(model_name)
    channel_first = not model.use_sit
    with torch.no_grad():
        batched = model(x, T, Y, grid, mask, size)
        for i, (h, w) in enumerate(OFFICIAL["sizes"]):
            n = h * w
            xi = x[i:i + 1, :, :n] if channel_first else x[i:i + 1, :n]
            alone = model(xi, T[i:i + 1], Y[i:i + 1], grid[i:i + 1, :, :n], mask[i:i + 1, :n], size[i:i + 1])
            mine = batched[i:i + 1, :, :n] if channel_first else batched[i:i + 1, :n]
            torch.testing.assert_close(mine, alone, atol=2e-5, rtol=1e-5)
            pad = batched[i, :, n:] if channel_first else batched[i, n:]
            assert torch.all(pad == 0)


@pytest.mark.parametrize("case", ["plain", "yarn_decouple", "ntk_aware_pro2", "online_ntk_by_parts", "v1_plain"])
def test_rope_tables_give_the_same_output_as_the_grid(case):
    model_name, params = CASES[case]["model"], CASES[case]["params"]
    model = build(model_name, **params)
    x, grid, mask, size = official_inputs(model_name)
    settings = model.config.rope_settings()
    if model.config.online_rope:
        cos, sin = rope_tables_from_grid(settings, grid.numpy(), sizes=size.numpy())
    else:
        target = (params.get("max_pe_len_h", 1), params.get("max_pe_len_w", 1))
        cos, sin = rope_tables_from_grid(settings, grid.numpy(), target_hw=target)
    with torch.no_grad():
        from_grid = model(x, T, Y, grid, mask, size)
        from_tables = model(x, T, Y, mask=mask, rope_cos=torch.from_numpy(cos), rope_sin=torch.from_numpy(sin))
    # numpy and torch cos/sin differ in the last float32 bit
    torch.testing.assert_close(from_tables, from_grid, **TOL)


def test_per_image_tables_give_the_same_output_as_the_grid():
    """What export and the sampler feed: one cached table per image, zero rows for padding."""
    model = build("v2")
    x, grid, mask, size = official_inputs("v2")
    cos = torch.zeros(3, x.shape[1], 16)
    sin = torch.zeros_like(cos)
    for i, (h, w) in enumerate(OFFICIAL["sizes"]):
        c, s = rope_tables(model.config.rope_settings(), h, w)
        cos[i, : h * w], sin[i, : h * w] = torch.from_numpy(np.array(c)), torch.from_numpy(np.array(s))
    with torch.no_grad():
        torch.testing.assert_close(model(x, T, Y, mask=mask, rope_cos=cos, rope_sin=sin),
                                   model(x, T, Y, grid, mask), **TOL)


def test_online_rope_uses_each_samples_own_size():
    """Online VisionNTK on image i == fixed VisionNTK computed for image i's size (official semantics)."""
    params = CASES["online_ntk_aware_decouple"]["params"]
    online = build("v2", **params)
    x, grid, mask, size = official_inputs("v2")
    with torch.no_grad():
        batched = online(x, T, Y, grid, mask, size)
        for i, (h, w) in enumerate(OFFICIAL["sizes"]):
            fixed = build("v2", **dict(params, online_rope=False, max_pe_len_h=h, max_pe_len_w=w))
            torch.testing.assert_close(batched[i], fixed(x, T, Y, grid, mask, size)[i], atol=2e-5, rtol=1e-5)
        # a different per-sample size changes the output
        other = online(x, T, Y, grid, mask, size.flip(-1))
    assert (other[0] - batched[0]).abs().max() > 1e-3


def test_online_rope_needs_sizes_and_extrapolation_needs_a_target():
    x, grid, mask, _ = official_inputs("v2")
    with pytest.raises(ValueError, match="size"):
        build("v2", **CASES["online_linear"]["params"])(x, T, Y, grid, mask)
    with pytest.raises(ValueError, match="max_pe_len"):
        build("v2", custom_freqs="yarn", ori_max_pe_len=4)(x, T, Y, grid, mask)
    with pytest.raises(ValueError, match="grid"):
        build("v2")(x, T, Y, mask=mask)


def test_time_shifting_of_one_leaves_ddpm_timesteps_alone():
    """FiT v1 is sampled with integer timesteps 0..999. The official forward always applies
    clamp(s t / (1 + (s - 1) t), max=1), which at s = 1 would turn every t >= 1 into 1; the FiT v1 checkpoint
    was trained without time shifting, so s = 1 must leave t untouched."""
    model = build("v1")
    x, grid, mask, size = official_inputs("v1")
    with torch.no_grad():
        early = model(x, torch.full((3,), 900), Y, grid, mask, size)
        late = model(x, torch.full((3,), 20), Y, grid, mask, size)
    assert (early - late).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------------------

def _cfg_inputs(model_name):
    x, grid, mask, size = official_inputs(model_name)
    i = torch.tensor([0, 1, 0, 1])
    return x[i], torch.tensor([0.3, 0.8, 0.3, 0.8]), torch.tensor([3, 7, 10, 10]), grid[i], mask[i], size[i]


@pytest.mark.parametrize("model_name", ["v2", "v1"])
def test_official_cfg_guides_three_channels(model_name):
    model = build(model_name)
    x, t, y, grid, mask, size = _cfg_inputs(model_name)
    dim = -1 if model.use_sit else 1
    with torch.no_grad():
        plain = model(x, t, y, grid, mask, size)
        out = model.forward_with_cfg(x, t, y, grid, mask, size, cfg_scale=4.0)
    cond, uncond = plain.chunk(2)
    guided = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(out[:2].narrow(dim, 0, 12), guided.narrow(dim, 0, 12), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2:].narrow(dim, 0, 12), guided.narrow(dim, 0, 12), atol=1e-5, rtol=1e-5)
    rest = plain.shape[dim] - 12
    torch.testing.assert_close(out[:2].narrow(dim, 12, rest), cond.narrow(dim, 12, rest))
    torch.testing.assert_close(out[2:].narrow(dim, 12, rest), uncond.narrow(dim, 12, rest))


def test_all_channel_cfg():
    model = build("v2", cfg_channels=None)
    x, t, y, grid, mask, size = _cfg_inputs("v2")
    with torch.no_grad():
        cond, uncond = model(x, t, y, grid, mask, size).chunk(2)
        out = model.forward_with_cfg(x, t, y, grid, mask, size, cfg_scale=2.5)
    torch.testing.assert_close(out, torch.cat([uncond + 2.5 * (cond - uncond)] * 2), atol=1e-5, rtol=1e-5)


def test_guide_with_power_cosine_schedule():
    out = torch.randn(4, 3, 8)
    cond, uncond = out.chunk(2)
    t = torch.tensor([0.0, 1.0])
    guided = guide(out, 5.0, t, guided=8, channel_dim=-1, scale_pow=2.0)
    torch.testing.assert_close(guided[0], uncond[0] + 5.0 * (cond[0] - uncond[0]))   # t = 0 (noise): full scale
    torch.testing.assert_close(guided[1], cond[1])                                   # t = 1 (data): scale 1
    partial = guide(out, 5.0, t, guided=6, channel_dim=-1)
    torch.testing.assert_close(partial[..., 6:], cond[..., 6:])


# ---------------------------------------------------------------------------------------------------------------
# load_model: formats, EMA containers, errors
# ---------------------------------------------------------------------------------------------------------------

def _reference_output(model):
    x, grid, mask, size = official_inputs("v2")
    with torch.no_grad():
        return model(x, T, Y, grid, mask, size)


@pytest.mark.parametrize("suffix, wrap", [
    (".bin", lambda sd: sd),
    (".pt", lambda sd: sd),
    (".pt", lambda sd: {"ema": sd, "model": {k: torch.zeros_like(v) for k, v in sd.items()}, "steps": 10}),
    (".bin", lambda sd: {"model_ema": sd}),
    (".pt", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
])
def test_load_model_reads_torch_checkpoints(tmp_path, suffix, wrap):
    path = tmp_path / f"ckpt{suffix}"
    torch.save(wrap(official_state("v2")), path)
    model = load_model(official_config("v2"), str(path))
    assert not model.training
    torch.testing.assert_close(_reference_output(model), TENSORS["out/plain"], **TOL)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = official_state("v2")
    state.pop("blocks.1.attn.qkv.weight")
    state["blocks.2.attn.qkv.weight"] = torch.zeros(1)
    state["final_layer.linear.bias"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(official_config("v2"), str(path))
    message = str(err.value)
    assert "missing keys: blocks.1.attn.qkv.weight" in message
    assert "unexpected keys: blocks.2.attn.qkv.weight" in message
    assert "final_layer.linear.bias" in message and "shape" in message


def test_checkpoint_of_another_preset_is_refused(weight_files):
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(official_config("swiglu_adaln"), str(weight_files["v2"]))


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("fitv2-tiny", str(tmp_path / "nothing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model("fitv2-tiny", str(junk))
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model("fitv2-tiny", str(listed))


def test_load_model_from_a_preset_without_checkpoint():
    model = load_model("fitv2-tiny")
    assert isinstance(model, FiT) and not model.training
    assert model.config == preset("fitv2-tiny")
