"""Sampler quality per network evaluation: every fixed-grid sampler and time schedule against a converged reference.

    python benchmarks/sampler_quality.py [--quick] [--sizes 80x80,128x64,128x128:linear]
        [--samplers euler,heun,ab2,unipc] [--shifts 1,2,3,4,6] [--tails 0,1] [--evals 4,6,8,10,12,16,24,32]
        [--scaled-shift 3] [--threads 1] [--jobs 1] [--out benchmarks/results/sampler_quality]
        [--fit-eval [--fit-eval-settings ab2:12:6:1,unipc:12:3]]

The default model (``engines.load(None)``) draws 16 images per size (classes 0-7 twice, seeds 100-115, guidance 4);
a size is ``WxH`` or ``WxH:EXTRAPOLATION`` (128x128 holds only with ``linear``, PI: docs/default-model.md). The
reference is the same images integrated by dopri5 at atol 1e-7, rtol 1e-6 (a Pipeline whose manifest carries those
tolerances, as dopri5 reads them from the package); dopri5 at atol 1e-8, rtol 1e-7 checks that it has converged.

For each sampler x time schedule x evaluation count (heun: evaluations / 2 steps; a count a sampler cannot make is
skipped) it records the image PSNR (``engines.metrics.psnr`` over all 16 images' uint8 pixels, peak 255) and the
latent relative RMSE (sqrt(sum (x - ref)^2 / sum ref^2) over all 16 latents) against the reference. Schedules:
every fixed time shift of ``--shifts`` with every tail compression of ``--tails`` (``SamplerSettings``' time_shift
and tail_compression), and one resolution-dependent candidate, ``--scaled-shift`` S x sqrt(tokens / training
tokens) without tail compression, reported only at the sizes where it differs from every fixed shift. Beside them: the
``--baseline`` (default heun 16 steps = 32 evaluations, the package default before the multistep samplers), the
package's default sampler and dopri5 at the package's tolerances. A summary gives, per sampler and size, the
fewest evaluations whose PSNR reaches the baseline's.

``--fit-eval``: fit-eval's judge (fit/eval: the shape classifier's accuracy and the Fréchet distance of its features
against procedural images, ``EvalSettings``' sample counts, seeds and guidance) at the package's training sizes for
the package default and each ``--fit-eval-settings`` sampler:steps:shift[:tail]. Its images come from the runtime, as
``fit-run`` writes them (uint8), the way ``fit-export quantize`` measures shape accuracy; needs torch.

Writes ``<out>.json`` (every number) and ``<out>.md`` (the tables) with the machine and date; ``--quick`` (one size,
fewer shifts and counts) only prints unless ``--out`` is given. A script, not a test.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from typing import Optional

import numpy as np

from common import ROOT, cpu_name
from engines.metrics import psnr  # after common, which puts the repository on the path

IMAGES = 16                        # classes 0-7 twice
FIRST_SEED = 100
CFG = 4.0
REFERENCE = (1e-7, 1e-6)           # dopri5 (atol, rtol) of the reference
CHECK = (1e-8, 1e-7)               # ... and of the run that checks it has converged
FULL = {"sizes": "80x80,128x64,128x128:linear", "samplers": "euler,heun,ab2,unipc", "shifts": "1,2,3,4,6",
        "tails": "0,1", "evals": "4,6,8,10,12,16,24,32"}
QUICK = {"sizes": "80x80", "samplers": "euler,heun,ab2,unipc", "shifts": "1,3", "tails": "0,1", "evals": "4,8,16"}
OUT = ROOT / "benchmarks" / "results" / "sampler_quality"


# ----------------------------------------------------------------------------------------------------------
# Sampling and comparing
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Size:
    width: int
    height: int
    extrapolation: Optional[str]           # None: the package's own

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}" + (f":{self.extrapolation}" if self.extrapolation else "")


@dataclasses.dataclass
class Run:
    """The benchmark's images at one size with one sampler setting."""

    latents: np.ndarray                    # (16, C, h, w) float32
    images: np.ndarray                     # (16, H, W, 3) uint8
    evaluations: int                       # transformer calls made


def sample(pipe, size: Size, **settings) -> Run:
    """The 16 images of ``size`` sampled in one batch with ``settings`` (prepare's sampler, steps, time_shift,
    tail_compression)."""
    jobs = pipe.prepare(size.width, size.height, list(range(8)), FIRST_SEED, num=IMAGES, cfg=CFG,
                        extrapolation=size.extrapolation, **settings)
    calls = []
    with pipe.tap(lambda feed, outputs: calls.append(1)):
        latents = pipe.sample_latents(jobs)
    return Run(np.stack(latents), np.stack([pipe.decode(z) for z in latents]), len(calls))


def compare(run: Run, reference: Run) -> dict:
    """Image PSNR (dB, uint8 pixels, peak 255; "inf" when identical) and latent relative RMSE against ``reference``."""
    db = psnr(run.images, reference.images, 255.0)
    ref = reference.latents.astype(np.float64)
    rmse = math.sqrt(float(np.sum((run.latents - ref) ** 2)) / float(np.sum(ref ** 2)))
    return {"evaluations": run.evaluations, "psnr_db": round(db, 3) if math.isfinite(db) else "inf",
            "latent_rel_rmse": float(f"{rmse:.4g}")}


def with_tolerances(pipe, atol: float, rtol: float, threads: int):
    """A second Pipeline on ``pipe``'s package whose dopri5 runs at ``atol``, ``rtol`` (read from the manifest)."""
    from engines.pipeline import Pipeline

    manifest = pipe.manifest
    sampler = dataclasses.replace(manifest.sampler, atol=atol, rtol=rtol)
    return Pipeline(pipe.directory, manifest.replace(sampler=sampler), threads=threads)


def evaluations_per_step(method: str) -> int:
    from engines.sampler import SamplerSettings

    return SamplerSettings(method, steps=1).evaluations()


def schedule_name(shift: float, tail: float) -> str:
    """``S=3`` or ``S=6, c=1``: the time shift and, when there is one, the tail compression."""
    return f"S={shift:g}" + (f", c={tail:g}" if tail else "")


def measure_size(pipe, reference_pipe, check_pipe, size: Size, samplers, shifts, tails, evals, scaled_base: float,
                 baseline: tuple[str, int, float, float]) -> dict:
    """Every number of one size (the JSON's ``sizes`` entry)."""
    tokens = pipe.tokens(size.width, size.height)
    train = pipe.manifest.sizes.train_token_budget
    log(f"{size.name}: reference (dopri5 atol {_g(REFERENCE[0])}, rtol {_g(REFERENCE[1])})")
    reference = sample(reference_pipe, size, sampler="dopri5")
    check = compare(sample(check_pipe, size, sampler="dopri5"), reference)
    log(f"{size.name}: reference {reference.evaluations} evaluations; check {check}")
    done: dict[tuple, dict] = {}

    def measured(method: str, steps: int, shift: float, tail: float) -> dict:
        key = (method, steps, shift, tail)
        if key not in done:
            done[key] = compare(sample(pipe, size, sampler=method, steps=steps, time_shift=shift,
                                       tail_compression=tail), reference)
        return done[key]

    schedules = [(schedule_name(s, c), s, c) for c in tails for s in shifts]
    scaled = scaled_base * math.sqrt(tokens / train)
    if all(not math.isclose(scaled, s) for s in shifts):
        schedules.append((f"S={scaled:.2f} = {scaled_base:g}·√(tokens/{train})", scaled, 0.0))
    rows = []
    for method in samplers:
        per_step = evaluations_per_step(method)
        for name, shift, tail in schedules:
            cells = {str(n): measured(method, n // per_step, shift, tail) for n in evals if n % per_step == 0}
            rows.append({"sampler": method, "schedule": name, "time_shift": shift, "tail_compression": tail,
                         "cells": cells})
            log(f"{size.name}: {method} {name}: " + ", ".join(f"{n} {c['psnr_db']}" for n, c in cells.items()))
    default = pipe.settings().sampler
    package_default = dict(measured(default.method, default.steps, default.time_shift, default.tail_compression),
                           sampler=default.method, steps=default.steps, time_shift=default.time_shift,
                           tail_compression=default.tail_compression)
    base = dict(measured(*baseline), sampler=baseline[0], steps=baseline[1], time_shift=baseline[2],
                tail_compression=baseline[3])
    dopri5 = dict(compare(sample(pipe, size, sampler="dopri5"), reference), atol=default.atol, rtol=default.rtol)
    return {"size": size.name, "width": size.width, "height": size.height, "tokens": tokens,
            "extrapolation": pipe.settings(extrapolation=size.extrapolation).extrapolation,
            "reference": {"atol": REFERENCE[0], "rtol": REFERENCE[1], "evaluations": reference.evaluations,
                          "check": dict(check, atol=CHECK[0], rtol=CHECK[1])},
            "rows": rows, "baseline": base, "package_default": package_default, "dopri5_package_tolerances": dopri5}


def measure_sizes(sizes: list[Size], samplers, shifts, tails, evals, scaled_base: float,
                  baseline: tuple[str, int, float, float], threads: int) -> list[dict]:
    """:func:`measure_size` of each of ``sizes`` on the default model (a task of its own: ``--jobs``)."""
    import engines

    with engines.load(None, threads=threads) as pipe, with_tolerances(pipe, *REFERENCE, threads) as reference_pipe, \
            with_tolerances(pipe, *CHECK, threads) as check_pipe:
        return [measure_size(pipe, reference_pipe, check_pipe, size, samplers, shifts, tails, evals, scaled_base,
                             baseline) for size in sizes]


def _call(task):
    return task()


def summary(sizes: list[dict], samplers) -> list[dict]:
    """Per sampler and size: the fewest evaluations (and its schedule) whose PSNR reaches the baseline's."""
    out = []
    for method in samplers:
        entry = {"sampler": method}
        for size in sizes:
            target = _db(size["baseline"])
            reaching = [(int(n), -_db(cell), row["schedule"], cell["psnr_db"])
                        for row in size["rows"] if row["sampler"] == method
                        for n, cell in row["cells"].items() if _db(cell) >= target]
            n, _, schedule, db = min(reaching, default=(None,) * 4)
            entry[size["size"]] = None if n is None else {"evaluations": n, "schedule": schedule, "psnr_db": db}
        out.append(entry)
    return out


def _db(cell: dict) -> float:
    return math.inf if cell["psnr_db"] == "inf" else cell["psnr_db"]


# ----------------------------------------------------------------------------------------------------------
# fit-eval's judge
# ----------------------------------------------------------------------------------------------------------

def fit_eval_of_package(settings: list[tuple[str, int, float, float]], threads: int) -> dict:
    """:func:`fit_eval` on the default model (a task of its own: ``--jobs``)."""
    import engines

    with engines.load(None, threads=threads) as pipe:
        return fit_eval(pipe, settings, threads)


def fit_eval(pipe, settings: list[tuple[str, int, float, float]], threads: int) -> dict:
    """Shape accuracy and Fréchet distance (fit/eval) per training size for ``settings`` (sampler, steps, time
    shift, tail compression) and the package default, with fit-eval's sample counts, seeds and guidance."""
    import torch

    from fit.data.procedural import SHAPES
    from fit.eval.classifier import load_classifier
    from fit.eval.evaluate import EvalSettings, classify, reference_images
    from fit.eval.metrics import class_accuracy, frechet_distance_of

    if threads:
        torch.set_num_threads(threads)
    judge = EvalSettings()
    default = pipe.settings().sampler
    settings = list(dict.fromkeys(settings + [(default.method, default.steps, default.time_shift,
                                               default.tail_compression)]))
    budget = pipe.manifest.sizes.train_token_budget
    sizes = [tuple(s) for b in pipe.manifest.sizes.buckets for s in b.sizes if pipe.tokens(*s) <= budget]
    classifier = load_classifier()
    labels = np.repeat(np.arange(len(SHAPES)), judge.num_per_class)
    rows = [{"sampler": m, "steps": n, "time_shift": s, "tail_compression": c,
             "evaluations": n * evaluations_per_step(m), "sizes": {}} for m, n, s, c in settings]
    for width, height in sizes:
        reference = classify(classifier, reference_images(height, width, judge.reference_count))[1]
        for row in rows:
            jobs = pipe.prepare(width, height, labels.tolist(), judge.seed, num=len(labels), cfg=judge.cfg_scale,
                                sampler=row["sampler"], steps=row["steps"], time_shift=row["time_shift"],
                                tail_compression=row["tail_compression"])
            images = np.concatenate([np.stack(pipe.generate_many(jobs[i:i + judge.batch_size]))
                                     for i in range(0, len(jobs), judge.batch_size)])
            pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
            predicted, features = classify(classifier, pixels)
            row["sizes"][f"{width}x{height}"] = {"accuracy": class_accuracy(predicted, labels),
                                                 "fd": frechet_distance_of(features, reference)}
            log(f"fit-eval {width}x{height} {row['sampler']} {row['steps']} "
                f"{schedule_name(row['time_shift'], row['tail_compression'])}: "
                f"{row['sizes'][f'{width}x{height}']}")
    for row in rows:
        row["mean_accuracy"] = float(np.mean([c["accuracy"] for c in row["sizes"].values()]))
        row["mean_fd"] = float(np.mean([c["fd"] for c in row["sizes"].values()]))
    return {"num_per_class": judge.num_per_class, "seed": judge.seed, "cfg": judge.cfg_scale,
            "reference_count": judge.reference_count, "sizes": [f"{w}x{h}" for w, h in sizes], "rows": rows}


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------

def _cell(cell: Optional[dict]) -> str:
    return "" if cell is None else "inf" if cell["psnr_db"] == "inf" else f"{cell['psnr_db']:.1f}"


def _schedule(entry: dict) -> str:
    """The schedule of a JSON entry (results written before tail compression existed have none)."""
    return schedule_name(entry["time_shift"], entry.get("tail_compression", 0.0))


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# Sampler quality per network evaluation ({result['date']}, {result['machine']})", "",
             f"`{result['command']}`; onnxruntime {result['onnxruntime']}, threads {s['threads'] or 'default'}. "
             f"Default model, {s['images']} images per size (classes 0-7 twice, seeds {s['seeds']}), guidance "
             f"{s['cfg']:g}. Cells: image PSNR in dB (all images' uint8 pixels, peak 255) against the same images by "
             f"dopri5 at atol {_g(REFERENCE[0])}, rtol {_g(REFERENCE[1])}; columns: network evaluations (heun: 2 per "
             f"step); S: time shift (step i of N ends at t = u / (u + S (1 - u)), u = i/N); c: tail compression "
             f"(then t becomes t + c t (1 - t); none when not given). Latent relative RMSE for every cell is in "
             f"the JSON.", ""]
    evals = s["evals"]
    for size in result["sizes"]:
        ref = size["reference"]
        lines += [f"## {size['width']}x{size['height']} ({size['tokens']} tokens, extrapolation "
                  f"{size['extrapolation']})", "",
                  "| sampler | schedule | " + " | ".join(str(n) for n in evals) + " |",
                  "|---|---|" + "---:|" * len(evals)]
        for row in size["rows"]:
            lines.append(f"| {row['sampler']} | {row['schedule']} | "
                         + " | ".join(_cell(row["cells"].get(str(n))) for n in evals) + " |")
        b, d, p, c = size["baseline"], size["package_default"], size["dopri5_package_tolerances"], ref["check"]
        lines += ["", "| beside them | evaluations | PSNR (dB) | latent rel. RMSE |", "|---|---:|---:|---:|",
                  f"| baseline: {b['sampler']} {b['steps']} steps, {_schedule(b)} | {b['evaluations']} | "
                  f"{_cell(b)} | {b['latent_rel_rmse']:.2e} |",
                  f"| package default: {d['sampler']} {d['steps']} steps, {_schedule(d)} | {d['evaluations']} | "
                  f"{_cell(d)} | {d['latent_rel_rmse']:.2e} |",
                  f"| dopri5 at the package's atol {_g(p['atol'])}, rtol {_g(p['rtol'])} | {p['evaluations']} | "
                  f"{_cell(p)} | {p['latent_rel_rmse']:.2e} |",
                  f"| reference: dopri5 atol {_g(ref['atol'])}, rtol {_g(ref['rtol'])} | {ref['evaluations']} | | |",
                  f"| check of the reference: dopri5 atol {_g(c['atol'])}, rtol {_g(c['rtol'])} | {c['evaluations']} | "
                  f"{_cell(c)} | {c['latent_rel_rmse']:.2e} |", ""]
    names = [size["size"] for size in result["sizes"]]
    lines += ["## Fewest evaluations reaching the baseline's PSNR", "",
              "Per size, the baseline's PSNR is the target; each cell: evaluations (schedule, PSNR in dB).", "",
              "| sampler | " + " | ".join(f"{n} (≥ {_cell(sz['baseline'])} dB)"
                                          for n, sz in zip(names, result["sizes"])) + " |",
              "|---|" + "---|" * len(names)]
    for entry in result["summary"]:
        cells = [f"{e['evaluations']} ({e['schedule']}, {_cell(e)})" if e else f"not within {max(evals)}"
                 for e in (entry[n] for n in names)]
        lines.append(f"| {entry['sampler']} | " + " | ".join(cells) + " |")
    if result.get("fit_eval"):
        f = result["fit_eval"]
        lines += ["", "## fit-eval's judge at the training sizes", "",
                  f"Shape classifier accuracy % / Fréchet distance of its features against {f['reference_count']} "
                  f"procedural images; {f['num_per_class']} images per class (seeds {f['seed']}..), guidance "
                  f"{f['cfg']:g}; images from the runtime (uint8, as fit-run writes them).", "",
                  "| sampler | evaluations | " + " | ".join(f["sizes"]) + " | mean |",
                  "|---|---:|" + "---|" * (len(f["sizes"]) + 1)]
        for row in f["rows"]:
            cells = [f"{100 * c['accuracy']:.1f} / {c['fd']:.2f}" for c in row["sizes"].values()]
            lines.append(f"| {row['sampler']} {row['steps']} steps, {_schedule(row)} | {row['evaluations']} | "
                         + " | ".join(cells) + f" | {100 * row['mean_accuracy']:.1f} / {row['mean_fd']:.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def _g(x: float) -> str:
    """A tolerance as 1e-7 rather than 1e-07."""
    return f"{x:g}".replace("e-0", "e-")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[Size]:
    from engines.buckets import parse_size

    sizes = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        size, _, extrapolation = item.partition(":")
        width, height = parse_size(size)
        sizes.append(Size(width, height, extrapolation or None))
    return sizes


def parse_numbers(text: str, kind: type, flag: str) -> list:
    """Comma-separated numbers of ``kind``; ValueError naming ``flag`` otherwise."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give comma-separated {'whole ' if kind is int else ''}numbers") from None


def parse_settings(text: str, flag: str) -> list[tuple[str, int, float, float]]:
    """``sampler:steps:shift[:tail],...`` -> [(sampler, steps, shift, tail), ...] (tail 0 when not given), checked
    by SamplerSettings; ValueError naming ``flag`` otherwise."""
    from engines.sampler import SamplerSettings

    out = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"{flag} {item!r}: give sampler:steps:shift or sampler:steps:shift:tail, e.g. ab2:12:6:1")
        try:
            settings = SamplerSettings(parts[0], int(parts[1]), time_shift=float(parts[2]),
                                       tail_compression=float(parts[3]) if len(parts) == 4 else 0.0)
        except ValueError as err:
            raise ValueError(f"{flag} {item!r}: {err}") from None
        out.append((settings.method, settings.steps, settings.time_shift, settings.tail_compression))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(
        f"--{k} {v}" for k, v in QUICK.items()) + "; prints only unless --out is given")
    parser.add_argument("--sizes", help=f"WxH or WxH:EXTRAPOLATION, comma-separated (default {FULL['sizes']})")
    parser.add_argument("--samplers", help=f"fixed-grid samplers (default {FULL['samplers']})")
    parser.add_argument("--shifts", help=f"fixed time shifts (default {FULL['shifts']})")
    parser.add_argument("--tails", help=f"tail compressions, each with every shift (default {FULL['tails']})")
    parser.add_argument("--evals", help=f"network evaluation counts (default {FULL['evals']})")
    parser.add_argument("--scaled-shift", type=float, default=3.0,
                        help="S of the resolution-dependent schedule S x sqrt(tokens / training tokens) (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the runtime and torch (0: default)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes: each size and the fit-eval part is a "
                                                            "task of its own (the numbers do not change; default 1)")
    parser.add_argument("--fit-eval", action="store_true", help="also fit-eval's accuracy and FD (needs torch)")
    parser.add_argument("--baseline", default="heun:16:1",
                        help="sampler:steps:shift[:tail] whose PSNR the summary asks each sampler to reach (default "
                             "heun:16:1, the package default before the multistep samplers)")
    parser.add_argument("--fit-eval-settings", default="heun:16:1,ab2:16:2,ab2:12:6:1",
                        help="sampler:steps:shift[:tail] settings judged beside the package default (default "
                             "heun:16:1,ab2:16:2,ab2:12:6:1)")
    parser.add_argument("--out", help=f"write OUT.json and OUT.md (default {OUT.relative_to(ROOT)}; with --quick: "
                                      f"none)")
    args = parser.parse_args()
    from engines.sampler import SHIFTED, SamplerSettings

    chosen = {k: getattr(args, k) or (QUICK if args.quick else FULL)[k] for k in FULL}
    try:
        sizes = parse_sizes(chosen["sizes"])
        samplers = [m.strip() for m in chosen["samplers"].split(",") if m.strip()]
        shifts = parse_numbers(chosen["shifts"], float, "--shifts")
        tails = parse_numbers(chosen["tails"], float, "--tails")
        evals = sorted(set(parse_numbers(chosen["evals"], int, "--evals")))
        for method in samplers:
            if method not in SHIFTED:
                raise ValueError(f"sampler {method!r} is not one of the fixed-grid samplers {', '.join(SHIFTED)}")
        for shift in shifts + [args.scaled_shift]:
            SamplerSettings("euler", time_shift=shift)
        for tail in tails:
            SamplerSettings("euler", tail_compression=tail)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        if not (sizes and samplers and shifts and tails and evals) or min(evals) < 1:
            raise ValueError("give at least one size, sampler, shift, tail compression and positive evaluation count")
        fit_eval_settings = parse_settings(args.fit_eval_settings, "--fit-eval-settings") if args.fit_eval else []
        baselines = parse_settings(args.baseline, "--baseline")
        if len(baselines) != 1:
            raise ValueError("--baseline: give one sampler:steps:shift[:tail]")
        baseline = baselines[0]
    except ValueError as err:
        parser.error(str(err))
    if args.fit_eval and importlib.util.find_spec("torch") is None:
        parser.error("--fit-eval needs torch (fit/eval's classifier): pip install -e '.[train]'")
    import engines
    import onnxruntime
    from engines.request import GenerationError

    started = time.perf_counter()
    with engines.load(None, threads=args.threads) as pipe:
        try:
            for size in sizes:
                pipe.prepare(size.width, size.height, extrapolation=size.extrapolation)
        except GenerationError as err:
            parser.error(str(err))
    tasks = [functools.partial(measure_sizes, [size], samplers, shifts, tails, evals, args.scaled_shift, baseline,
                               args.threads) for size in sizes]
    if args.fit_eval:
        tasks.append(functools.partial(fit_eval_of_package, fit_eval_settings, args.threads))
    if args.jobs == 1:
        done = [task() for task in tasks]
    else:
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_call, tasks))
    measured = [entry for part in done[:len(sizes)] for entry in part]
    fit_eval_result = done[-1] if args.fit_eval else None
    result = {"date": datetime.date.today().isoformat(),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
              "command": " ".join(["python benchmarks/sampler_quality.py"] + sys.argv[1:]),
              "onnxruntime": onnxruntime.__version__, "seconds": round(time.perf_counter() - started, 1),
              "settings": {"images": IMAGES, "classes": "0-7 twice", "seeds": f"{FIRST_SEED}-{FIRST_SEED + IMAGES - 1}",
                           "cfg": CFG, "samplers": samplers, "shifts": shifts, "tails": tails,
                           "scaled_shift": args.scaled_shift,
                           "evals": evals, "threads": args.threads},
              "sizes": measured, "summary": summary(measured, samplers), "fit_eval": fit_eval_result}
    text = markdown(result)
    print(text)
    out = args.out or (None if args.quick else str(OUT))
    if out:
        from engines.atomic import atomic_write

        atomic_write(out + ".json", json.dumps(result, indent=1) + "\n")
        atomic_write(out + ".md", text)
        log(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
