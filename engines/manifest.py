"""The model package manifest and the transformer graph contract — one definition, shared by the exporter, every
runtime, validation, TensorRT and the docs.

A package is a directory with ``manifest.json`` and the files it lists. :class:`Manifest` is that JSON as typed,
frozen dataclasses: :meth:`Manifest.from_dict` is the one reader (one set of defaults, one validation, one-line
:class:`PackageError` messages) and :meth:`Manifest.to_dict` the one writer. :class:`GraphContract` is the
transformer's input/output contract (names, dtypes, dynamic axes, feeds, example feeds, Polygraphy metadata).
docs/package-format.md holds a field reference generated from this module (``python -m engines.manifest``); a test
keeps the two identical.

Only the standard library is imported at module level (numpy lazily), so any torch-free tool can read packages.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Iterable, Mapping, Optional

FORMAT = "fit-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16")
VARIANT_PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATION_MODES = ("dynamic", "static")       # `quantization.mode` of an int8 variant (`fit-export quantize`)
ORT_VARIANT = "ort"               # name of the ONNX Runtime-tuned copy (`fit-export ort-optimize`)
OPENVINO_VARIANT = "ov"           # name of the OpenVINO-tuned copy (`fit-export ov-optimize`)
LATENT_SPACES = ("sd-vae", "pixel")


class PackageError(ValueError):
    """A model package is missing, unreadable, of an unknown version or does not match its hashes."""


def _doc(text: str, **kwargs):
    """A dataclass field with its documentation (rendered into docs/package-format.md)."""
    return field(metadata={"doc": text}, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Graph contract
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (numpy name) and shape of one graph input or output; dynamic axes are names ("batch", "seq")."""

    name: str
    dtype: str
    shape: tuple

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "tensor") -> "TensorSpec":
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise PackageError(f"{source}: a tensor needs a name")
        shape = data.get("shape", ())
        if not isinstance(shape, (list, tuple)):
            raise PackageError(f"{source}: tensor {data['name']!r} has no shape list")
        return cls(data["name"], str(data.get("dtype", "float32")), tuple(shape))


@dataclass(frozen=True)
class GraphContract:
    """The transformer graph every package ships and every backend runs (docs/package-format.md):

    x (batch, seq, token_dim) -> v (batch, seq, out_token_dim), conditioned on t (batch,), y (batch,) int64,
    rope_cos / rope_sin (batch, seq, head_dim) and mask (batch, seq). ``x`` and ``v`` are float16 in fp16 packages;
    every other input is float32 (y int64) at every precision.
    """

    token_dim: int
    out_token_dim: int
    head_dim: int
    precision: str = "fp32"

    INPUT_NAMES: ClassVar[tuple] = ("x", "t", "y", "rope_cos", "rope_sin", "mask")
    OUTPUT_NAMES: ClassVar[tuple] = ("v",)
    BATCH: ClassVar[str] = "batch"
    SEQ: ClassVar[str] = "seq"
    MEANINGS: ClassVar[dict] = {
        "x": "noisy tokens, row-major patch order, channels (c, p1, p2)",
        "t": "flow time in [0, 1] (0 = noise, 1 = data)",
        "y": "class label; `null_class` = unconditional",
        "rope_cos": "RoPE cos table (docs/runtime-spec.md); pairs `(2i, 2i+1)` hold the same angle",
        "rope_sin": "RoPE sin table",
        "mask": "1 = real token, 0 = padding",
        "v": "velocity (zero at padding)",
    }

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise PackageError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    @property
    def activation_dtype(self) -> str:
        return "float16" if self.precision == "fp16" else "float32"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        b, n, act = self.BATCH, self.SEQ, self.activation_dtype
        return (TensorSpec("x", act, (b, n, self.token_dim)), TensorSpec("t", "float32", (b,)),
                TensorSpec("y", "int64", (b,)), TensorSpec("rope_cos", "float32", (b, n, self.head_dim)),
                TensorSpec("rope_sin", "float32", (b, n, self.head_dim)), TensorSpec("mask", "float32", (b, n)))

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("v", self.activation_dtype, (self.BATCH, self.SEQ, self.out_token_dim)),)

    @property
    def dynamic_axes(self) -> tuple[str, str]:
        return (self.BATCH, self.SEQ)

    def axes(self) -> dict[str, dict[int, str]]:
        """name -> {axis index: axis name} for every dynamic axis (torch.onnx / ONNX Runtime convention)."""
        return {spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
                for spec in self.inputs + self.outputs}

    def shapes(self, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for a (batch, seq) call."""
        sizes = {self.BATCH: batch, self.SEQ: seq}
        return {spec.name: tuple(sizes.get(d, d) for d in spec.shape) for spec in self.inputs}

    @classmethod
    def check_names(cls, inputs: Iterable[str], outputs: Iterable[str], source: str) -> None:
        """Raise PackageError unless a graph's input and output names are the contract's, in order."""
        inputs, outputs = tuple(inputs), tuple(outputs)
        if inputs != cls.INPUT_NAMES or outputs != cls.OUTPUT_NAMES:
            raise PackageError(f"{source}: inputs/outputs {inputs} -> {outputs} do not follow the graph contract "
                               f"{cls.INPUT_NAMES} -> {cls.OUTPUT_NAMES}")

    def feed(self, **arrays) -> dict:
        """The contract's inputs in order, each as a contiguous array of its dtype (x in the activation dtype)."""
        import numpy as np

        missing = [name for name in self.INPUT_NAMES if name not in arrays]
        unexpected = [name for name in arrays if name not in self.INPUT_NAMES]
        if missing or unexpected:
            raise ValueError(f"graph feed: missing {missing}, unexpected {unexpected}")
        return {spec.name: np.ascontiguousarray(arrays[spec.name], dtype=spec.dtype) for spec in self.inputs}

    def example_feed(self, batch: int = 1, seq: int = 4, seed: int = 0) -> dict:
        """A valid random feed (all tokens real; tables of angle 0 rotate nothing): for tracing and smoke tests."""
        import numpy as np

        rng = np.random.default_rng(seed)
        return self.feed(x=rng.standard_normal((batch, seq, self.token_dim)),
                         t=rng.uniform(0.05, 0.95, batch), y=np.zeros(batch, np.int64),
                         rope_cos=np.ones((batch, seq, self.head_dim)), rope_sin=np.zeros((batch, seq, self.head_dim)),
                         mask=np.ones((batch, seq)))

    def polygraphy_metadata(self):
        """Polygraphy ``TensorMetadata`` of the inputs (dynamic axes as names), for runners and data loaders."""
        import numpy as np
        from polygraphy.common import TensorMetadata

        meta = TensorMetadata()
        for spec in self.inputs:
            meta.add(spec.name, np.dtype(spec.dtype), list(spec.shape))
        return meta


# ------------------------------------------------------------------------------------------------------------
# Manifest sections
# ------------------------------------------------------------------------------------------------------------

class _Section:
    """from_dict / to_dict for a frozen dataclass of JSON values (nested sections and tensor lists included)."""

    NESTED: ClassVar[dict] = {}        # field name -> section class (or (TensorSpec,) for a list of tensors)
    OPTIONAL_ENTRIES: ClassVar[tuple] = ()   # fields written only when set, not null or empty (later additions)

    @classmethod
    def from_dict(cls, data, source: str):
        if not isinstance(data, Mapping):
            raise PackageError(f"{source}: expected an object, got {type(data).__name__}")
        values = {}
        for f in dataclasses.fields(cls):
            where = f"{source}.{f.name}"
            if f.name not in data or data[f.name] is None and f.default is not dataclasses.MISSING:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise PackageError(f"{source} lacks {f.name}")
                continue
            value = data[f.name]
            nested = cls.NESTED.get(f.name)
            if nested == (TensorSpec,):
                if not isinstance(value, list):
                    raise PackageError(f"{where}: expected a list of tensors")
                value = tuple(TensorSpec.from_dict(v, where) for v in value)
            elif nested is not None and value is not None:
                value = nested.from_dict(value, where)
            values[f.name] = _checked(value, f.type, where)
        try:
            return cls(**values)
        except PackageError:
            raise
        except (TypeError, ValueError) as err:
            raise PackageError(f"{source}: {str(err).splitlines()[0]}") from None

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (_Section, TensorSpec)):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, (_Section, TensorSpec)) else
                         list(v) if isinstance(v, tuple) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            if f.name in self.OPTIONAL_ENTRIES and (value is None or value == []):
                continue
            out[f.name] = value
        return out


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}


def _checked(value, annotation: str, where: str):
    """Check a JSON value against a field annotation (as written in this module); lists become tuples."""
    kind = str(annotation).replace("Optional[", "").rstrip("]").split("[")[0].strip()
    optional = str(annotation).startswith("Optional[")
    if value is None:
        if optional:
            return None
        raise PackageError(f"{where} must not be null")
    if kind == "tuple":
        if not isinstance(value, (list, tuple)):
            raise PackageError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    expected = _JSON_TYPES.get(kind)
    if expected is not None:
        if isinstance(value, bool) and kind in ("int", "float") or not isinstance(value, expected):
            raise PackageError(f"{where}: expected {kind}, got {json.dumps(value)[:40]}")
        return float(value) if kind == "float" else value
    return value


@dataclass(frozen=True)
class ModelSection(_Section):
    config: dict = _doc("FiTConfig fields (official `FiT.__init__` names); read by the PyTorch tools only")
    patch_size: int = _doc("p: latent pixels per token side")
    latent_channels: int = _doc("C: channels of the latent (or image) the model denoises")
    token_dim: int = _doc("p·p·C, the last axis of `x`")
    out_token_dim: int = _doc("last axis of `v` (equals token_dim for FiTv2 velocity models)")
    head_dim: int = _doc("attention head width; the last axis of the RoPE tables")
    num_classes: int = _doc("class ids 0 .. num_classes-1")
    null_class: int = _doc("label of the unconditional (guidance) branch")
    class_names: Optional[tuple] = _doc("one name per class (`fit-run --class NAME`), or null", default=None)
    learn_sigma: bool = _doc("FiT v1 models that also predict sigma; the runtime refuses them", default=False)

    def __post_init__(self):
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise PackageError(f"model.class_names has {len(self.class_names)} names for {self.num_classes} classes")


@dataclass(frozen=True)
class LatentSection(_Section):
    space: str = _doc("`sd-vae` (a VAE latent) or `pixel` (RGB pixels in [-1, 1])")
    downsample: int = _doc("d: image pixels per latent pixel (1 in pixel space)")
    scaling_factor: float = _doc("latent = vae_latent × scaling_factor (1.0 in pixel space)")
    pixel_granularity: int = _doc("d·p: image sides must be multiples of this")

    def __post_init__(self):
        if self.space not in LATENT_SPACES:
            raise PackageError(f"latent.space must be one of {', '.join(LATENT_SPACES)}, got {self.space!r}")
        if self.downsample < 1 or self.pixel_granularity < 1 or self.pixel_granularity % self.downsample:
            raise PackageError(f"latent.pixel_granularity ({self.pixel_granularity}) must be a positive multiple of "
                               f"latent.downsample ({self.downsample})")


@dataclass(frozen=True)
class VariantSection(_Section):
    """One more transformer graph a package holds besides ``transformer.file``: the ONNX Runtime-tuned copy, an
    int8 (or fp16) version. Every variant follows the graph contract with float32 ``x``/``v``, except fp16."""

    name: str = _doc("variant name (`fit-run --precision NAME`), e.g. `ort`, `ov`, `int8`")
    file: str = _doc("its ONNX file, e.g. `transformer.ort.onnx`, `transformer.ov.onnx`, `transformer.int8.onnx`")
    precision: str = _doc("numbers its weights are stored in: `fp32`, `fp16` or `int8`")
    runtime: Optional[str] = _doc("the only backend that runs it (`onnxruntime`: opset-23 fused ops, ONNX Runtime's "
                                  "quantized kernels; `openvino`: the copy rewritten for OpenVINO), or null for any",
                                  default=None)
    opset: Optional[int] = _doc("its ONNX opset", default=None)
    weights_from: Optional[str] = _doc("the file its large initializers are read from (ONNX external data with "
                                       "offsets), e.g. `transformer.onnx`: it shares the fp32 graph's weights; null "
                                       "when it holds its own", default=None)
    source: Optional[str] = _doc("the variant it was made from", default=None)
    fused_attention: int = _doc("attention blocks fused into one op", default=0)
    fused_rotary: int = _doc("RoPE rotations rewritten: into one `RotaryEmbedding` op (`ort`), into one `MatMul` "
                             "(`ov`)", default=0)
    quantization: Optional[dict] = _doc("`fit-export quantize` settings (mode, per_channel, ops, calibration)",
                                        default=None)
    check: Optional[dict] = _doc("its comparison with the graph it was made from, when it was written",
                                 default=None)
    validation: Optional[dict] = _doc("quality against fp32 (`fit-export quantize`: per-step cosine, image "
                                      "PSNR, fit-eval accuracy)", default=None)
    ort_format: Optional[str] = _doc("the same graph in ONNX Runtime's ORT format (mobile and reduced builds), or "
                                     "null", default=None)
    operator_config: Optional[str] = _doc("operator configuration of an ONNX Runtime reduced build that runs "
                                          "`ort_format` (`--include_ops_by_config`), or null", default=None)

    def __post_init__(self):
        if self.precision not in VARIANT_PRECISIONS:
            raise PackageError(f"variant {self.name!r}: unknown precision {self.precision!r}; choose one of "
                               f"{', '.join(VARIANT_PRECISIONS)}")


@dataclass(frozen=True)
class TransformerSection(_Section):
    NESTED: ClassVar[dict] = {"inputs": (TensorSpec,), "outputs": (TensorSpec,)}
    OPTIONAL_ENTRIES: ClassVar[tuple] = ("variants", "default_variant")

    file: str = _doc("the graph, `transformer.onnx` (the variant named by `precision`)")
    precision: str = _doc("`fp32` or `fp16` (x and v in float16)")
    opset: int = _doc("ONNX opset of the graph")
    inputs: tuple = _doc("the graph contract's inputs (below), in order")
    outputs: tuple = _doc("the graph contract's output")
    external_data: Optional[str] = _doc("weights file of graphs over 2 GB, or null", default=None)
    exporter: Optional[str] = _doc("what wrote the graph", default=None)
    export_seconds: Optional[float] = _doc("how long the export took", default=None)
    fp32_ops: tuple = _doc("fp16 graphs: op types kept in float32", default=())
    dynamic_axes: tuple = _doc("the dynamic axis names", default=(GraphContract.BATCH, GraphContract.SEQ))
    variants: tuple = _doc("`[{name, file, precision, ...}]`: further graphs of the same network (below)",
                           default=())
    default_variant: Optional[str] = _doc("the variant every runtime runs when none is asked for (null: the graph "
                                          "itself, named by `precision`)", default=None)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise PackageError(f"unknown transformer precision {self.precision!r}")
        variants = tuple(v if isinstance(v, VariantSection) else VariantSection.from_dict(v, "transformer.variants")
                         for v in self.variants)
        object.__setattr__(self, "variants", variants)
        names = [v.name for v in self.all_variants()]
        if len(set(names)) != len(names):
            raise PackageError(f"transformer.variants: names must be unique, got {names}")
        if self.default_variant is not None and self.default_variant not in names:
            raise PackageError(f"transformer.default_variant {self.default_variant!r} is not a variant "
                               f"({', '.join(names)})")

    @classmethod
    def from_dict(cls, data, source: str):
        if isinstance(data, Mapping) and data.get("ort_optimized"):      # packages written before variants
            legacy = dict(data["ort_optimized"])
            legacy.update(name=ORT_VARIANT, precision=data.get("precision", "fp32"),
                          weights_from=data.get("external_data"))
            data = dict(data, variants=[legacy] + list(data.get("variants") or ()))
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k != "ort_optimized"}
        return super().from_dict(data, source)

    @property
    def base(self) -> VariantSection:
        """``transformer.file`` as a variant (named by its precision; runs on every backend)."""
        return VariantSection(name=self.precision, file=self.file, precision=self.precision, opset=self.opset,
                              weights_from=self.external_data)

    def all_variants(self) -> tuple[VariantSection, ...]:
        """The graph itself, then every listed variant."""
        return (self.base,) + tuple(self.variants)

    def variant(self, name: str) -> VariantSection:
        for v in self.all_variants():
            if v.name == name:
                return v
        raise PackageError(f"the package has no transformer variant {name!r}; it holds "
                           f"{', '.join(v.name for v in self.all_variants())}")

    @property
    def default(self) -> VariantSection:
        return self.variant(self.default_variant or self.precision)

    def select(self, backend: str, precision: Optional[str] = None, tuned: bool = True) -> VariantSection:
        """The variant ``backend`` runs for ``precision``: a variant name, a precision (``fp32``, ``int8``, ...),
        or None for the package default. Among the variants of a precision the backend prefers the one made for it
        (``runtime`` equal to its name: the ONNX Runtime-tuned copy) unless ``tuned`` is False; a variant made for
        another runtime is never chosen. Raises PackageError naming what the package holds."""
        runnable = [v for v in self.all_variants() if v.runtime in (None, backend)]
        names = ", ".join(v.name for v in self.all_variants())
        if precision is None:
            wanted = self.default
            if wanted.runtime not in (None, backend):             # tuned for another runtime: the same numbers
                wanted = self.base if self.base.precision == wanted.precision else wanted
            precision = wanted.precision
            if wanted.runtime == backend and tuned:
                return wanted
        elif precision in [v.name for v in self.all_variants()] and precision not in VARIANT_PRECISIONS:
            chosen = self.variant(precision)
            if chosen.runtime not in (None, backend):
                raise PackageError(f"transformer variant {precision!r} runs on {chosen.runtime} only, not {backend}")
            return chosen
        matching = [v for v in runnable if v.precision == precision]
        if not matching:
            raise PackageError(f"the package has no {precision} transformer that {backend} can run; it holds "
                               f"{names}")
        own = [v for v in matching if v.runtime == backend]
        generic = [v for v in matching if v.runtime is None]
        return (own if tuned and own else generic or own)[0]


@dataclass(frozen=True)
class VaeDecoderSection(_Section):
    NESTED: ClassVar[dict] = {"inputs": (TensorSpec,), "outputs": (TensorSpec,)}

    file: str = _doc("the decoder graph, `vae_decoder.onnx`: latent (B, C, h, w) -> image (B, 3, d·h, d·w)")
    scaling_factor: Optional[float] = _doc("the VAE's own latent scaling factor (informational; the runtime uses "
                                           "`latent.scaling_factor`)", default=None)
    downsample: Optional[int] = _doc("d, pixels per latent pixel (informational; see `latent.downsample`)",
                                     default=None)
    input_is_scaled: bool = _doc("false: the host divides the latent by `latent.scaling_factor` before the graph; "
                                 "true: the graph takes the scaled latent", default=False)
    opset: Optional[int] = _doc("ONNX opset", default=None)
    precision: str = _doc("`fp32`", default="fp32")
    exporter: Optional[str] = _doc("what wrote the graph", default=None)
    inputs: tuple = _doc("`latent`", default=())
    outputs: tuple = _doc("`image`, RGB in about [-1, 1]", default=())
    check: Optional[dict] = _doc("its comparison with diffusers at export time", default=None)


@dataclass(frozen=True)
class GuidanceSection(_Section):
    default_scale: float = _doc("guidance scale when a request gives none (1 = off)")
    cfg_channels: Optional[int] = _doc("guide only the first cfg_channels·p·p token channels (null: all)",
                                       default=None)
    scale_pow: float = _doc("power-cosine guidance schedule exponent (0: constant scale)", default=0.0)

    def __post_init__(self):
        if not self.default_scale >= 0:
            raise PackageError(f"guidance.default_scale must be >= 0, got {self.default_scale}")


@dataclass(frozen=True)
class SamplerSection(_Section):
    method: str = _doc("default sampler: euler, heun, dopri5 or sde")
    steps: int = _doc("default step count (euler, heun, sde)")
    atol: float = _doc("dopri5 absolute tolerance", default=1e-6)
    rtol: float = _doc("dopri5 relative tolerance", default=1e-3)
    time_shifting: float = _doc("training-time timestep shift (informational)", default=1.0)

    def __post_init__(self):
        if self.steps < 1:
            raise PackageError(f"sampler.steps must be >= 1, got {self.steps}")


@dataclass(frozen=True)
class RopeSection(_Section):
    theta: float = _doc("RoPE base")
    head_dim: int = _doc("head width the tables are built for")
    method: str = _doc("the model's own method (official name)")
    decouple: bool = _doc("height and width scaled separately (VisionNTK / VisionYaRN)")
    ori_max_pe_len: Optional[int] = _doc("training grid side in patches (L_train of the extrapolation formulas)")
    online: bool = _doc("the model computes its tables per image size (informational)", default=False)
    methods: tuple = _doc("the extrapolation names runtimes accept for this package", default=())
    max_pe_len: Optional[tuple] = _doc("official max_pe_len_h, max_pe_len_w (informational)", default=None)


@dataclass(frozen=True)
class BucketSection(_Section):
    tokens: int = _doc("token budget of the bucket")
    sizes: tuple = _doc("[width, height] pixel sizes declared for it", default=())


@dataclass(frozen=True)
class SizesSection(_Section):
    NESTED: ClassVar[dict] = {}

    train_token_budget: int = _doc("tokens per image in training (L)")
    max_tokens: int = _doc("the most tokens a request may have")
    default: tuple = _doc("[width, height] of a request that gives no size")
    buckets: tuple = _doc("`[{tokens, sizes}]`: a size belongs to the smallest bucket that holds its tokens")

    @classmethod
    def from_dict(cls, data, source: str):
        section = super().from_dict(data, source)
        buckets = tuple(b if isinstance(b, BucketSection) else BucketSection.from_dict(b, f"{source}.buckets")
                        for b in section.buckets)
        return dataclasses.replace(section, buckets=buckets)

    def __post_init__(self):
        if len(self.default) != 2 or not all(isinstance(v, int) and v > 0 for v in self.default):
            raise PackageError(f"sizes.default must be [width, height], got {list(self.default)}")
        if self.max_tokens < 1:
            raise PackageError(f"sizes.max_tokens must be positive, got {self.max_tokens}")


@dataclass(frozen=True)
class ReferenceSection(_Section):
    weights: Optional[str] = _doc("PyTorch weights stored in the package (validation only), or null", default=None)
    checkpoint: Optional[str] = _doc("file name of the checkpoint exported from", default=None)
    checkpoint_sha256: Optional[str] = _doc("its sha256", default=None)


@dataclass(frozen=True)
class FileEntry(_Section):
    sha256: str = _doc("hex sha256 of the file")
    bytes: int = _doc("its size")


# ------------------------------------------------------------------------------------------------------------
# The manifest
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest(_Section):
    NESTED: ClassVar[dict] = {"model": ModelSection, "latent": LatentSection, "transformer": TransformerSection,
                              "vae_decoder": VaeDecoderSection, "guidance": GuidanceSection,
                              "sampler": SamplerSection, "rope": RopeSection, "sizes": SizesSection,
                              "reference": ReferenceSection}

    name: str = _doc("package name")
    created: str = _doc("UTC time of the export, ISO 8601")
    model: ModelSection = _doc("the network")
    latent: LatentSection = _doc("what the network denoises")
    transformer: TransformerSection = _doc("the transformer graph")
    guidance: GuidanceSection = _doc("classifier-free guidance")
    sampler: SamplerSection = _doc("sampler defaults")
    rope: RopeSection = _doc("rotary position settings")
    sizes: SizesSection = _doc("sizes and TensorRT buckets")
    files: dict = _doc("file name -> {sha256, bytes} for every file of the package")
    vae_decoder: Optional[VaeDecoderSection] = _doc("the VAE decoder graph, or null (preview colours)", default=None)
    reference: ReferenceSection = _doc("what validation compares against", default=ReferenceSection())
    format: str = _doc(f"`{FORMAT}`", default=FORMAT)
    format_version: int = _doc(f"{FORMAT_VERSION}", default=FORMAT_VERSION)

    def __post_init__(self):
        files = {}
        for name, entry in self.files.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise PackageError(f"file name {name!r} must be relative to the package")
            files[name] = entry if isinstance(entry, FileEntry) else FileEntry.from_dict(entry, f"files[{name!r}]")
        object.__setattr__(self, "files", files)
        GraphContract.check_names((s.name for s in self.transformer.inputs), (s.name for s in self.transformer.outputs),
                               "transformer")
        for name in self.referenced_files():
            if name not in files:
                raise PackageError(f"{name} is referenced but not listed under files")

    @property
    def graph(self) -> GraphContract:
        """The transformer's graph contract."""
        m = self.model
        return GraphContract(m.token_dim, m.out_token_dim, m.head_dim, self.transformer.precision)

    def runtime_files(self, backend: str, precision: Optional[str] = None) -> list[str]:
        """The files ``backend`` opens to generate with ``precision`` (see :meth:`TransformerSection.select`): the
        transformer variant and its weights, and the decoder. TensorRT engines carry their own hashes (sidecars)."""
        files = [] if backend == "tensorrt" else graph_files(self, self.transformer.select(backend, precision).file)
        return files + ([self.vae_decoder.file] if self.vae_decoder else [])

    def referenced_files(self) -> list[str]:
        """Every file a section names (graphs, their external data, stored weights)."""
        t = self.transformer
        names = [t.file, t.external_data,
                 *(n for v in t.variants for n in (v.file, v.weights_from, v.ort_format, v.operator_config)),
                 self.vae_decoder.file if self.vae_decoder else None, self.reference.weights]
        return [n for n in names if n]

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["files"] = {name: entry.to_dict() for name, entry in sorted(self.files.items())}
        order = ["format", "format_version", "name", "created", "model", "latent", "transformer", "vae_decoder",
                 "guidance", "sampler", "rope", "sizes", "reference", "files"]
        return {key: data[key] for key in order}

    @classmethod
    def from_dict(cls, data, source: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, Mapping):
            raise PackageError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise PackageError(f"{source}: not a FiT model package (format {data.get('format')!r}, "
                               f"expected {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise PackageError(f"{source}: package format version {data.get('format_version')!r} is not supported "
                               f"(this code reads version {FORMAT_VERSION}); re-export the package or update "
                               f"fit-toolkit")
        try:
            return super().from_dict(data, "manifest")
        except PackageError as err:
            raise PackageError(f"{source}: {err}") from None


# ------------------------------------------------------------------------------------------------------------
# Files: hashing, reading, writing
# ------------------------------------------------------------------------------------------------------------

def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (packages hold multi-GB weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory, names: Iterable[str]) -> dict[str, FileEntry]:
    """``files`` entries for ``names`` (paths relative to ``directory``): sha256 and size of each."""
    directory = Path(directory)
    return {name: FileEntry(sha256_file(directory / name), (directory / name).stat().st_size)
            for name in sorted(names)}


# Files already hashed in this process: (real path, size, mtime_ns, inode) -> sha256. A server that opens the same
# package many times, or a pipeline whose backends share a file, hashes it once. (A file rewritten in place with
# the same size within the file system's timestamp granularity keeps its key; packages are replaced by renaming.)
_HASHED: dict[tuple, str] = {}


def verify_files(directory, manifest: Manifest, names: Iterable[str]) -> None:
    """Check size and sha256 of the named files against the manifest (each file hashed once per process)."""
    directory = Path(directory)
    for name in names:
        entry, path = manifest.files.get(name), directory / name
        if entry is None:
            raise PackageError(f"package {directory}: {name} is not listed in {MANIFEST_NAME}")
        try:
            stat = path.stat()
        except OSError:
            raise PackageError(f"package {directory}: {name} is missing; re-export the package") from None
        if stat.st_size != entry.bytes:
            raise PackageError(f"package {directory}: {name} has {stat.st_size} bytes, the manifest says "
                               f"{entry.bytes} (truncated or replaced); re-export the package")
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in _HASHED:
            _HASHED[key] = sha256_file(path)
        if _HASHED[key] != entry.sha256:
            raise PackageError(f"package {directory}: sha256 of {name} does not match the manifest "
                               f"(corrupt or replaced); re-export the package")


def graph_files(manifest: Manifest, file: str) -> list[str]:
    """A graph file plus the file its external data comes from (``external_data`` / a variant's ``weights_from``)."""
    extra = next((v.weights_from for v in manifest.transformer.all_variants() if v.file == file), None)
    return [file] + ([extra] if extra and extra != file else [])


def load_manifest(directory, verify: bool = False) -> Manifest:
    """Read and check ``directory/manifest.json``; with ``verify`` also the size and sha256 of every listed file.

    Runtimes leave ``verify`` off and check the files they open (:func:`verify_files`). Raises
    :class:`PackageError` with a one-line message on any problem.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise PackageError(f"package {directory} does not exist or is not a directory")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PackageError(f"package {directory} has no {MANIFEST_NAME}") from None
    except OSError as e:
        raise PackageError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None
    manifest = Manifest.from_dict(doc, str(path))
    if verify:
        verify_files(directory, manifest, sorted(manifest.files))
    return manifest


def write_manifest(directory, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically."""
    from engines.atomic import atomic_write

    path = Path(directory) / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------------------------
# The field reference in docs/package-format.md
# ------------------------------------------------------------------------------------------------------------

def _type_name(f) -> str:
    kind = str(f.type).replace("Optional[", "").rstrip("]")
    kind = "object" if kind in {c.__name__ for c in _SECTIONS.values()} else \
        {"tuple": "list", "dict": "object", "str": "string", "int": "integer", "float": "number",
         "bool": "boolean"}.get(kind, kind)
    return kind + (" or null" if str(f.type).startswith("Optional[") else "")


_SECTIONS = {"": Manifest, "model": ModelSection, "latent": LatentSection, "transformer": TransformerSection,
             "transformer.variants[]": VariantSection, "vae_decoder": VaeDecoderSection,
             "guidance": GuidanceSection, "sampler": SamplerSection, "rope": RopeSection, "sizes": SizesSection,
             "sizes.buckets[]": BucketSection, "reference": ReferenceSection, "files.NAME": FileEntry}


def field_reference() -> str:
    """Markdown tables of every manifest field and of the graph contract, generated from the dataclasses."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for prefix, section in _SECTIONS.items():
        for f in dataclasses.fields(section):
            has_default = f.default is not dataclasses.MISSING
            default = "required" if not has_default else json.dumps(
                f.default.to_dict() if isinstance(f.default, _Section) else
                list(f.default) if isinstance(f.default, tuple) else f.default)
            name = f"{prefix}.{f.name}" if prefix else f.name
            lines.append(f"| `{name}` | {_type_name(f)} | {default} | {f.metadata.get('doc', '')} |")
    contract = GraphContract(token_dim=0, out_token_dim=0, head_dim=0)
    symbolic = {"x": "(batch, seq, token_dim)", "v": "(batch, seq, out_token_dim)",
                "rope_cos": "(batch, seq, head_dim)", "rope_sin": "(batch, seq, head_dim)"}
    graph = ["| name | direction | dtype | shape | meaning |", "|---|---|---|---|---|"]
    for direction, specs in (("input", contract.inputs), ("output", contract.outputs)):
        for spec in specs:
            dtype = "float32 / float16 (fp16 packages)" if spec.name in ("x", "v") else spec.dtype
            shape = symbolic.get(spec.name, "(" + ", ".join(map(str, spec.shape)) + ("," if len(spec.shape) == 1
                                                                                     else "") + ")")
            graph.append(f"| `{spec.name}` | {direction} | {dtype} | {shape} | {GraphContract.MEANINGS[spec.name]} |")
    return "\n".join(["### Graph contract", "", *graph, "", "### Manifest fields", "", *lines])


DOC_BEGIN = "<!-- field reference: generated by `python -m engines.manifest --update docs/package-format.md` -->"
DOC_END = "<!-- end of the generated field reference -->"


def update_doc(path) -> bool:
    """Replace the generated block of a Markdown file with :func:`field_reference`; True when it changed."""
    from engines.atomic import atomic_write

    text = Path(path).read_text()
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    new = f"{head}{DOC_BEGIN}\n{field_reference()}\n{DOC_END}{tail}"
    if new != text:
        atomic_write(path, new)
    return new != text


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        print(("updated " if update_doc(sys.argv[2]) else "up to date: ") + sys.argv[2])
    else:
        print(field_reference())
