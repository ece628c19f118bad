"""TensorRT int8 and fp8 variants through explicit quantization (``fit-export quantize --for tensorrt``).

TensorRT builds int8 and fp8 only from explicit ``QuantizeLinear``/``DequantizeLinear`` (Q/DQ) nodes in a strongly
typed graph (TensorRT 11 has no other way). :func:`qdq_graph` writes that graph from the package's fp32
``transformer.onnx`` in TensorRT's form:

* the quantized products are the linear layers of the token stream (:func:`quantized_products`): MatMul/Gemm
  with a constant weight whose data input derives from ``x``, except the first (the patch embedding) and the last
  (the final layer). Attention's two activation products, the conditioning paths (``t``, label, adaLN
  modulation), LayerNorm, softmax and RoPE are not quantized;
* each quantized product gets Q/DQ on both inputs: the data input ``Q -> DQ`` with one symmetric per-tensor scale
  (zero point 0; one pair per tensor, shared by the products that read it), the weight stored as int8 or fp8
  (E4M3) with one symmetric scale per output channel (``DQ`` only: pre-quantized weights);
* activation scales are ``amax / Q_MAX`` (127 for int8, 448 for fp8), amax the largest |value| over the real
  tokens of calibration feeds: the package's own sampling trajectories over its buckets, with both guidance
  halves (:func:`fit_export.quantize.record_calibration`), run through the fp32 graph;
* the rest is the typed fp16/bf16 conversion of the strongly typed fp32 path (:func:`fit_export.typed.convert`:
  LayerNorm, softmax, reductions and the t/RoPE/mask paths in float32); the scales are stored in that dtype and
  the opset is raised to 19 (float8 and fp16 scales).

The quality is measured on the CPU before anything is written (:func:`measure_quality`): ONNX Runtime runs the
graph with every fp16/bf16 tensor rounded through its dtype (:func:`fit_export.typed.emulate`) and the Q/DQ nodes
as they are (ONNX Runtime's CPU provider runs int8 and FLOAT8E4M3FN Q/DQ); per bucket and extrapolation method,
the package's default sampler runs the same seed on it and on the fp32 graph: per-step cosine and image PSNR,
plus fit-eval's shape accuracy at the training sizes for the default model. Below the thresholds
(:class:`QualityGate`) nothing is written.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir

from engines import manifest as mf
from engines.atomic import recover_folder
from engines.backends.tensorrt.store import (QDQ_HIGH_PRECISIONS, QDQ_PRECISIONS, EngineMismatchError,
                                             qdq_variant)
from engines.metrics import QualityGate
from engines.package import load_manifest, now_utc
from fit_export.package_writer import new_package
from fit_export.quantize import QuantizeError, record_calibration, shapes_accuracy
from fit_export.typed import (LOW_DTYPES, TOKEN_INPUT, constant_array, convert, drop_unused, emulate,
                              save_model)

RUNTIME = "tensorrt"
FORMATS = QDQ_PRECISIONS                               # int8, fp8
HIGH_PRECISIONS = QDQ_HIGH_PRECISIONS                   # fp16, bf16: what the rest of the graph computes in
QDQ_OPSET = 19                                          # float8 types and fp16/bf16 scales
QUANTIZED_OPS = ("MatMul", "Gemm")
Q_MAX = {"int8": 127.0, "fp8": 448.0}
_QTYPE = {"int8": ir.DataType.INT8, "fp8": ir.DataType.FLOAT8E4M3FN}
_SCALE_NUMPY = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def variant_name(fmt: str) -> str:
    """``trt-int8`` / ``trt-fp8``: the variant's name (``fit-run --backend tensorrt --precision int8|fp8``)."""
    return f"trt-{fmt}"


def variant_file(fmt: str) -> str:
    return f"transformer.{variant_name(fmt)}.onnx"


def held_variant(transformer: mf.TransformerSection, fmt: str) -> Optional[mf.VariantSection]:
    """The package's Q/DQ variant of ``fmt`` for TensorRT, or None."""
    try:
        return qdq_variant(transformer, fmt)
    except EngineMismatchError:
        return None


#################################################################################
#                               The graph                                       #
#################################################################################

def _weight_axis(node: ir.Node) -> int:
    """The output-channel axis of a product's weight (input 1): MatMul [K, N] -> 1; Gemm with transB [N, K] -> 0."""
    if node.op_type == "Gemm":
        attr = node.attributes.get("transB")
        return 0 if attr is not None and attr.value else 1
    return 1


def quantized_products(model: ir.Model) -> list[ir.Node]:
    """The nodes :func:`qdq_graph` quantizes (see the module docstring), in graph order."""
    tainted = {v for v in model.graph.inputs if v.name == TOKEN_INPUT}
    candidates = []
    for node in model.graph:
        if any(v in tainted for v in node.inputs if v is not None):
            tainted.update(node.outputs)
            weight = node.inputs[1] if len(node.inputs) > 1 else None
            if (node.op_type in QUANTIZED_OPS and node.inputs[0] in tainted and weight is not None
                    and constant_array(weight) is not None and constant_array(weight).ndim == 2
                    and not (node.op_type == "Gemm" and node.attributes.get("transA") is not None
                             and node.attributes["transA"].value)):
                candidates.append(node)
    return candidates[1:-1]


def calibrate(source: Path, names: Sequence[str], feeds: Sequence[dict]) -> dict[str, float]:
    """amax of the tensors ``names`` of the fp32 graph ``source``: the largest |value| over ``feeds``, counting the
    real (mask != 0) tokens only where the tensor is token-major ``(batch, seq, ...)``."""
    import onnxruntime as ort

    model = ir.load(str(source))
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    model.graph.outputs.extend(values[name] for name in names if not values[name].is_graph_output())
    amax = dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory(prefix=".calibration-") as tmp:
        path = Path(tmp) / "calibration.onnx"
        save_model(model, path)
        del model
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        for feed in feeds:
            real = np.asarray(feed["mask"]) != 0
            for name, value in zip(names, session.run(list(names), {k: feed[k] for k in inputs})):
                value = np.abs(value)
                value = value[real] if value.shape[:2] == real.shape else value
                amax[name] = max(amax[name], float(value.max()) if value.size else 0.0)
        del session
    return amax


def _scale(graph: ir.Graph, name: str, amax: np.ndarray, fmt: str, dtype: ir.DataType) -> tuple[ir.Value, np.ndarray]:
    """The initializer ``name`` holding ``amax / Q_MAX`` in ``dtype``, and its float32 values (what Q/DQ use);
    QuantizeError when a scale is not finite and positive."""
    stored = (np.asarray(amax, np.float32) / Q_MAX[fmt]).astype(_SCALE_NUMPY.get(dtype_name(dtype), np.float32))
    values = stored.astype(np.float32)
    if not (np.isfinite(values).all() and (values > 0).all()):
        bad = values[~(np.isfinite(values) & (values > 0))].ravel()[:3]
        raise QuantizeError(f"calibration gave the {fmt} scale {name} = {bad.tolist()} (amax "
                            f"{np.asarray(amax).ravel()[:3].tolist()}); refusing to write a graph with non-finite or "
                            f"zero quantization scales")
    value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(stored.shape),
                     const_value=ir.tensor(stored, dtype=dtype))
    graph.register_initializer(value)
    return value, values


def dtype_name(dtype: ir.DataType) -> str:
    return next((name for name, d in LOW_DTYPES.items() if d == dtype), "fp32")


def _quantize_weight(weight: np.ndarray, scale: np.ndarray, axis: int, fmt: str) -> np.ndarray:
    shape = [1, 1]
    shape[axis] = -1
    ratio = np.clip(weight.astype(np.float32) / scale.reshape(shape), -Q_MAX[fmt], Q_MAX[fmt])
    return np.round(ratio).astype(np.int8) if fmt == "int8" else ratio.astype(ml_dtypes.float8_e4m3fn)


@dataclass(frozen=True)
class Product:
    """A matrix product to quantize, as found in the fp32 graph."""

    data: str                # its data input (calibrated)
    weight: str              # its weight initializer
    array: np.ndarray        # the fp32 weight
    axis: int                # the weight's output-channel axis


def insert_qdq(model: ir.Model, products: dict, amax: dict[str, float], fmt: str, scale_dtype: ir.DataType) -> int:
    """Put Q/DQ on both inputs of every node of ``products`` (node -> :class:`Product`, found before the typed
    conversion); returns the number of activation Q/DQ pairs added."""
    graph = model.graph
    qtype = _QTYPE[fmt]
    zero = ir.Value(name=f"qdq.{fmt}.zero_point", type=ir.TensorType(qtype), shape=ir.Shape([]),
                    const_value=ir.tensor(np.zeros((), np.int8 if fmt == "int8" else ml_dtypes.float8_e4m3fn),
                                          dtype=qtype))
    graph.register_initializer(zero)
    dequantized: dict[ir.Value, ir.Value] = {}
    for node, product in products.items():
        data = node.inputs[0]
        if data not in dequantized:
            scale, _ = _scale(graph, f"{product.data}.{fmt}_scale", np.float32(amax[product.data]), fmt, scale_dtype)
            quantize = ir.node("QuantizeLinear", [data, scale, zero])
            dequantize = ir.node("DequantizeLinear", [quantize.outputs[0], scale, zero])
            quantize.outputs[0].dtype, quantize.outputs[0].shape = qtype, data.shape
            dequantize.outputs[0].dtype, dequantize.outputs[0].shape = data.dtype, data.shape
            quantize.outputs[0].name, dequantize.outputs[0].name = f"{product.data}.{fmt}", f"{product.data}.dq"
            graph.insert_before(node, [quantize, dequantize])
            dequantized[data] = dequantize.outputs[0]
        node.replace_input_with(0, dequantized[data])
        scale, values = _scale(graph, f"{product.weight}.{fmt}_scale",
                               np.abs(product.array).max(axis=1 - product.axis), fmt, scale_dtype)
        stored = _quantize_weight(product.array, values, product.axis, fmt)
        quantized = ir.Value(name=f"{product.weight}.{fmt}", type=ir.TensorType(qtype),
                             shape=ir.Shape(stored.shape), const_value=ir.tensor(stored, dtype=qtype))
        graph.register_initializer(quantized)
        dequantize = ir.node("DequantizeLinear", [quantized, scale], {"axis": product.axis})
        dequantize.outputs[0].dtype, dequantize.outputs[0].shape = scale_dtype, ir.Shape(stored.shape)
        dequantize.outputs[0].name = f"{product.weight}.dq"
        graph.insert_before(node, dequantize)
        node.replace_input_with(1, dequantize.outputs[0])
    drop_unused(graph)
    return len(dequantized)


def qdq_graph(source: Path, dest: Path, fmt: str, feeds: Sequence[dict], high_precision: str = "fp16") -> dict:
    """Write the Q/DQ graph of the fp32 graph ``source`` to ``dest`` (module docstring); returns the quantization
    settings the manifest records. Raises QuantizeError (bad format, zero or non-finite scales)."""
    if fmt not in FORMATS:
        raise QuantizeError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if high_precision not in HIGH_PRECISIONS:
        raise QuantizeError(f"unknown precision {high_precision!r} for the rest of the graph; choose one of "
                            f"{', '.join(HIGH_PRECISIONS)}")
    model = ir.load(str(source))
    products = {node: Product(node.inputs[0].name, node.inputs[1].name,
                              constant_array(node.inputs[1]).astype(np.float32), _weight_axis(node))
                for node in quantized_products(model)}
    if not products:
        raise QuantizeError(f"{Path(source).name} has no linear layer of the token stream to quantize")
    amax = calibrate(source, list(dict.fromkeys(p.data for p in products.values())), feeds)
    convert(model, high_precision)
    pairs = insert_qdq(model, products, amax, fmt, LOW_DTYPES[high_precision])
    model.opset_imports[""] = max(model.opset_imports.get("", QDQ_OPSET), QDQ_OPSET)
    save_model(model, dest)
    low = "int8" if fmt == "int8" else "fp8 (E4M3)"
    return {"mode": "static", "format": fmt, "per_channel": True, "ops": list(QUANTIZED_OPS),
            "weights": f"{low}, symmetric, one scale per output channel", "high_precision": high_precision,
            "activations": f"{low}, symmetric, one scale per tensor (calibrated amax / {Q_MAX[fmt]:g})",
            "quantized_nodes": len(products), "activation_qdq": pairs,
            "kept": "patch embedding, final layer, attention products, conditioning paths, norms, softmax, RoPE",
            "opset": QDQ_OPSET, "tool": "fit_export.qdq (onnx-ir)"}


def emulated_graph(typed: Path, dest: Path) -> Path:
    """The Q/DQ graph ``typed`` as ONNX Runtime's CPU provider runs it: fp16/bf16 tensors rounded through their
    dtype, computed in float32 (:func:`fit_export.typed.emulate`); the Q/DQ nodes as they are."""
    save_model(emulate(ir.load(str(typed))), dest)
    return dest


#################################################################################
#                               Quality on the CPU                              #
#################################################################################

@dataclass(frozen=True)
class QualityCase:
    kind: str            # training, off-square, extrapolated, extrapolated off-square
    bucket: int          # token budget of the bucket the size belongs to
    width: int
    height: int
    method: str          # RoPE extrapolation method

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height} {self.method} ({self.kind}, bucket {self.bucket})"


def quality_cases(manifest: mf.Manifest) -> list[QualityCase]:
    """Per bucket: the squarest and the least square declared size within the training budget (the package's
    RoPE method), and beyond it the squarest size with every extrapolation method the manifest lists plus the
    least square one with the package's method."""
    g = manifest.latent.pixel_granularity
    budget = manifest.sizes.train_token_budget
    own = manifest.rope.method
    methods = tuple(manifest.rope.methods) or (own,)
    tokens = lambda s: (s[0] // g) * (s[1] // g)
    aspect = lambda s: max(s[0] / s[1], s[1] / s[0])
    cases = []
    for bucket in manifest.sizes.buckets:
        sizes = sorted((tuple(s) for s in bucket.sizes), key=lambda s: (aspect(s), -tokens(s)))
        for group, kinds, square_methods in (([s for s in sizes if tokens(s) <= budget], ("training", "off-square"),
                                              (own,)),
                                             ([s for s in sizes if tokens(s) > budget],
                                              ("extrapolated", "extrapolated off-square"), methods)):
            if not group:
                continue
            cases += [QualityCase(kinds[0], bucket.tokens, *group[0], method) for method in square_methods]
            off = max(group, key=aspect)
            if aspect(off) > aspect(group[0]):
                cases.append(QualityCase(kinds[1], bucket.tokens, *off, own))
    return cases


def measure_quality(package, graph: Path, fmt: str, gate: QualityGate = QualityGate(), accuracy: bool = True,
                    seed: int = 0, images_per_case: int = 2,
                    progress: Callable[[str], None] = lambda message: None) -> dict:
    """The validation record of the Q/DQ graph ``graph`` of ``package`` against the package's fp32 graph, both on
    ONNX Runtime's CPU provider (module docstring): per case of :func:`quality_cases`, ``images_per_case`` images
    (classes and seeds in turn from ``seed``) sampled in one batch with the package's defaults; ``passed`` and
    ``worst`` say how it meets ``gate``."""
    import engines
    from fit_export.validate import trajectory

    package = Path(package)
    manifest = load_manifest(package)
    cases = quality_cases(manifest)
    results = []
    with tempfile.TemporaryDirectory(prefix="fit-qdq-emulated-") as tmp:    # never inside a package or the repo
        emulated = emulated_graph(graph, Path(tmp) / "emulated.onnx")
        with engines.load(package, precision="fp32", device="cpu", ort_optimized=False) as reference, \
                engines.load(package, device="cpu", model_path=str(emulated)) as pipe:
            progress(f"measuring {fmt} against fp32 on ONNX Runtime (CPU): {len(cases)} sizes and methods, "
                     f"the package's sampler from the same seeds")
            for index, case in enumerate(cases):
                labels = [(index * images_per_case + i) % pipe.num_classes for i in range(images_per_case)]
                jobs = [pipe.prepare(case.width, case.height, label, seed + index * images_per_case + i,
                                     extrapolation=case.method)[0] for i, label in enumerate(labels)]
                run = trajectory(pipe, jobs, lambda feed: reference.backend.infer(feed)["v"],
                                 lambda noise: reference.sample_latents(jobs, noise=noise))
                results.append({**dataclasses.asdict(case), "name": case.name, "images": len(jobs),
                                "min_step_cosine": run.min_step_cosine,
                                "mean_step_cosine": float(np.mean(run.step_cosines)) if run.step_cosines else 1.0,
                                "evaluations": len(run.step_cosines),
                                "image_psnr_db": run.psnr_db if math.isfinite(run.psnr_db) else "inf",
                                "finite": bool(run.finite)})
            settings = jobs[0].settings
        shapes = None
        if accuracy:
            progress(f"measuring shape accuracy at the training sizes ({fmt} and fp32; default model only)")
            shapes = shapes_accuracy(package, {fmt: {"model_path": str(emulated)},
                                               "fp32": {"precision": "fp32", "ort_optimized": False}}, seed=seed)
    record = {"reference": "fp32", "backend": "onnxruntime CPU (Q/DQ as is, fp16/bf16 tensors rounded through their "
              "dtype)", "sampler": settings.sampler.method, "steps": settings.sampler.steps, "cfg": settings.cfg,
              "seed": seed, "images_per_case": images_per_case, "thresholds": dataclasses.asdict(gate),
              "cases": results}
    if shapes is not None:
        record["shapes_accuracy"] = shapes
    return judge(record, gate)


def judge(record: dict, gate: QualityGate) -> dict:
    """``record`` with ``passed`` and ``worst`` (the case furthest below ``gate``, or the lowest one) set."""
    failures = []
    for case in record["cases"]:
        psnr_db = float(case["image_psnr_db"])
        if not case["finite"]:
            failures.append((0.0, f"{case['name']}: NaN/Inf in the latents"))
        if not case["min_step_cosine"] >= gate.min_step_cosine:
            failures.append((case["min_step_cosine"] / gate.min_step_cosine,
                             f"{case['name']}: per-step cosine {case['min_step_cosine']:.6f} < {gate.min_step_cosine}"))
        if not psnr_db >= gate.min_psnr_db:
            failures.append((psnr_db / gate.min_psnr_db, f"{case['name']}: image {psnr_db:.1f} dB < "
                                                         f"{gate.min_psnr_db:g} dB"))
    accuracy = record.get("shapes_accuracy", {}).get("accuracy", {})
    quantized = next((name for name in accuracy if name != "fp32"), None)
    if quantized:
        for size, value in accuracy[quantized].items():
            drop = accuracy["fp32"][size] - value
            if drop > gate.max_accuracy_drop:
                failures.append((1 - drop, f"{size}: shape accuracy {value:.1%} vs fp32 {accuracy['fp32'][size]:.1%}"
                                           f" (drop > {gate.max_accuracy_drop:.1%})"))
    lowest = min(record["cases"], key=lambda c: (c["min_step_cosine"], float(c["image_psnr_db"])), default=None)
    worst = min(failures)[1] if failures else (
        f"{lowest['name']}: per-step cosine {lowest['min_step_cosine']:.5f}, image "
        f"{float(lowest['image_psnr_db']):.1f} dB" if lowest else "no case")
    return {**record, "passed": not failures, "worst": worst}


def format_record(name: str, record: dict) -> str:
    """The validation record of a Q/DQ variant as ``fit-export validate`` and ``quantize`` print it."""
    t = record["thresholds"]
    lines = [f"{name}: measured on {record['backend']} against {record['reference']}, {record['sampler']} "
             f"{record['steps']} steps, cfg {record['cfg']:g}, seed {record['seed']}",
             f"  {'case':<52} {'min step cos':>12} {'mean':>9} {'PSNR dB':>8}"]
    for case in record["cases"]:
        ok = case["finite"] and case["min_step_cosine"] >= t["min_step_cosine"] and \
            float(case["image_psnr_db"]) >= t["min_psnr_db"]
        lines.append(f"  {case['name']:<52} {case['min_step_cosine']:>12.6f} {case['mean_step_cosine']:>9.6f} "
                     f"{float(case['image_psnr_db']):>8.1f}  {'ok' if ok else 'BELOW'}")
    for run, sizes in record.get("shapes_accuracy", {}).get("accuracy", {}).items():
        lines.append(f"  shape accuracy {run}: " + ", ".join(f"{s} {a * 100:.1f}%" for s, a in sizes.items()))
    lines.append(f"  {'PASSED' if record['passed'] else 'BELOW THE GATE'} (per-step cosine >= {t['min_step_cosine']}, "
                 f"image >= {t['min_psnr_db']:g} dB, accuracy drop <= {t['max_accuracy_drop']:.0%}); worst: "
                 f"{record['worst']}")
    return "\n".join(lines)


def recorded_quality(package, precision: Optional[str] = None) -> list[tuple[str, bool]]:
    """(:func:`format_record` text, passed) of the Q/DQ variants of ``package`` that carry a quality record: all of
    them (``precision`` None), or the one TensorRT builds for ``precision`` (int8/fp8 or the variant's name; none
    for any other value)."""
    transformer = load_manifest(package).transformer
    chosen = [v for v in transformer.variants if v.runtime == RUNTIME and v.validation and "cases" in v.validation
              and (precision is None or precision in (v.precision, v.name))]
    return [(format_record(v.name, v.validation), bool(v.validation["passed"])) for v in chosen]


#################################################################################
#                               The package                                     #
#################################################################################

def quantize_for_tensorrt(package, out, fmt: str = "int8", high_precision: str = "fp16",
                          calibration_images: Optional[int] = None,
                          calibration_sizes: Optional[Sequence[tuple[int, int]]] = None,
                          gate: QualityGate = QualityGate(), accuracy: bool = True, force: bool = False, seed: int = 0,
                          progress: Callable[[str], None] = lambda message: None) -> dict:
    """Write the package ``out``: ``package`` plus its Q/DQ variant ``trt-<fmt>`` for TensorRT (module docstring),
    its validation record measured on the CPU. The package's default variant stays. Calibration samples
    ``calibration_images`` images (default: one per size, at least 8) cycling over ``calibration_sizes`` (default:
    every declared size). Returns the variant's manifest entry.

    Raises QuantizeError (below the gate: :class:`QualityGateError`), engines.manifest.PackageError or
    fit_export.onnx_export.ExportError; nothing is left at ``out`` on failure and an existing package there stays
    as it was.
    """
    package, out = Path(package), Path(out)
    recover_folder(package)
    doc = load_manifest(package, verify=True)
    transformer = doc.transformer
    if fmt not in FORMATS:
        raise QuantizeError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if transformer.precision != "fp32":
        raise QuantizeError(f"quantize reads fp32 packages; {package} is {transformer.precision}")
    held = held_variant(transformer, fmt)
    if held is not None:
        raise QuantizeError(f"{package} already holds the {fmt} Q/DQ variant {held.name!r} for TensorRT")
    if out.resolve() == package.resolve():
        raise QuantizeError("--out must differ from the package it quantizes")
    if calibration_images is None:
        count = len(calibration_sizes) if calibration_sizes else sum(len(b.sizes) for b in doc.sizes.buckets)
        calibration_images = max(8, count)
    with new_package(out, force=force, base=package) as draft:
        recorded = record_calibration(package, calibration_images, seed, sizes=calibration_sizes, progress=progress)
        feeds = recorded.pop("feeds")
        progress(f"writing the {fmt} Q/DQ graph of {transformer.file} ({high_precision} elsewhere)")
        name, file = variant_name(fmt), variant_file(fmt)
        settings = qdq_graph(draft.path / transformer.file, draft.add(file), fmt, feeds, high_precision)
        settings.update(source=transformer.base.name, calibration=dict(
            recorded, images=calibration_images, evaluations=len(feeds), method="amax",
            sizes_from="given" if calibration_sizes else "every declared size"))
        del feeds
        variant = mf.VariantSection(name=name, file=file, precision=fmt, runtime=RUNTIME, opset=settings["opset"],
                                    source=transformer.base.name, quantization=settings)
        draft.manifest = doc.replace(created=now_utc(), files=draft.files, transformer=dataclasses.replace(
            transformer, variants=transformer.variants + (variant,)))
        record = measure_quality(draft.path, draft.path / file, fmt, gate, accuracy, seed, progress=progress)
        if not record["passed"]:
            raise QualityGateError(f"the {fmt} Q/DQ graph is below the quality gate on the CPU, nothing written; "
                                   f"worst: {record['worst']}")
        variant = dataclasses.replace(variant, validation=record)
        variants = tuple(variant if v.name == name else v for v in draft.manifest.transformer.variants)
        draft.manifest = draft.manifest.replace(transformer=dataclasses.replace(draft.manifest.transformer,
                                                                                variants=variants))
    return variant.to_dict()


class QualityGateError(QuantizeError):
    """The Q/DQ graph is below the quality gate; the message names the worst case."""


__all__ = ["FORMATS", "QualityGateError", "format_record", "measure_quality", "qdq_graph",
           "quantize_for_tensorrt", "quality_cases", "variant_name"]
