"""Shared fixtures of the runtime tests: a tiny FiTv2 exported once per session through fit_export."""
from __future__ import annotations

import shutil
from pathlib import Path

_CACHE: dict[str, tuple[Path, object]] = {}


def tiny_model(seed: int = 0):
    """fitv2-tiny (guiding 3 of 4 channels) with every weight random, so the zero-initialised output layers
    do not hide differences between the runtime and the reference."""
    import torch

    from fit.config import preset
    from fit.model import FiT

    torch.manual_seed(seed)
    model = FiT(preset("fitv2-tiny").replace(cfg_channels=3)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0, 0.05)
    return model


def tiny_package(tmp_path_factory) -> tuple[Path, object]:
    """(package directory, torch model) of the tiny model, exported once per test session. Tests that modify a
    package copy it first with :func:`copy_package`."""
    if "tiny" not in _CACHE:
        from fit_export import export_package

        model = tiny_model()
        path = export_package(model, None, tmp_path_factory.mktemp("runtime") / "tiny")
        _CACHE["tiny"] = (Path(path), model)
    return _CACHE["tiny"]


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def jobs(pipe, requests, **settings) -> list:
    """The jobs of ``requests`` (engines Request objects, one image each) with the same settings, checked by
    ``Pipeline.prepare`` as any front end checks them."""
    return [pipe.prepare(r.width, r.height, r.label, r.seed, **settings)[0] for r in requests]
