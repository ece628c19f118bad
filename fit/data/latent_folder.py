"""The official flexible-latent format (the released ImageNet latents), read and written.

One ``.safetensors`` file per image holds

    feature (2, h, w, p*p*C)   the image's tokens, unflipped and horizontally flipped (either order)
    grid    (2, h*w)           row 0 column index, row 1 row index of each token
    size    (2,)               (h, w) in patches
    label   (1,)               class index

in one of these folders, for a token budget L:

    less_than_16               images of fewer than 16 tokens (not trained on)
    from_16_to_{L}             images that fit the budget, at their own size
    greater_than_{L}_resize    larger images resized (aspect kept) to fit the budget
    greater_than_{L}_crop      the same images resized and centre-cropped to a square, when both sides exceed it

An image in both ``greater_than`` folders is one sample: each visit picks the resize or crop version at random
(the official ``random`` mode); one visit also picks one of the two flips at random.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import Optional

import torch
from tqdm import tqdm

from fit.data import DataError

MIN_TOKENS = 16
PICKS = ("random", "resize", "crop")
META_FILE = "dataset.json"   # written by ``fit-train prepare`` (class names, settings); not in the official format


def folder_names(max_tokens: int) -> dict[str, str]:
    return dict(small=f"less_than_{MIN_TOKENS}", fits=f"from_{MIN_TOKENS}_to_{max_tokens}",
                resize=f"greater_than_{max_tokens}_resize", crop=f"greater_than_{max_tokens}_crop")


def budgets_in(root: str) -> list[int]:
    """Token budgets L that have a folder in ``root``."""
    found = set()
    for name in os.listdir(root):
        m = re.fullmatch(rf"from_{MIN_TOKENS}_to_(\d+)|greater_than_(\d+)_(?:resize|crop)", name)
        if m:
            found.add(int(m.group(1) or m.group(2)))
    return sorted(found)


def write_latent(path: str, feature: torch.Tensor, label: int) -> None:
    """Write one sample atomically. feature: (2, h, w, D) = [tokens, tokens of the flipped image]."""
    from safetensors.torch import save

    from engines.atomic import atomic_write
    from engines.rope import image_grid

    _, h, w, _ = feature.shape
    tensors = dict(feature=feature.contiguous(), grid=torch.from_numpy(image_grid(h, w)),
                   size=torch.tensor([h, w], dtype=torch.int64), label=torch.tensor([int(label)], dtype=torch.int64))
    atomic_write(path, save(tensors))


def _header(path: str, max_tokens: int) -> tuple[int, int]:
    """(label, token_dim) of one file, checking keys and shapes without reading the feature."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        missing = {"feature", "grid", "size", "label"} - keys
        if missing:
            raise DataError(f"{path}: missing {', '.join(sorted(missing))}")
        shape = f.get_slice("feature").get_shape()
        grid_shape = f.get_slice("grid").get_shape()
        size = f.get_tensor("size").reshape(-1).tolist()
        label = f.get_tensor("label").reshape(-1)
    if len(shape) != 4 or shape[0] != 2:
        raise DataError(f"{path}: feature has shape {shape}, expected (2, h, w, D)")
    _, h, w, dim = shape
    if size != [h, w] or list(grid_shape) != [2, h * w]:
        raise DataError(f"{path}: size {size} / grid {grid_shape} do not match feature {shape}")
    if h * w > max_tokens:
        raise DataError(f"{path}: {h * w} tokens exceed the budget of {max_tokens}")
    if label.numel() != 1 or int(label) < 0:
        raise DataError(f"{path}: bad label {label.tolist()}")
    return int(label), dim


class LatentFolder:
    """A folder in the official flexible-latent format for token budget ``max_tokens``.

    pick: ``random`` (official) | ``resize`` | ``crop`` — which version of a large image to use.
    Every file's header is checked when the folder is opened; unreadable files are skipped and counted in
    ``skipped`` (``strict=True`` makes the first one an error).
    """

    def __init__(self, root: str, max_tokens: int, pick: str = "random", strict: bool = False):
        if pick not in PICKS:
            raise DataError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
        if not os.path.isdir(root):
            raise DataError(f"data folder {root} does not exist")
        self.root, self.max_tokens, self.pick = root, int(max_tokens), pick
        names = folder_names(self.max_tokens)
        listing = {kind: self._list(names[kind]) for kind in ("fits", "resize", "crop")}
        if not any(os.path.isdir(os.path.join(root, names[k])) for k in ("fits", "resize")):
            budgets = budgets_in(root)
            hint = (f"it holds budgets {', '.join(map(str, budgets))}: use a config with that context_size or "
                    f"--max-tokens" if budgets else "make one with `fit-train prepare`")
            raise DataError(f"{root} has no {names['fits']} or {names['resize']} folder; {hint}")
        crop = set(listing["crop"]) & set(listing["resize"])
        entries = [(os.path.join(root, names["fits"], f),) for f in listing["fits"]]
        for f in listing["resize"]:
            resized = os.path.join(root, names["resize"], f)
            entries.append((resized, os.path.join(root, names["crop"], f)) if f in crop else (resized,))
        self.entries, self.labels, self.skipped = self._check(entries, strict)
        if not self.entries:
            raise DataError(f"{root} holds no readable samples for budget {self.max_tokens}"
                            + (f" ({len(self.skipped)} unreadable)" if self.skipped else ""))
        self.num_classes = self._num_classes()

    def _list(self, name: str) -> list[str]:
        folder = os.path.join(self.root, name)
        return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []

    def _check(self, entries, strict):
        kept, labels, skipped, dims = [], [], [], set()
        for paths in tqdm(entries, desc="checking latents", unit="file", leave=False, disable=len(entries) < 2000):
            try:
                heads = [_header(p, self.max_tokens) for p in paths]
            except Exception as e:  # safetensors raises its own error types for damaged files
                reason = str(e) if isinstance(e, DataError) else f"{paths[-1]}: unreadable ({e})"
                if strict:
                    raise DataError(reason) from None
                skipped.append(reason)
                continue
            kept.append(paths)
            labels.append(heads[0][0])
            dims.update(d for _, d in heads)
        if len(dims) > 1:
            raise DataError(f"{self.root} mixes token sizes {sorted(dims)}")
        self.token_dim = dims.pop() if dims else 0
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable latent file(s) in {self.root}, e.g. {skipped[0]}")
        return kept, labels, skipped

    def _num_classes(self) -> int:
        meta = os.path.join(self.root, META_FILE)
        if os.path.isfile(meta):
            try:
                with open(meta) as f:
                    return len(json.load(f)["classes"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"cannot read the class list in {meta}: {e}") from None
        return max(self.labels) + 1

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int, generator: Optional[torch.Generator] = None) -> dict:
        from safetensors.torch import load_file

        if generator is None:
            generator = torch.Generator().manual_seed(index)
        paths = self.entries[index]
        choice = int(torch.randint(len(paths), (1,), generator=generator))
        path = {"random": paths[choice], "resize": paths[0], "crop": paths[-1]}[self.pick]
        flip = int(torch.randint(2, (1,), generator=generator))
        try:
            data = load_file(path)
            feature = data["feature"][flip]                                   # (h, w, D)
            h, w, d = feature.shape
            sample = dict(feature=feature.reshape(h * w, d).float(), grid=data["grid"].to(torch.int64),
                          size=data["size"].reshape(2).to(torch.int64), label=int(data["label"].reshape(-1)[0]))
        except Exception as e:
            raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        if not torch.isfinite(sample["feature"]).all():
            raise DataError(f"{path}: the features hold NaN or infinite values")
        return sample
