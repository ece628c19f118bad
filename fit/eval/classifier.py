"""An independent shape classifier: judges generated images by the class they show, at any size.

A small all-convolutional network with global average pooling, trained from scratch on procedural shapes at
many canvas sizes and aspect ratios (wider than any diffusion model's training budget, so it can judge
extrapolated sizes too) with its own data seed. Its pooled features feed the Fréchet distance.

Recipe (about 5 minutes on 2 CPU cores)::

    python -m fit.eval.classifier --out fit/eval/shape_classifier.safetensors
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fit.data.procedural import SHAPES, draw

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "shape_classifier.safetensors")
DATA_SEED = 20_241_017                     # disjoint from the seeds diffusion models train on (small integers)
FEATURE_DIM = 128
VIEW_SIDE = 64


class ShapeClassifier(nn.Module):
    """(B, 3, H, W) images in [-1, 1] -> logits (B, classes); ``features`` -> (B, 128).

    Images are first resized so their short side is ``VIEW_SIDE`` pixels: shapes are drawn relative to the short
    side, so the network sees every canvas at one scale, whatever its size and aspect ratio.
    """

    def __init__(self, num_classes: int = len(SHAPES), width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width, 4 * width]
        strides = [2, 2, 2, 2, 1]
        layers = []
        for cin, cout, stride in zip(chans[:-1], chans[1:], strides):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)                                   # stride 16
        self.head = nn.Linear(chans[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) != VIEW_SIDE:
            size = (max(1, round(h * VIEW_SIDE / min(h, w))), max(1, round(w * VIEW_SIDE / min(h, w))))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return self.body(x).mean(dim=(2, 3))                                 # (B, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


#################################################################################
#                                  Training                                     #
#################################################################################

def training_sizes(min_side: int = 32, max_side: int = 128, step: int = 8, max_aspect: float = 3.0):
    """Canvas sizes (H, W) in pixels the classifier learns from."""
    sides = range(min_side, max_side + 1, step)
    return [(h, w) for h in sides for w in sides if max(h, w) <= max_aspect * min(h, w)]


def training_batch(step: int, batch: int, sizes, seed: int = DATA_SEED):
    """Batch ``step`` of the recipe: one canvas size, procedural images, mild noise/blur so imperfect samples
    from a generator are still judged by their shape."""
    rng = np.random.default_rng([seed, step])
    h, w = sizes[int(rng.integers(len(sizes)))]
    labels = rng.integers(len(SHAPES), size=batch)
    images = torch.from_numpy(np.stack([draw(rng, int(c), h, w) for c in labels]))
    noise = torch.from_numpy(rng.uniform(0, 0.15, (batch, 1, 1, 1)).astype(np.float32))
    g = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    images = images + noise * torch.randn(images.shape, generator=g)
    if rng.random() < 0.3:
        images = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return images.clamp(-1, 1), torch.from_numpy(labels)


def train_classifier(steps: int = 1000, batch: int = 64, lr: float = 2e-3, seed: int = 0, log_every: int = 100):
    """Train a :class:`ShapeClassifier` with the repository recipe; returns it in eval mode."""
    torch.manual_seed(seed)
    model = ShapeClassifier()
    sizes = training_sizes()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    for step in range(steps):
        x, y = training_batch(step, batch, sizes)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    return model.eval()


@torch.no_grad()
def accuracy_on_procedural(model: ShapeClassifier, height: int, width: int, n: int = 512, seed: int = 1) -> float:
    """Accuracy on clean procedural images of one size (data seed ``seed``, not the training seed)."""
    rng = np.random.default_rng([seed, height, width])
    labels = np.arange(n) % len(SHAPES)
    images = torch.from_numpy(np.stack([draw(rng, int(c), height, width) for c in labels]))
    pred = torch.cat([model(chunk).argmax(1) for chunk in images.split(128)])
    return float((pred.numpy() == labels).mean())


def save_classifier(model: ShapeClassifier, path: str) -> None:
    from safetensors.torch import save

    from engines.atomic import atomic_write

    atomic_write(path, save({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                            metadata={"classes": ",".join(SHAPES)}))


def load_classifier(path: str | None = None) -> ShapeClassifier:
    """The shipped classifier (or one at ``path``), in eval mode."""
    from safetensors.torch import load_file

    path = path or DEFAULT_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shape classifier weights {path} not found; train them with "
                                f"`python -m fit.eval.classifier --out {path}`")
    model = ShapeClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


def _main():
    ap = argparse.ArgumentParser(description="Train the shape classifier fit-eval uses.")
    ap.add_argument("--out", default=DEFAULT_WEIGHTS)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = train_classifier(args.steps)
    save_classifier(model, args.out)
    for h, w in [(64, 64), (48, 96), (32, 112), (80, 80), (40, 120), (96, 96), (128, 128)]:
        print(f"clean accuracy {h}x{w}: {accuracy_on_procedural(model, h, w):.3f}")


if __name__ == "__main__":
    _main()
