"""What a sampler adds to each network evaluation: its own vector work on the latents, measured with a velocity that
costs nothing, next to one real evaluation of the default model in the same run.

    python benchmarks/sampler_overhead.py [--repeat 7] [--steps 12]

Shapes: the default model's guided 80x80 batch of the quality benchmark (16 images: x (16, 25, 16), the network
sees batch 32) and the FiTv2-XL latent of one guided 256x256 image (x (1, 1024, 16): guidance doubles the batch inside the
network call, the sampler sees one row) and of a batch of 8 at 1024 tokens. Prints a table: milliseconds per
evaluation spent in the sampler (median of --repeat runs), and for the default model that figure as a share of one
real evaluation measured here. The XL network cannot be timed with its real weights here; its evaluation costs
hundreds of milliseconds on a CPU (README, "Speed on CPU"), so any sampler overhead below a millisecond is noise.
"""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import numpy as np
from common import cpu_name

from engines.sampler import SAMPLERS, SHIFTED, SamplerSettings, integrate

F32 = np.float32


def sampler_ms_per_evaluation(method: str, shape: tuple, steps: int, repeat: int) -> float:
    """Median milliseconds per evaluation of ``integrate`` with a free velocity (a fixed array)."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(shape, dtype=F32)
    field = (rng.standard_normal(shape, dtype=F32) * F32(0.1))
    calls = [0]

    def velocity(x, t):
        calls[0] += 1
        return field

    settings = SamplerSettings(method, steps, time_shift=3.0 if method in SHIFTED else 1.0)
    times = []
    for _ in range(repeat):
        calls[0] = 0
        start = time.perf_counter()
        integrate(velocity, x0, settings, draw=lambda s: np.zeros(s, F32))
        times.append((time.perf_counter() - start) * 1000 / calls[0])
    return statistics.median(times)


def network_ms(repeat: int) -> float:
    """Median milliseconds of one guided evaluation of the default model on the 16-image 80x80 batch (the backend
    call alone, on the feed sampling makes)."""
    import engines

    with engines.load(None, threads=0) as pipe:
        feeds = []
        with pipe.tap(lambda feed, outputs: feeds.append(feed)):
            pipe.sample_latents(pipe.prepare(80, 80, "star", 100, num=16, cfg=4.0, sampler="euler", steps=1))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            pipe.backend.infer(feeds[0])
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    shapes = {"default model, 16 x 80x80 (16, 25, 16)": (16, 25, 16), "FiTv2-XL, 1 x 256x256 (1, 1024, 16)":
              (1, 1024, 16), "FiTv2-XL, 8 x 256x256 (8, 1024, 16)": (8, 1024, 16)}
    methods = [m for m in SAMPLERS if m != "dopri5"] + ["dopri5"]
    net = network_ms(args.repeat)
    print(f"# Sampler overhead per network evaluation ({date.today()}, {cpu_name()}; median of {args.repeat} runs, "
          f"{args.steps} steps; one guided evaluation of the default model on the same 16-image batch: "
          f"{net:.2f} ms)\n")
    print("| sampler | " + " | ".join(shapes) + " |")
    print("|---|" + "---:|" * len(shapes))
    for method in methods:
        cells = []
        for name, shape in shapes.items():
            ms = sampler_ms_per_evaluation(method, shape, args.steps, args.repeat)
            share = f" ({100 * ms / net:.3f} % of an evaluation)" if shape == (16, 25, 16) else ""
            cells.append(f"{ms:.3f} ms{share}")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
