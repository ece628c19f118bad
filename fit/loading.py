"""``load_model``: a FiT from a preset, official YAML or config, with official or our checkpoints."""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Optional

import torch

from fit.config import FiTConfig, resolve_config
from fit.model import FiT


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model."""


# Containers a state dict may sit in: training checkpoints and common export formats.
_NESTED_KEYS = ("ema", "model_ema", "state_dict", "model")


def read_state_dict(path: str, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``, ``.bin`` or ``.pt`` checkpoint (plain, EMA, or a training checkpoint)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = _torch_load(path)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    order = _NESTED_KEYS if prefer_ema else _NESTED_KEYS[2:] + _NESTED_KEYS[:2]
    for key in order:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-tensor entries: {', '.join(sorted(bad)[:5])}")
    return state


# How PyTorch files begin: a zip archive (torch >= 1.6), or a pickle (protocol 2+ opcode) in the legacy format.
_TORCH_STARTS = (b"PK", b"\x80")


def _torch_load(path: str):
    """torch.load with weights_only=True, with errors that describe the file: not a checkpoint at all, or one
    that holds Python objects besides tensors (never loaded: unpickling them could run code)."""
    with open(path, "rb") as f:
        start = f.read(2)
    if not start.startswith(_TORCH_STARTS):
        raise CheckpointError(f"{path} is not a checkpoint: neither a PyTorch file (zip or pickle) nor safetensors")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch file of tensors only (damaged, "
                              f"or holding other Python objects, which are never unpickled here); save a state "
                              f"dict of tensors, e.g. as .safetensors") from None


def _describe(keys, limit=8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_strict(model: FiT, state: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:4])}" + (" ..." if len(shapes) > 4 else ""))
    if problems:
        raise CheckpointError(f"{source} does not match the config: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_model(config, checkpoint: Optional[str] = None, *, device="cpu", dtype=torch.float32) -> FiT:
    """Build a FiT in eval mode.

    config: preset name (``fitv2-xl``), official YAML path, :class:`FiTConfig` or official params dict.
    checkpoint: optional ``.safetensors`` / ``.bin`` / ``.pt`` state dict (plain, EMA or training checkpoint).
    """
    cfg: FiTConfig = resolve_config(config)
    model = FiT(cfg)
    if checkpoint is not None:
        load_state_dict_strict(model, read_state_dict(os.fspath(checkpoint)), f"checkpoint {checkpoint}")
    return model.to(device=device, dtype=dtype).eval()
