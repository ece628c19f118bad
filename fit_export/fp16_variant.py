"""``fit-export fp16``: an fp16 variant of an fp32 package's transformer, for devices that compute in float16 natively
(the page on a WebGPU adapter with ``shader-f16`` picks it by itself, rule 3 of docs/package-format.md#variants).

The variant is the package's standard fp32 graph (``transformer.onnx``) converted by the fp16 rule of
:mod:`fit_export.typed` — the one the TensorRT builds use, with the fp16 export's op list: the ops of
``FP32_OPS`` (the norms, Softmax, Pow, the summing reductions) and the conditioning paths (``t``, labels, RoPE
tables, mask) compute in float32, the token stream and its matrix products in float16, weights stored in float16.
Its inputs and outputs keep the fp32 package's graph contract: ``x`` and ``v`` are float32 with the casts inside
the graph, so every runtime feeds it exactly as it feeds the fp32 graph (the Python backend casts each input to the
graph's dtype; the JavaScript runtime feeds the contract's dtypes, float32 for an fp32 package).

Quality, recorded as the variant's ``validation``: the converted graph against the fp32 graph on padded graph feeds
(cosine, :data:`fit_export.typed.MIN_COSINE`), then images of the same seed from the fp32 variant and the fp16
variant through ``engines.pipeline`` on ONNX Runtime's CPU provider at a training size, an off-square training size
and an extrapolated size (when the package takes sizes beyond its training budget), PSNR each; the variant is written only when every image is at least
:data:`MIN_PSNR_DB`. ONNX Runtime's CPU provider has few float16 kernels and inserts casts to float32 around the
others, so on the CPU this measures the error of storing activations and weights in float16 (not of float16
arithmetic, which a GPU adds).

The package is changed with :func:`fit_export.package_writer.update_package`: drafted next to it, put in place in
one step, never half-written.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

from engines import manifest as mf
from engines.metrics import psnr
from engines.package import load_manifest
from fit_export.package_writer import update_package
from fit_export.typed import FP32_OPS, TypedGraphError, check_feeds, typed_graph

FP16_FILE = "transformer.fp16.onnx"
FP16_VARIANT = "fp16"
MIN_PSNR_DB = 40.0              # each image against fp32, as fit-export validate asks of fp32 end to end


class Fp16VariantError(ValueError):
    """The package cannot take an fp16 variant as asked, or the converted variant is below the quality bar."""


def quality_sizes(manifest: mf.Manifest) -> list[tuple[str, int, int]]:
    """(kind, width, height) of the images the variant is measured on: ``training`` (the package's default size),
    ``off-square`` (the declared size within the training budget with the most unequal sides; the default size
    halved in height when every declared one is square) and ``extrapolated`` (the declared size with the most tokens
    beyond the training budget; else the default size 1.5x on each side, within ``max_tokens``; none when
    ``max_tokens`` is the training budget: the package takes no larger size)."""
    sizes = manifest.sizes
    g = manifest.latent.pixel_granularity
    tokens = lambda wh: (wh[0] // g) * (wh[1] // g)
    declared = [tuple(s) for b in sizes.buckets for s in b.sizes]
    width, height = sizes.default
    within = [s for s in declared if tokens(s) <= sizes.train_token_budget and s[0] != s[1]]
    off_square = max(within, key=lambda s: max(s) / min(s), default=(width, max(g, height // 2 // g * g)))
    chosen = [("training", width, height), ("off-square", *off_square)]
    beyond = [s for s in declared if sizes.train_token_budget < tokens(s) <= sizes.max_tokens]
    if beyond:
        chosen.append(("extrapolated", *max(beyond, key=tokens)))
    elif sizes.max_tokens > sizes.train_token_budget:
        scale = min(1.5, math.sqrt(sizes.max_tokens / max(1, tokens((width, height)))))
        chosen.append(("extrapolated", max(g, int(width * scale) // g * g), max(g, int(height * scale) // g * g)))
    return chosen


def image_quality(package, source: str, seed: int = 0, steps: Optional[int] = None) -> dict:
    """Images of the same request (class 1, seed ``seed``, the package's sampler and guidance, ``steps`` or the
    package's steps) from the variant
    ``source`` and from the fp16 variant at each of :func:`quality_sizes`, on ONNX Runtime CPU: PSNR (uint8, peak
    255) of each; ``passed`` when every one is at least MIN_PSNR_DB."""
    import engines

    sizes = quality_sizes(load_manifest(package))
    images = {}
    for name in (source, FP16_VARIANT):
        with engines.load(package, precision=name, device="cpu", ort_optimized=False) as pipe:
            label = 1 % pipe.num_classes
            jobs = [pipe.prepare(w, h, label, seed, steps=steps)[0] for _, w, h in sizes]
            images[name] = [pipe.generate_many([job])[0] for job in jobs]
    settings = jobs[0].settings
    rows = []
    for (kind, w, h), ref, out in zip(sizes, images[source], images[FP16_VARIANT]):
        value = psnr(out, ref, 255.0)
        rows.append({"kind": kind, "size": [w, h], "psnr_db": round(value, 2) if math.isfinite(value) else "inf"})
    worst = min(float(r["psnr_db"]) for r in rows)
    return {"reference": source, "backend": "onnxruntime", "device": "cpu", "min_psnr_db": MIN_PSNR_DB,
            "passed": worst >= MIN_PSNR_DB, "label": label, "seed": seed, "sampler": settings.sampler.method,
            "steps": settings.sampler.steps, "cfg": settings.cfg, "images": rows}


def add_fp16_variant(package, source: str = "fp32", seed: int = 0, steps: Optional[int] = None,
                     progress: Callable[[str], None] = lambda message: None) -> dict:
    """Add ``transformer.fp16.onnx``, the fp16 conversion of the fp32 variant ``source`` (default: the package's
    standard graph), to the fp32 package ``package`` as the variant ``fp16`` (runtime null: every runtime may run
    it; the default variant stays as it was), with its conversion counts under ``check`` and its image quality
    under ``validation`` (see the module docstring; ``steps``: sampler steps of its images, None for the
    package's). Returns the variant's manifest entry.

    Raises :class:`Fp16VariantError` (an fp16 package, one that holds an fp16 variant already, a source that is not
    an fp32 graph every runtime runs, a conversion or images below the bar), engines.manifest.PackageError or
    fit_export.onnx_export.ExportError; the package is unchanged when anything fails.
    """
    with update_package(package) as draft:
        doc = draft.manifest
        transformer = doc.transformer
        if transformer.precision != "fp32":
            raise Fp16VariantError(f"fit-export fp16 converts fp32 packages; {package} is {transformer.precision} "
                                   f"throughout already")
        held = [v.name for v in transformer.variants if v.precision == "fp16"]
        if held:
            raise Fp16VariantError(f"{package} already holds an fp16 variant ({', '.join(held)})")
        chosen = transformer.variant(source)
        if chosen.precision != "fp32":
            raise Fp16VariantError(f"--from {source}: the fp16 variant is converted from an fp32 graph, not "
                                   f"{chosen.precision}")
        if chosen.runtime is not None:
            raise Fp16VariantError(f"--from {source}: a copy made for {chosen.runtime} only; the fp16 variant is "
                                   f"converted from a graph every runtime runs (--from {transformer.precision})")
        progress(f"converting {chosen.file} to fp16 ({', '.join(FP32_OPS[:3])}, ... kept in float32)")
        try:
            g = doc.latent.pixel_granularity
            feeds = check_feeds(doc, (doc.sizes.default[1] // g, doc.sizes.default[0] // g), seed)
            typed = typed_graph(draft.path / chosen.file, "fp16", draft.add(FP16_FILE), feeds)
        except TypedGraphError as err:
            raise Fp16VariantError(str(err)) from None
        data = FP16_FILE + ".data"                          # save_model's weights file, past protobuf's 2 GB
        weights_from = draft.add(data).name if (draft.path / data).exists() else None
        variant = mf.VariantSection(name=FP16_VARIANT, file=FP16_FILE, precision="fp16", opset=chosen.opset,
                                    weights_from=weights_from, source=chosen.name,
                                    check=dict(typed.to_dict(), fp32_ops=list(FP32_OPS), io="float32"))
        draft.manifest = doc.replace(transformer=dataclasses.replace(
            transformer, variants=transformer.variants + (variant,)), files=draft.files)
        progress(f"measuring images of {FP16_VARIANT} against {chosen.name} (ONNX Runtime CPU)")
        quality = image_quality(draft.path, chosen.name, seed, steps)        # the draft: the package as it will be
        if not quality["passed"]:
            shown = ", ".join(f"{r['kind']} {r['size'][0]}x{r['size'][1]} {r['psnr_db']} dB" for r in quality["images"])
            raise Fp16VariantError(f"the fp16 variant's images are below {MIN_PSNR_DB:g} dB against "
                                   f"{chosen.name} ({shown}); nothing written")
        variant = dataclasses.replace(variant, validation=quality)
        draft.manifest = doc.replace(transformer=dataclasses.replace(
            transformer, variants=transformer.variants + (variant,)), files=draft.files)
    return variant.to_dict()


__all__ = ["FP16_FILE", "FP16_VARIANT", "MIN_PSNR_DB", "Fp16VariantError", "add_fp16_variant",
           "image_quality", "quality_sizes"]
