"""FiT / FiTv2 reference implementation in PyTorch: model, configs, flow and samplers, training."""
from fit.config import PRESETS, ConfigError, FiTConfig, preset, resolve_config
from fit.flow import SamplerSettings
from fit.loading import CheckpointError, load_model, read_state_dict
from fit.model import FiT
from fit.sampling import LatentRequest, sample

__all__ = ["FiT", "FiTConfig", "PRESETS", "ConfigError", "CheckpointError", "SamplerSettings",
           "LatentRequest", "load_model", "preset", "read_state_dict", "resolve_config", "sample"]
