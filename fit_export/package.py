"""Model packages: export a FiT (and optionally its VAE decoder) into a self-describing directory.

The package is written through :func:`fit_export.package_writer.new_package`: built in a hidden sibling draft and
put in place only once complete, so a failed or killed export never leaves a partial package at ``NAME``, and
``--force`` swaps an existing package for the new one in one step.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from engines import manifest as mf
from engines.buckets import Bucket, BucketError, smallest_bucket, tokens_for_size
from engines.package import now_utc, sha256_file
from engines.rope import EXTRAPOLATIONS
from engines.sampler import SamplerSettings
from fit.config import ConfigError, FiTConfig
from fit.loading import CheckpointError, load_model
from fit.model import FiT
from fit_export.onnx_export import (DEFAULT_OPSET, FP32_OPS, ExportError, export_transformer, export_vae_decoder,
                                    graph_contract, load_vae, run_vae_reference, vae_contract, vae_downsample)
from fit_export.package_writer import new_package

TRANSFORMER_FILE = "transformer.onnx"
VAE_FILE = "vae_decoder.onnx"
WEIGHTS_FILE = "weights.safetensors"
SD_VAE_SCALING = 0.18215
VAE_TOLERANCE = 1e-3          # max abs error of the ONNX decoder relative to the image scale


def export_package(model_or_config: Union[FiT, FiTConfig, str, dict], checkpoint: Optional[str], out_dir,
                   precision: str = "fp32", vae_dir=None, name: Optional[str] = None, force: bool = False,
                   sizes: Optional[Sequence[tuple[int, int]]] = None, buckets: Optional[Sequence[int]] = None,
                   include_weights: bool = False, opset: int = DEFAULT_OPSET,
                   class_names: Optional[Sequence[str]] = None, default_cfg: float = 1.5,
                   default_sampler: str = "euler", default_steps: int = 50, default_time_shift: float = 1.0,
                   default_tail_compression: float = 0.0) -> Path:
    """Export a FiT into the model package ``out_dir`` and return its path.

    model_or_config: a :class:`FiT` (used as is; ``checkpoint`` must then be None), or a preset name, official
        YAML path, :class:`FiTConfig` or params dict, built and loaded from ``checkpoint`` (random weights if None).
    precision: ``fp32`` or ``fp16`` transformer graph.
    vae_dir: local diffusers ``AutoencoderKL`` directory; adds ``vae_decoder.onnx`` (checked against diffusers).
    sizes: (width, height) pixel sizes the package declares; default: the training token budget at five
        aspect ratios. buckets: token budgets; each size goes to the smallest that holds it (default: the
        training budget, plus the token count of each size beyond it).
    include_weights: also store the PyTorch weights (``weights.safetensors``) so ``validate`` needs no checkpoint.
    force: replace an existing package at ``out_dir``.
    class_names: one name per class (``fit-run --class NAME``); default_cfg / default_sampler / default_steps /
        default_time_shift / default_tail_compression: the generation defaults the manifest records for runtimes.

    Raises ExportError, ConfigError or CheckpointError (all ValueError/RuntimeError with a one-line message);
    nothing is left at ``out_dir`` on failure.
    """
    out_dir = Path(out_dir)
    with new_package(out_dir, force=force) as draft:
        if isinstance(model_or_config, FiT):
            if checkpoint is not None:
                raise ExportError("pass either a FiT model or a config with a checkpoint, not a model and a checkpoint")
            model = model_or_config
            if any(p.device.type != "cpu" for p in model.parameters()):
                # The graph is device-independent and the export traces CPU example inputs: export a CPU copy,
                # leaving the caller's model where it is.
                model = copy.deepcopy(model).cpu()
        else:
            model = load_model(model_or_config, checkpoint)
        cfg = model.config
        name = name or (model_or_config if isinstance(model_or_config, str) and not os.path.exists(model_or_config)
                        else out_dir.name)
        if class_names is not None and len(class_names) != cfg.num_classes:
            raise ExportError(f"{len(class_names)} class names given for a model with {cfg.num_classes} classes")
        try:
            sampler_defaults = SamplerSettings(default_sampler, default_steps, time_shift=default_time_shift,
                                               tail_compression=default_tail_compression)
        except ValueError as e:
            raise ExportError(str(e)) from None
        if not default_cfg >= 0:
            raise ExportError(f"the default guidance scale must be >= 0, got {default_cfg}")
        vae = load_vae(vae_dir) if vae_dir is not None else None
        sizes_section = describe_sizes(cfg, vae, sizes, buckets)         # bad sizes fail before the slow export

        transformer = export_transformer(model, draft.add(TRANSFORMER_FILE), precision, opset)
        if transformer["external_data"]:
            draft.add(transformer["external_data"])
        vae_entry = None
        if vae is not None:
            vae_entry = export_vae_decoder(vae, draft.add(VAE_FILE), opset)
            vae_entry["check"] = check_vae_decoder(vae, draft.path / VAE_FILE)
        reference = {"weights": None, "checkpoint": None, "checkpoint_sha256": None}
        if checkpoint is not None:
            reference.update(checkpoint=Path(checkpoint).name, checkpoint_sha256=sha256_file(checkpoint))
        if include_weights:
            from safetensors.torch import save_file
            save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
                      str(draft.add(WEIGHTS_FILE)))
            reference["weights"] = WEIGHTS_FILE
        draft.manifest = mf.Manifest(
            name=str(name), created=now_utc(), model=describe_model(cfg, class_names),
            latent=describe_latent(cfg, vae), transformer=describe_transformer(model, transformer),
            vae_decoder=mf.VaeDecoderSection.from_dict(vae_entry, "vae_decoder") if vae_entry else None,
            guidance=mf.GuidanceSection(float(default_cfg), cfg.cfg_channels, 0.0),
            sampler=mf.SamplerSection(method=sampler_defaults.method, steps=sampler_defaults.steps,
                                      atol=sampler_defaults.atol, rtol=sampler_defaults.rtol,
                                      time_shift=sampler_defaults.time_shift,
                                      tail_compression=sampler_defaults.tail_compression,
                                      time_shifting=float(cfg.time_shifting)),
            rope=describe_rope(cfg), sizes=sizes_section, reference=mf.ReferenceSection(**reference),
            files=draft.files)
    return out_dir


#################################################################################
#                                Manifest sections                              #
#################################################################################

def describe_model(cfg: FiTConfig, class_names: Optional[Sequence[str]] = None) -> mf.ModelSection:
    return mf.ModelSection(config=cfg.to_dict(), patch_size=cfg.patch_size, latent_channels=cfg.in_channels,
                           token_dim=cfg.token_dim, out_token_dim=cfg.patch_size ** 2 * cfg.out_channels,
                           head_dim=cfg.head_dim, num_classes=cfg.num_classes, null_class=cfg.null_class,
                           class_names=tuple(class_names) if class_names is not None else None,
                           learn_sigma=cfg.learn_sigma)


def describe_latent(cfg: FiTConfig, vae) -> mf.LatentSection:
    """SD-VAE latent space for 4-channel models (8x, 0.18215 unless the VAE says otherwise); RGB pixels for 3."""
    if cfg.in_channels == 3 and vae is None:
        return mf.LatentSection("pixel", 1, 1.0, cfg.patch_size)
    d = vae_downsample(vae) if vae is not None else 8
    scaling = float(vae.config.scaling_factor) if vae is not None else SD_VAE_SCALING
    return mf.LatentSection("sd-vae", d, scaling, d * cfg.patch_size)


def describe_transformer(model: FiT, export_facts: dict) -> mf.TransformerSection:
    contract = graph_contract(model, export_facts["precision"])
    return mf.TransformerSection(
        file=TRANSFORMER_FILE, precision=contract.precision, opset=export_facts["opset"], inputs=contract.inputs,
        outputs=contract.outputs, external_data=export_facts["external_data"], exporter=export_facts["exporter"],
        export_seconds=export_facts["seconds"], fp32_ops=tuple(FP32_OPS) if contract.precision == "fp16" else (),
        dynamic_axes=contract.dynamic_axes)


def describe_rope(cfg: FiTConfig) -> mf.RopeSection:
    settings = cfg.rope_settings()
    return mf.RopeSection(theta=settings.theta, head_dim=settings.head_dim, method=settings.method,
                          decouple=settings.decouple, ori_max_pe_len=cfg.train_grid_side, online=cfg.online_rope,
                          methods=EXTRAPOLATIONS, max_pe_len=(cfg.max_pe_len_h, cfg.max_pe_len_w))


def default_grids(cfg: FiTConfig) -> list[tuple[int, int]]:
    """(h, w) patch grids within the training token budget: square, 4:3, 3:4, 4:1, 1:4 (width:height)."""
    budget = cfg.context_size
    grids = []
    for ratio in (1.0, 4 / 3, 3 / 4, 4.0, 1 / 4):
        h = max(1, math.isqrt(int(budget / ratio)))
        w = max(1, min(budget // h, int(round(h * ratio))))
        if (h, w) not in grids:
            grids.append((h, w))
    return grids


def describe_sizes(cfg: FiTConfig, vae, sizes=None, buckets=None) -> dict:
    """The ``sizes`` section: buckets (token budget + the pixel sizes [width, height] it serves), default size.

    A size belongs to the smallest bucket that holds its tokens. Default buckets: the training token budget,
    plus the token count of every declared size beyond the largest bucket.
    """
    g = describe_latent(cfg, vae).pixel_granularity
    if sizes is None:
        sizes = [(w * g, h * g) for h, w in default_grids(cfg)]
    try:
        tokens_of = {(int(w), int(h)): tokens_for_size(int(w), int(h), g) for w, h in sizes}
    except BucketError as e:
        raise ExportError(str(e)) from None
    budgets = sorted(set(buckets) if buckets else {cfg.context_size})
    if any(b <= 0 for b in budgets):
        raise ExportError(f"bucket token budgets must be positive, got {budgets}")
    if not buckets:
        budgets = sorted(set(budgets) | {t for t in tokens_of.values() if t > budgets[-1]})
    plain = [Bucket(b) for b in budgets]
    served = {b: [] for b in budgets}
    for size, tokens in tokens_of.items():
        try:
            served[smallest_bucket(plain, tokens).tokens].append(list(size))
        except BucketError:
            raise ExportError(f"size {size[0]}x{size[1]} has {tokens} tokens, more than the largest bucket "
                              f"({budgets[-1]})") from None
    side = math.isqrt(cfg.context_size) * g
    return mf.SizesSection(train_token_budget=cfg.context_size, max_tokens=budgets[-1], default=(side, side),
                           buckets=tuple(mf.BucketSection(b, tuple(tuple(s) for s in served[b])) for b in budgets))


#################################################################################
#                                Helpers                                        #
#################################################################################

def check_vae_decoder(vae, path) -> dict:
    """Run the exported decoder on the runtime's ONNX Runtime backend (CPU) against diffusers at two latent sizes;
    raise on a mismatch."""
    from engines.backends.onnxruntime import OnnxRuntimeBackend
    from engines.errors import PackageError

    contract = vae_contract(vae)
    rng = np.random.default_rng(0)
    worst = 0.0
    with OnnxRuntimeBackend(None, model_path=path, device="cpu") as decoder:
        try:
            contract.check_names(decoder.inputs, decoder.outputs, Path(path).name)
        except PackageError as err:
            raise ExportError(str(err)) from None
        for batch, height, width in ((1, 4, 6), (2, 7, 3)):
            latent = rng.standard_normal((batch, contract.latent_channels, height, width)).astype(np.float32)
            ref = run_vae_reference(vae, latent)
            out = decoder.infer(contract.feed(latent=latent))[contract.OUTPUT_NAMES[0]]
            if out.shape != ref.shape or out.shape != contract.image_shape(batch, height, width):
                raise ExportError(f"VAE decoder gives shape {out.shape} for latent {latent.shape}, diffusers "
                                  f"{ref.shape}, the contract {contract.image_shape(batch, height, width)}")
            worst = max(worst, float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12)))
    if not worst <= VAE_TOLERANCE:
        raise ExportError(f"exported VAE decoder differs from diffusers: max abs error {worst:.2e} of the output "
                          f"scale (tolerance {VAE_TOLERANCE:g})")
    return {"max_abs_relative_to_scale": worst, "tolerance": VAE_TOLERANCE}


__all__ = ["export_package", "ExportError", "ConfigError", "CheckpointError", "TRANSFORMER_FILE", "VAE_FILE",
           "WEIGHTS_FILE"]
