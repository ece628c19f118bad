"""``fit-export quantize``: an int8 variant of a package's transformer, built with ``onnxruntime.quantization``.

Only MatMul and Gemm nodes with a constant weight are quantized (the linear layers: almost all of the FLOPs).
Attention's activation-by-activation products stay float32, and so does everything else: ONNX Runtime's quantizer
also treats any node named ``Attention`` as its own ``com.microsoft.Attention`` and writes a broken graph, so the
op list is never widened.

* ``dynamic``: int8 weights (per tensor, or per output channel with ``per_channel``); activations are quantized
  per call from their own range (``DynamicQuantizeLinear`` + ``MatInteger``). Needs no calibration.
* ``static``: QDQ format, uint8 activations with fixed ranges calibrated (min/max) on activations recorded from
  real sampling trajectories of the package itself: ``calibration_images`` requests cycling over the declared
  sizes and the classes, sampled with the package's default sampler, step count and guidance (1.5 when the
  package's default is off), so every timestep and both guidance halves (cond and null class, padded batches of
  mixed sizes) are seen.

The graph quantized is the fp32 variant ONNX Runtime would run (the tuned copy when the package has one, else
``transformer.onnx``), or the one named by ``source`` (``fp32``: the standard graph, so OpenVINO can run the
int8 variant too). The result is a complete package: every file of the source, plus ``transformer.int8.onnx``
listed as the variant ``int8`` (its settings under ``quantization``, quality under ``validation``), and by
default made the package's default variant. The validation record comes from :mod:`fit_export.validate` with the
package's fp32 variant as the reference: per-case and per-step cosine, end-to-end image PSNR; for packages of the
procedural shapes (the default model) also the shape classifier's accuracy at the training sizes for int8 and
fp32 side by side.

The package is written with :func:`fit_export.package_writer.new_package`: built in a draft next to ``out`` and
put in place when complete.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from engines import manifest as mf
from engines.atomic import recover_folder
from engines.package import load_manifest, now_utc
from fit_export.package_writer import new_package

INT8_FILE = "transformer.int8.onnx"
INT8_VARIANT = "int8"
QUANTIZED_OPS = ("MatMul", "Gemm")


class QuantizeError(ValueError):
    """The package cannot be quantized as asked (wrong precision, no graph, calibration not finite)."""


def _constant_names(model) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
    return names


def activation_products(model) -> list[str]:
    """Names of MatMul/Gemm nodes with no constant input (attention's q·kᵀ and p·v): left in float32."""
    constants = _constant_names(model)
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OPS and not any(i in constants for i in node.input[1:2])]


#################################################################################
#                               Calibration                                     #
#################################################################################

def _checked_copy(feed: dict, out: dict) -> dict:
    """A copy of a calibration feed; QuantizeError when the feed or the network's output is not finite."""
    bad = [name for name, value in list(feed.items()) + list(out.items())
           if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()]
    if bad:
        t = float(np.asarray(feed["t"]).reshape(-1)[0])
        raise QuantizeError(f"calibration produced NaN/Inf ({', '.join(bad)}) at t={t:.3f}; the fp32 network "
                            f"is not finite on its own trajectories, refusing to calibrate on it")
    return {name: np.array(value, copy=True) for name, value in feed.items()}


def record_calibration(package, images: int, seed: int = 0, batch: int = 4, threads: int = 0,
                       sizes: Optional[Sequence[tuple[int, int]]] = None,
                       progress: Callable[[str], None] = lambda message: None) -> dict:
    """Feeds of the package's fp32 transformer recorded while sampling ``images`` requests (sizes: ``sizes``, by
    default every declared bucket size, in turn; classes in turn; seeds from ``seed``), ``batch`` requests per
    padded batch.

    Returns ``{"feeds": [...], "sizes": [[w, h], ...], "steps": n, "sampler": name, "cfg": scale}``.
    """
    import engines

    if images < 1:
        raise QuantizeError(f"--calibration-images must be at least 1, got {images}")
    with engines.load(package, precision="fp32", ort_optimized=False, device="cpu", threads=threads) as pipe:
        if sizes is None:
            sizes = [tuple(s) for b in pipe.manifest.sizes.buckets for s in b.sizes] or [pipe.default_size]
        sizes = [pipe.check_size(*s) for s in sizes]
        progress(f"recording calibration activations from {images} sampled images")
        guided = pipe.manifest.guidance.default_scale != 1.0
        cfg = None if guided else 1.5
        jobs = [pipe.prepare(*sizes[i % len(sizes)], i % pipe.num_classes, seed + i, cfg=cfg)[0]
                for i in range(images)]
        settings = jobs[0].settings
        feeds: list[dict] = []
        with pipe.tap(lambda feed, out: feeds.append(_checked_copy(feed, out))):
            for start in range(0, len(jobs), batch):
                pipe.sample_latents(jobs[start:start + batch])
    return {"feeds": feeds, "sizes": [list(s) for s in dict.fromkeys(sizes)],
            "steps": settings.sampler.steps, "sampler": settings.sampler.method, "cfg": settings.cfg}


#################################################################################
#                               Quantization                                    #
#################################################################################

def quantize_graph(source, target, mode: str = "dynamic", per_channel: bool = False,
                   feeds: Optional[list] = None) -> dict:
    """Write the int8 version of the ONNX graph ``source`` (external data resolved) to ``target``; returns the
    quantization settings the manifest records."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if mode not in mf.QUANTIZATION_MODES:
        raise QuantizeError(f"unknown mode {mode!r}; choose one of {', '.join(mf.QUANTIZATION_MODES)}")
    import logging

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))   # the quantizer's advice lines
    model = onnx.load(str(source))                         # weights read from wherever the variant keeps them
    excluded = activation_products(model)
    options = {"MatMulConstBOnly": True}
    common = dict(op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel, nodes_to_exclude=excluded,
                  weight_type=QuantType.QInt8, extra_options=options)
    if mode == "dynamic":
        quantize_dynamic(model, str(target), **common)
    else:
        if not feeds:
            raise QuantizeError("static quantization needs calibration feeds")
        names = [i.name for i in model.graph.input]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(feeds)

            def get_next(self):
                feed = next(self.items, None)
                return None if feed is None else {name: feed[name] for name in names}

        quantize_static(model, str(target), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, **common)
        _check_scales(target)
    quantized = sum(1 for n in onnx.load(str(target), load_external_data=False).graph.node
                    if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear"))
    return {"mode": mode, "per_channel": per_channel, "ops": list(QUANTIZED_OPS), "weights": "int8",
            "activations": "int8 per call" if mode == "dynamic" else "uint8, calibrated min/max",
            "tool": f"onnxruntime.quantization {_ort_version()}", "quantized_nodes": quantized,
            "kept_float": len(excluded)}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _check_scales(path) -> None:
    """Refuse a QDQ graph whose calibrated scales are not finite and positive."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    for init in model.graph.initializer:
        if init.name in scales:
            value = numpy_helper.to_array(init)
            if not (np.isfinite(value).all() and (value > 0).all()):
                raise QuantizeError(f"calibration gave the scale {init.name} = {value.ravel()[:4]}; refusing to "
                                    f"write a graph with non-finite or zero quantization scales")


#################################################################################
#                               Accuracy (shapes)                               #
#################################################################################

def shapes_accuracy(package, runs: Mapping[str, dict], num_per_class: int = 16, seed: int = 0) -> Optional[dict]:
    """The shape classifier's accuracy (fit-eval's classifier and metric) of images the package generates at its
    training sizes (the declared sizes within the training budget), per run (a name -> the ``engines.load``
    options of the transformer that runs, e.g. ``{"int8": {"precision": "int8"}}``) — for packages of the
    procedural shapes; None for other packages."""
    import engines
    import torch
    from fit.data.procedural import SHAPES
    from fit.eval.classifier import load_classifier
    from fit.eval.evaluate import classify
    from fit.eval.metrics import class_accuracy

    manifest = load_manifest(package)
    if tuple(manifest.model.class_names or ()) != SHAPES:
        return None
    g = manifest.latent.pixel_granularity
    budget = manifest.sizes.train_token_budget
    sizes = [tuple(s) for b in manifest.sizes.buckets for s in b.sizes if (s[0] // g) * (s[1] // g) <= budget]
    classifier = load_classifier()
    labels = np.repeat(np.arange(len(SHAPES)), num_per_class)
    result = {"num_per_class": num_per_class, "sizes": [list(s) for s in sizes], "accuracy": {}}
    for name, options in runs.items():
        per_size = {}
        with engines.load(package, device="cpu", **options) as pipe:
            for width, height in sizes:
                jobs = [pipe.prepare(width, height, int(c), seed + i)[0] for i, c in enumerate(labels)]
                images = np.concatenate([np.stack(pipe.generate_many(jobs[i:i + 32]))
                                         for i in range(0, len(jobs), 32)])
                pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
                per_size[f"{width}x{height}"] = class_accuracy(classify(classifier, pixels)[0], labels)
        result["accuracy"][name] = per_size
    return result


#################################################################################
#                               The package                                     #
#################################################################################

def quantize_package(package, out, mode: str = "dynamic", per_channel: bool = False, calibration_images: int = 8,
                     force: bool = False, keep_default: bool = False, validate: bool = True, accuracy: bool = True,
                     ort_format: bool = False, source: Optional[str] = None, seed: int = 0,
                     progress: Callable[[str], None] = lambda message: None) -> dict:
    """Write the package ``out``: ``package`` plus its int8 variant (see the module docstring). Returns the variant's
    manifest entry. keep_default: keep the source's default variant (int8 offered with ``--precision int8``).
    source: the fp32 variant to quantize (default: the one ONNX Runtime runs; ``fp32``, the standard graph, gives
    an int8 variant every runtime can read).

    Raises QuantizeError, engines.manifest.PackageError or fit_export.onnx_export.ExportError; nothing is left at
    ``out`` on failure and an existing package there stays as it was.
    """
    package, out = Path(package), Path(out)
    recover_folder(package)                  # a replacement of the package killed half-way is put back first
    doc = load_manifest(package, verify=True)
    transformer = doc.transformer
    if transformer.precision != "fp32":
        raise QuantizeError(f"quantize reads fp32 packages; {package} is {transformer.precision}")
    if transformer.default.precision != "fp32" or any(v.precision == "int8" for v in transformer.variants):
        raise QuantizeError(f"{package} already holds an int8 variant; quantize the fp32 package it came from")
    if mode not in mf.QUANTIZATION_MODES:
        raise QuantizeError(f"unknown mode {mode!r}; choose one of {', '.join(mf.QUANTIZATION_MODES)}")
    if out.resolve() == package.resolve():
        raise QuantizeError("--out must differ from the package it quantizes")
    source = transformer.select("onnxruntime", "fp32") if source is None else transformer.variant(source)
    if source.precision != "fp32":
        raise QuantizeError(f"--from {source.name}: quantize starts from an fp32 variant, not {source.precision}")
    with new_package(out, force=force, base=package) as draft:
        calibration = feeds = None
        if mode == "static":
            recorded = record_calibration(package, calibration_images, seed, progress=progress)
            feeds = recorded.pop("feeds")
            calibration = dict(recorded, images=calibration_images, evaluations=len(feeds), method="minmax")
        progress(f"quantizing {source.file} ({mode}{', per channel' if per_channel else ''})")
        settings = quantize_graph(draft.path / source.file, draft.add(INT8_FILE), mode, per_channel, feeds)
        settings.update(source=source.name, calibration=calibration)
        variant = mf.VariantSection(name=INT8_VARIANT, file=INT8_FILE, precision="int8", runtime=source.runtime,
                                    opset=max((o.version for o in _opsets(draft.path / INT8_FILE)), default=None),
                                    source=source.name, quantization=settings)
        if ort_format:
            from fit_export.ort_format import write_ort_format
            progress("writing the ORT-format model and its operator configuration")
            extra = write_ort_format(draft.path / INT8_FILE)
            for name in extra.values():
                draft.add(name)
            variant = dataclasses.replace(variant, **extra)
        default = transformer.default_variant if keep_default else INT8_VARIANT
        draft.manifest = doc.replace(created=now_utc(), files=draft.files, transformer=dataclasses.replace(
            transformer, variants=transformer.variants + (variant,), default_variant=default))
        if validate:                                     # reads the draft: the package as it will be
            variant = dataclasses.replace(variant, validation=validation_record(draft.path, accuracy, progress, seed))
            draft.manifest = _with_variant(draft.manifest, variant)
    return variant.to_dict()


def _opsets(path):
    import onnx

    return [o for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")]


def _with_variant(doc: mf.Manifest, variant: mf.VariantSection) -> mf.Manifest:
    variants = tuple(variant if v.name == variant.name else v for v in doc.transformer.variants)
    return doc.replace(transformer=dataclasses.replace(doc.transformer, variants=variants))


def validation_record(package, accuracy: bool = True, progress: Callable[[str], None] = lambda m: None,
                      seed: int = 0) -> dict:
    """The int8 variant against the package's fp32 variant (fit_export.validate with ``reference_variant``):
    worst case cosine, per-step cosine, image PSNR, pass/fail; plus shape accuracy for the default model."""
    from fit_export.validate import validate_package

    progress("validating int8 against fp32 (cases, per-step cosine, image PSNR)")
    report = validate_package(package, precision=INT8_VARIANT, reference_variant="fp32", providers=None, seed=seed)
    cases = [c for c in report.cases if not c.note.startswith("skipped")]
    e2e = report.end_to_end[0]
    record = {"reference": "fp32", "backend": "onnxruntime", "passed": report.passed,
              "tolerances": report.to_dict()["tolerances"],
              "min_case_cosine": min(c.cosine for c in cases), "cases": len(cases),
              "min_step_cosine": e2e.min_step_cosine, "evaluations": e2e.evaluations, "e2e_steps": e2e.steps,
              "image_psnr_db": e2e.psnr_db if np.isfinite(e2e.psnr_db) else "inf", "sizes": e2e.sizes}
    if accuracy:
        progress("measuring shape accuracy at the training sizes (int8 and fp32)")
        shapes = shapes_accuracy(package, {name: {"precision": name} for name in (INT8_VARIANT, "fp32")}, seed=seed)
        if shapes is not None:
            record["shapes_accuracy"] = shapes
    return record
