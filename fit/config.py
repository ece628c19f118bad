"""FiT / FiTv2 network configuration: one dataclass, named presets, and the official YAML files.

Field names and defaults are those of the official ``FiT.__init__`` so an official
``diffusion.network_config.params`` block maps onto this class one to one.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from engines.rope import RopeSettings


class ConfigError(ValueError):
    """A configuration the user gave cannot be used (unknown preset, bad YAML, unknown field)."""


@dataclass
class FiTConfig:
    context_size: int = 256
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    use_sit: bool = False
    use_checkpoint: bool = False
    use_swiglu: bool = False
    use_swiglu_large: bool = False
    rel_pos_embed: Optional[str] = "rope"
    norm_type: str = "layernorm"
    q_norm: Optional[str] = None
    k_norm: Optional[str] = None
    qk_norm_weight: bool = False
    qkv_bias: bool = True
    ffn_bias: bool = True
    adaln_bias: bool = True
    adaln_type: str = "normal"
    adaln_lora_dim: Optional[int] = None
    rope_theta: float = 10000.0
    custom_freqs: str = "normal"
    max_pe_len_h: Optional[int] = None
    max_pe_len_w: Optional[int] = None
    decouple: bool = False
    ori_max_pe_len: Optional[int] = None
    online_rope: bool = False
    add_rel_pe_to_v: bool = False
    pretrain_ckpt: Optional[str] = None
    ignore_keys: Optional[list] = None
    finetune: Optional[str] = None
    time_shifting: float = 1
    # Not an official network argument: latent channels classifier-free guidance acts on (None = all). The
    # official forward_with_cfg guides the first 3 of 4; official presets and YAMLs default to that.
    cfg_channels: Optional[int] = None
    # Fields the official YAMLs carry that the network ignores (kept so a round trip loses nothing).
    abs_pos_embed: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.learn_sigma and self.use_sit:
            raise ConfigError("learn_sigma and use_sit cannot both be true (FiTv2 predicts velocity only)")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.adaln_type not in ("normal", "lora", "swiglu"):
            raise ConfigError(f"adaln_type must be normal, lora or swiglu, got {self.adaln_type!r}")
        if self.adaln_type == "lora" and not self.adaln_lora_dim:
            raise ConfigError("adaln_type 'lora' needs adaln_lora_dim")

    # ---- derived quantities -------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def token_dim(self) -> int:
        """Channels of one input token: p * p * C."""
        return self.patch_size ** 2 * self.in_channels

    @property
    def mlp_hidden_size(self) -> int:
        """Hidden width of a block's MLP: mlp_ratio x hidden_size, of which SwiGLU keeps 2/3 unless
        ``use_swiglu_large``."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        return hidden * 2 // 3 if self.use_swiglu and not self.use_swiglu_large else hidden

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def train_grid_side(self) -> int:
        """Side (in patches) of the square grid the model was trained on: the default ``ori_max_pe_len``."""
        return self.ori_max_pe_len or int(round(self.context_size ** 0.5))

    def rope_settings(self, method: Optional[str] = None) -> RopeSettings:
        """RoPE settings of this network, optionally with another extrapolation method."""
        base = RopeSettings(self.head_dim, float(self.rope_theta), self.custom_freqs.lower(), self.decouple,
                            self.ori_max_pe_len)
        if method is None:
            return base
        return base.with_method(method, self.train_grid_side)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return out

    def replace(self, **changes) -> "FiTConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, params: dict) -> "FiTConfig":
        """Build from an official ``network_config.params`` mapping; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()})

    @classmethod
    def from_yaml(cls, path: str) -> "FiTConfig":
        """The network of a config YAML (:func:`network_from_document`): an official FiT config, or ``preset:``
        with optional ``diffusion.network_config.params`` overrides, as ``fit-train`` reads and writes it."""
        return network_from_document(read_yaml(path), path)


def read_yaml(path: str) -> dict:
    """A config YAML as a mapping; ConfigError (one line) when it cannot be read or is not a mapping."""
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must be a mapping")
    return doc


def network_from_document(doc: dict, source: str = "config") -> FiTConfig:
    """The one reading of a config document's network, for every tool (fit-train, fit-export, fit-eval, load_model):

    ``preset: NAME`` gives the preset's fields, and ``diffusion.network_config.params`` (the official layout)
    overrides them field by field; without a preset, the params alone are the network (official FiT YAMLs, which
    guide 3 of 4 latent channels unless they say otherwise).
    """
    diffusion = doc.get("diffusion") or {}
    network = diffusion.get("network_config") if isinstance(diffusion, dict) else None
    params = network.get("params") if isinstance(network, dict) else None
    if not isinstance(diffusion, dict) or (network is not None and not isinstance(network, dict)) \
            or (params is not None and not isinstance(params, dict)):
        raise ConfigError(f"config {source}: diffusion.network_config.params must be a mapping")
    if doc.get("preset"):
        name = str(doc["preset"]).lower()
        if name not in PRESETS:
            raise ConfigError(f"config {source}: unknown preset {doc['preset']!r}; presets: {', '.join(PRESETS)}")
        return FiTConfig.from_dict({**PRESETS[name], **(params or {})})
    if params is None:
        raise ConfigError(f"config {source} names no network: give 'preset: NAME' and/or "
                          f"diffusion.network_config.params")
    return FiTConfig.from_dict({"cfg_channels": 3, **params})


# ------------------------------------------------------------------------------------------------------------
# Presets (published numbers; FiTv2 uses SwiGLU at 2/3 width, QK-LayerNorm, AdaLN-LoRA at rank hidden/4)
# ------------------------------------------------------------------------------------------------------------

_FITV2 = dict(cfg_channels=3, context_size=256, patch_size=2, in_channels=4, mlp_ratio=4.0, class_dropout_prob=0.1,
              num_classes=1000, learn_sigma=False, use_sit=True, use_swiglu=True, use_swiglu_large=False,
              q_norm="layernorm", k_norm="layernorm", qk_norm_weight=False, rel_pos_embed="rope", adaln_type="lora")
_HR = dict(context_size=1024, custom_freqs="ntk-aware", decouple=True, ori_max_pe_len=16, online_rope=True,
           ignore_keys=["x_embedder", "bias", "LN", "final_layer"], finetune="partial")

PRESETS: dict[str, dict] = {
    "fit-xl": dict(context_size=256, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                   mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, use_swiglu=True,
                   use_swiglu_large=True, rel_pos_embed="rope", cfg_channels=3),
    "fitv2-b": dict(_FITV2, hidden_size=768, depth=15, num_heads=12, adaln_lora_dim=192),
    "fitv2-xl": dict(_FITV2, hidden_size=1152, depth=36, num_heads=16, adaln_lora_dim=288),
    "fitv2-3b": dict(_FITV2, hidden_size=2304, depth=40, num_heads=24, adaln_lora_dim=576),
    "fitv2-xl-hr": dict(_FITV2, **_HR, hidden_size=1152, depth=36, num_heads=16, adaln_lora_dim=288),
    "fitv2-3b-hr": dict(_FITV2, **_HR, hidden_size=2304, depth=40, num_heads=24, adaln_lora_dim=576,
                        use_checkpoint=True),
    # Small configurations with every FiTv2 feature, for tests and quick experiments.
    "fitv2-tiny": dict(_FITV2, cfg_channels=None, hidden_size=64, depth=2, num_heads=4, adaln_lora_dim=16,
                       num_classes=10),
    "fitv2-tiny-hr": dict(_FITV2, **dict(_HR, ori_max_pe_len=4), cfg_channels=None, hidden_size=64, depth=2,
                          num_heads=4, adaln_lora_dim=16, num_classes=10),
    "fit-tiny": dict(context_size=256, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                     num_classes=10, learn_sigma=True, use_swiglu=True, use_swiglu_large=True),
}


def preset(name: str) -> FiTConfig:
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return FiTConfig(**PRESETS[key])


def resolve_config(spec) -> FiTConfig:
    """A FiTConfig from a config object, a dict of official params, a preset name or an official YAML path."""
    if isinstance(spec, FiTConfig):
        return spec
    if isinstance(spec, dict):
        return FiTConfig.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.lower() in PRESETS:
            return preset(text)
        if text.endswith((".yaml", ".yml")) or os.path.exists(text):
            return FiTConfig.from_yaml(text)
        return preset(text)
    raise ConfigError(f"cannot make a config from {type(spec).__name__}")
