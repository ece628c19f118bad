"""Configs: published presets, official YAML files (diffusion.network_config.params) and the errors users can cause."""
from pathlib import Path

import pytest

from fit import ConfigError, FiTConfig, load_model, preset, resolve_config
from fit.config import PRESETS

CONFIGS = Path(__file__).parent / "fixtures" / "configs"


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hidden, depth, heads, lora", [
    ("fitv2-xl", 1152, 36, 16, 288),
    ("fitv2-3b", 2304, 40, 24, 576),
    ("fitv2-xl-hr", 1152, 36, 16, 288),
    ("fitv2-3b-hr", 2304, 40, 24, 576),
])
def test_fitv2_presets_have_the_published_numbers(name, hidden, depth, heads, lora):
    cfg = preset(name)
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.adaln_lora_dim) == (hidden, depth, heads, lora)
    assert (cfg.patch_size, cfg.in_channels, cfg.num_classes) == (2, 4, 1000)
    assert cfg.adaln_type == "lora" and cfg.use_sit and not cfg.learn_sigma
    assert cfg.use_swiglu and not cfg.use_swiglu_large
    assert cfg.q_norm == cfg.k_norm == "layernorm"
    assert cfg.out_channels == 4 and cfg.token_dim == 16 and cfg.null_class == 1000
    assert cfg.cfg_channels == 3                      # official forward_with_cfg guides 3 of 4 latent channels


def test_high_resolution_presets_use_online_vision_ntk():
    for name in ("fitv2-xl-hr", "fitv2-3b-hr"):
        cfg = preset(name)
        assert cfg.context_size == 1024
        assert (cfg.custom_freqs, cfg.decouple, cfg.ori_max_pe_len, cfg.online_rope) == ("ntk-aware", True, 16, True)
    assert preset("fitv2-xl").train_grid_side == 16


def test_fit_v1_preset():
    cfg = preset("fit-xl")
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads) == (1152, 28, 16)
    assert cfg.learn_sigma and not cfg.use_sit and cfg.out_channels == 8
    assert cfg.use_swiglu and cfg.use_swiglu_large and cfg.adaln_type == "normal"


def test_preset_names_are_case_insensitive_and_every_preset_builds_a_config():
    assert preset("FiTv2-XL") == preset("fitv2-xl")
    for name in PRESETS:
        assert isinstance(preset(name), FiTConfig)


def test_unknown_preset_is_a_config_error_listing_the_presets():
    with pytest.raises(ConfigError, match="fitv2-xl"):
        preset("fitv2-xxl")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("fitv2-xxl")
    with pytest.raises(ConfigError):
        load_model("no-such-model")
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# Official YAML files
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_name, preset_name", [
    ("fitv2_xl.yaml", "fitv2-xl"), ("fitv2_hr_xl.yaml", "fitv2-xl-hr"), ("fit_xl.yaml", "fit-xl")])
def test_official_yaml_matches_its_preset(yaml_name, preset_name):
    from_yaml = FiTConfig.from_yaml(str(CONFIGS / yaml_name))
    # The HR YAML names the checkpoint its training started from; that is no network property.
    assert from_yaml.replace(pretrain_ckpt=None) == preset(preset_name)


def test_official_hr_yaml_fields():
    cfg = resolve_config(CONFIGS / "fitv2_hr_xl.yaml")
    assert cfg.custom_freqs == "ntk-aware" and cfg.decouple and cfg.online_rope and cfg.ori_max_pe_len == 16
    assert cfg.pretrain_ckpt == "checkpoints/fitv2_xl.safetensors"
    assert cfg.ignore_keys == ["x_embedder", "bias", "LN", "final_layer"]
    assert cfg.finetune == "partial"
    assert cfg.abs_pos_embed is None


def test_yaml_with_every_official_field():
    cfg = resolve_config(str(CONFIGS / "tiny_extrapolation.yaml"))
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.num_classes) == (64, 2, 4, 2.0, 10)
    assert (cfg.custom_freqs, cfg.max_pe_len_h, cfg.max_pe_len_w, cfg.ori_max_pe_len) == ("ntk-aware-pro1", 6, 8, 4)
    assert cfg.decouple is False and cfg.online_rope is False and cfg.add_rel_pe_to_v is False
    assert (cfg.adaln_type, cfg.adaln_lora_dim, cfg.norm_type, cfg.q_norm, cfg.k_norm) == \
        ("lora", 8, "layernorm", "layernorm", "layernorm")
    assert cfg.use_sit and not cfg.learn_sigma and cfg.use_swiglu and not cfg.use_swiglu_large
    assert (cfg.qkv_bias, cfg.ffn_bias, cfg.adaln_bias, cfg.qk_norm_weight) == (True, True, True, False)
    assert cfg.rope_theta == 10000.0 and cfg.time_shifting == 1
    assert cfg.pretrain_ckpt is None and cfg.ignore_keys is None and cfg.finetune is None
    # an official YAML means the official (3-channel) guidance
    assert cfg.cfg_channels == 3
    settings = cfg.rope_settings()
    assert (settings.head_dim, settings.method, settings.ori_max_pe_len) == (16, "ntk-aware-pro1", 4)


def test_yaml_round_trip_through_dict():
    cfg = FiTConfig.from_yaml(str(CONFIGS / "fitv2_hr_xl.yaml"))
    assert FiTConfig.from_dict(cfg.to_dict()) == cfg


def _write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_bad_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        FiTConfig.from_yaml(_write(tmp_path, "diffusion: [unclosed\n  network_config: {"))


def test_yaml_without_network_section_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="network_config"):
        FiTConfig.from_yaml(_write(tmp_path, "diffusion:\n  transport:\n    path_type: Linear\n"))
    with pytest.raises(ConfigError, match="mapping"):
        FiTConfig.from_yaml(_write(tmp_path, "diffusion:\n  network_config:\n    params: [1, 2]\n"))
    with pytest.raises(ConfigError):
        FiTConfig.from_yaml(_write(tmp_path, "just a string\n"))


def test_unknown_yaml_field_is_named(tmp_path):
    text = "diffusion:\n  network_config:\n    params:\n      hidden_size: 64\n      num_heads: 4\n      hiden_size: 3\n"
    with pytest.raises(ConfigError, match="hiden_size"):
        FiTConfig.from_yaml(_write(tmp_path, text))


def test_missing_yaml_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError):
        load_model(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("changes, message", [
    (dict(learn_sigma=True, use_sit=True), "learn_sigma"),
    (dict(hidden_size=65), "divisible"),
    (dict(adaln_type="lora", adaln_lora_dim=None), "adaln_lora_dim"),
    (dict(adaln_type="film"), "adaln_type"),
])
def test_inconsistent_fields_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        FiTConfig.from_dict({"hidden_size": 64, "num_heads": 4, **changes})


def test_resolve_config_accepts_every_spelling():
    cfg = preset("fitv2-tiny")
    assert resolve_config(cfg) is cfg
    assert resolve_config("fitv2-tiny") == cfg
    assert resolve_config(dict(hidden_size=64, num_heads=4)).hidden_size == 64
    with pytest.raises(ConfigError):
        resolve_config(3.5)


def test_preset_yaml_means_the_same_to_every_reader(tmp_path):
    """``preset:`` + ``diffusion.network_config.params`` overrides: one reading for load_model, fit-export,
    fit-eval (resolve_config) and fit-train (load_run_config)."""
    from fit.train import load_run_config

    path = _write(tmp_path, "preset: fitv2-tiny\ndiffusion: {network_config: {params: {num_classes: 3}}}\n"
                            "train: {steps: 2}\n")
    cfg = resolve_config(path)
    assert cfg == preset("fitv2-tiny").replace(num_classes=3)
    assert cfg == load_run_config(path)[0] == load_model(path).config
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config(_write(tmp_path, "preset: fitv2-huge\n"))

