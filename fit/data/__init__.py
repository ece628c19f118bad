"""Training data for FiT: the dataset contract ``fit-train`` trains on, and ``open_dataset`` for a data spec.

A dataset is anything with

    num_classes: int      labels are 0 .. num_classes - 1
    token_dim: int        channels of one token, p * p * C (must equal the model's ``config.token_dim``)
    max_tokens: int       the token budget L: no sample is longer
    __len__() -> int
    load(index, generator) -> dict with
        feature (N, token_dim) float32   tokens of one image, row-major patches (``fit.flow.patchify`` order)
        grid    (2, N) int64             row 0 column index, row 1 row index of each token
        size    (2,) int64               (h, w) of the image in patches, h * w = N
        label   int

``load`` must return the same thing for the same (index, generator state): random augmentation (a flip, the
resize/crop pick) draws from ``generator`` only, which is what makes DDP and ``--resume`` exact.
:func:`fit.data.batching.image_sample` turns a (C, H, W) image into such a dict.

Data specs (``fit-train run --data``): ``KIND:ARG`` for a registered kind (``procedural:SEED``), or a folder in
the official flexible-latent format (:mod:`fit.data.latent_folder`).
"""
from __future__ import annotations

import importlib
import os
from typing import Protocol

import torch


class DataError(ValueError):
    """Data the user gave cannot be used (missing or empty folder, corrupt file, wrong shapes)."""


class FlexibleDataset(Protocol):
    num_classes: int
    token_dim: int
    max_tokens: int

    def __len__(self) -> int: ...

    def load(self, index: int, generator: torch.Generator) -> dict: ...


# KIND -> module providing ``from_spec(arg: str, *, config: FiTConfig, max_tokens: int) -> FlexibleDataset``.
# Modules are imported only when their kind is asked for.
DATA_KINDS = {
    "procedural": "fit.data.procedural",
}


def open_dataset(spec: str, config, max_tokens: int) -> FlexibleDataset:
    """The dataset a ``--data`` spec names, checked against the model config before any training starts."""
    kind, sep, arg = str(spec).partition(":")
    if sep and kind in DATA_KINDS:
        dataset = importlib.import_module(DATA_KINDS[kind]).from_spec(arg, config=config, max_tokens=max_tokens)
    elif sep and not os.path.exists(spec) and len(kind) > 1:
        raise DataError(f"unknown data kind {kind!r} in {spec!r}; kinds: {', '.join(DATA_KINDS)}, or a folder path")
    else:
        from fit.data.latent_folder import LatentFolder
        dataset = LatentFolder(spec, max_tokens)
    check_compatible(dataset, config, spec)
    return dataset


def check_compatible(dataset: FlexibleDataset, config, spec: str = "data") -> None:
    if len(dataset) == 0:
        raise DataError(f"{spec} holds no samples")
    if dataset.token_dim != config.token_dim:
        raise DataError(f"{spec} has tokens of {dataset.token_dim} channels but the model takes "
                        f"{config.token_dim} (patch_size {config.patch_size}, in_channels {config.in_channels})")
    if dataset.num_classes > config.num_classes:
        raise DataError(f"{spec} has {dataset.num_classes} classes but the model has num_classes "
                        f"{config.num_classes}")
