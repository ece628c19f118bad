"""High-resolution post-training (FiTv2): start from a pretrained model, re-initialise and train only a few parts.

The official recipe (``configs/fitv2/config_fitv2_hr_*.yaml``) names them in ``ignore_keys``: every parameter whose
name contains ``x_embedder``, ``bias``, ``LN`` (all adaLN modulations) or ``final_layer`` keeps its fresh
initialisation instead of the pretrained value, and with ``finetune: partial`` only those are trained. The larger
token budget and online VisionNTK RoPE (``online_rope``, ``ori_max_pe_len``) come from the config itself.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn

from fit.config import ConfigError
from fit.loading import load_state_dict_strict, read_state_dict


def matching(names, patterns: Optional[Sequence[str]]) -> list[str]:
    """Names containing any of ``patterns`` (the official substring rule)."""
    return [n for n in names if patterns and any(p in n for p in patterns)]


def init_from_pretrained(model: nn.Module, path: str, reinit: Optional[Sequence[str]] = None) -> list[str]:
    """Load ``path`` into ``model`` except the parameters matching ``reinit``, which keep their fresh values.

    Every other parameter must be in the checkpoint with the same shape (else :class:`CheckpointError`).
    Returns the re-initialised names.
    """
    own = model.state_dict()
    fresh = matching(own, reinit)
    state = {k: v for k, v in read_state_dict(path).items() if k not in fresh}
    state.update({k: own[k] for k in fresh})
    load_state_dict_strict(model, state, f"pretrained checkpoint {path}")
    return fresh


def set_trainable(model: nn.Module, finetune: Optional[str], unfreeze: Optional[Sequence[str]]) -> list[str]:
    """``finetune`` None/``full``: train everything; ``partial``: only names matching ``unfreeze``.

    Returns the names of the trainable parameters.
    """
    names = [n for n, _ in model.named_parameters()]
    if finetune in (None, "full"):
        train = set(names)
    elif finetune == "partial":
        train = set(matching(names, unfreeze))
        if not train:
            raise ConfigError(f"finetune 'partial' unfreezes nothing: no parameter name contains any of {unfreeze}")
    else:
        raise ConfigError(f"finetune must be 'full' or 'partial', got {finetune!r}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in train)
    return [n for n in names if n in train]
