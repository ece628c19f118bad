"""The model package manifest: ``manifest.json`` as typed, frozen dataclasses — one definition, shared by the
exporter, every runtime, validation, TensorRT and the docs.

:meth:`Manifest.from_dict` is the one reader (one set of defaults, one validation, one-line :class:`PackageError`
messages) and :meth:`Manifest.to_dict` the one writer. Reading a package from disk (hashes, verification) is in
engines/package.py; the graph contracts in engines/contract.py; the field reference in docs/package-format.md is
generated from these classes by engines/schema.py.

Only the standard library is imported at module level, so any torch-free tool can read packages.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping, Optional

from engines.contract import PRECISIONS, GraphContract, TensorSpec, VaeDecoderContract
from engines.errors import PackageError

if TYPE_CHECKING:                                            # annotations only: this module stays import-light
    from engines.rope import RopeSettings

FORMAT = "fit-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VARIANT_PRECISIONS = ("fp32", "fp16", "int8", "fp8")
QUANTIZATION_MODES = ("dynamic", "static")       # `quantization.mode` of an int8 variant (`fit-export quantize`)
ORT_VARIANT = "ort"               # name of the ONNX Runtime-tuned copy (`fit-export ort-optimize`)
OPENVINO_VARIANT = "ov"           # name of the OpenVINO-tuned copy (`fit-export ov-optimize`)
LATENT_SPACES = ("sd-vae", "pixel")


def _doc(text: str, **kwargs):
    """A dataclass field with its documentation (rendered into docs/package-format.md)."""
    return field(metadata={"doc": text}, **kwargs)


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
    int8 or fp16 version. Every variant follows the package's graph contract (an fp32 package's: float32 ``x``/``v``,
    the fp16 variant of ``fit-export fp16`` too, with its casts inside the graph)."""

    name: str = _doc("variant name (`fit-run --precision NAME`), e.g. `ort`, `ov`, `int8`, `fp16`, `trt-int8`")
    file: str = _doc("its ONNX file, e.g. `transformer.ort.onnx`, `transformer.ov.onnx`, `transformer.int8.onnx`, "
                     "`transformer.fp16.onnx`")
    precision: str = _doc("numbers its weights are stored in: `fp32`, `fp16`, `int8` or `fp8`")
    runtime: Optional[str] = _doc("the only backend that runs it (`onnxruntime`: opset-23 fused ops, ONNX Runtime's "
                                  "quantized kernels; `openvino`: the copy rewritten for OpenVINO; `tensorrt`: the "
                                  "Q/DQ graphs its int8/fp8 engines are built from), or null for any",
                                  default=None)
    opset: Optional[int] = _doc("its ONNX opset", default=None)
    weights_from: Optional[str] = _doc("the file its large initializers are read from (ONNX external data with "
                                       "offsets), e.g. `transformer.onnx`: it shares the fp32 graph's weights; null "
                                       "when it holds its own", default=None)
    source: Optional[str] = _doc("the variant it was made from", default=None)
    fused_attention: int = _doc("attention blocks fused into one op", default=0)
    fused_rotary: int = _doc("RoPE rotations rewritten: into one `RotaryEmbedding` op (`ort`), into one `MatMul` "
                             "(`ov`)", default=0)
    quantization: Optional[dict] = _doc("`fit-export quantize` settings (mode, per_channel, ops, calibration; Q/DQ "
                                        "variants: format, high_precision)",
                                        default=None)
    check: Optional[dict] = _doc("its comparison with the graph it was made from, when it was written (`fit-export "
                                 "fp16`: the conversion's node counts, the ops kept in float32, the cosine)",
                                 default=None)
    validation: Optional[dict] = _doc("quality against fp32 (`fit-export quantize`: per-step cosine, image "
                                      "PSNR, fit-eval accuracy; `fit-export fp16`: image PSNR at a training, an "
                                      "off-square and an extrapolated size; Q/DQ variants: per size and "
                                      "extrapolation method, with the gate's thresholds)", default=None)
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

    def select(self, backend: str, precision: Optional[str] = None, tuned: bool = True,
               fp16: bool = False) -> VariantSection:
        """The variant ``backend`` runs for ``precision``: a variant name, a precision (``fp32``, ``int8``, ...),
        or None for the package default. Among the variants of a precision the backend prefers the one made for it
        (``runtime`` equal to its name: the ONNX Runtime-tuned copy) unless ``tuned`` is False; a variant made for
        another runtime is never chosen. ``fp16``: the device computes in float16 natively (a WebGPU adapter with
        ``shader-f16``), so with no precision asked for an fp32 default gives way to an fp16 variant the backend
        may run. Raises PackageError naming what the package holds."""
        runnable = [v for v in self.all_variants() if v.runtime in (None, backend)]
        names = ", ".join(v.name for v in self.all_variants())
        if precision is None:
            wanted = self.default
            if wanted.runtime not in (None, backend):             # tuned for another runtime: the same numbers
                wanted = self.base if self.base.precision == wanted.precision else wanted
            precision = wanted.precision
            if fp16 and precision == "fp32" and any(v.precision == "fp16" for v in runnable):
                precision = "fp16"
            elif wanted.runtime == backend and tuned:
                return wanted
        elif precision not in VARIANT_PRECISIONS:        # a variant name (an unknown one is refused by name)
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
    inputs: tuple = _doc("the VAE decoder contract's input, `latent` (above)", default=())
    outputs: tuple = _doc("its output, `image` (above)", default=())
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
    method: str = _doc("default sampler: euler, heun, ab2, unipc, dopri5 or sde")
    steps: int = _doc("default step count (every sampler but dopri5)")
    atol: float = _doc("dopri5 absolute tolerance", default=1e-6)
    rtol: float = _doc("dopri5 relative tolerance", default=1e-3)
    time_shift: float = _doc("default time shift S of the fixed-grid samplers (euler, heun, ab2, unipc): step i of N "
                             "ends at t = u / (u + S (1 - u)), u = i/N; 1 = even steps", default=1.0)
    tail_compression: float = _doc("default tail compression c of the fixed-grid samplers: each time t of the shifted "
                                   "grid becomes t + c t (1 - t), shorter steps near data; 0 = none, 1 at most",
                                   default=0.0)
    time_shifting: float = _doc("training-time timestep shift (informational)", default=1.0)

    def __post_init__(self):
        if self.steps < 1:
            raise PackageError(f"sampler.steps must be >= 1, got {self.steps}")
        if not 0.01 <= self.time_shift <= 100.0:          # engines.sampler.MIN_TIME_SHIFT, MAX_TIME_SHIFT
            raise PackageError(f"sampler.time_shift must be a number from 0.01 to 100, got {self.time_shift}")
        if not 0.0 <= self.tail_compression <= 1.0:      # engines.sampler.MAX_TAIL_COMPRESSION
            raise PackageError(f"sampler.tail_compression must be a number from 0 to 1, got {self.tail_compression}")


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

    def settings(self) -> "RopeSettings":
        """The model's own RoPE settings (engines.rope); ValueError for settings engines.rope cannot build."""
        from engines.rope import RopeSettings

        return RopeSettings(self.head_dim, self.theta, self.method, self.decouple, self.ori_max_pe_len)


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
        vae = self.vae_decoder
        if vae is not None and (vae.inputs or vae.outputs):
            VaeDecoderContract.check_names((s.name for s in vae.inputs), (s.name for s in vae.outputs), "vae_decoder")
        for name in self.referenced_files():
            if name not in files:
                raise PackageError(f"{name} is referenced but not listed under files")

    @property
    def graph(self) -> GraphContract:
        """The transformer's graph contract."""
        m = self.model
        return GraphContract(m.token_dim, m.out_token_dim, m.head_dim, self.transformer.precision)

    @property
    def vae_graph(self) -> Optional[VaeDecoderContract]:
        """The VAE decoder's graph contract, or None for a package without one."""
        if self.vae_decoder is None:
            return None
        return VaeDecoderContract(self.model.latent_channels, self.latent.downsample)

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


def graph_files(manifest: Manifest, file: str) -> list[str]:
    """A graph file plus the file its external data comes from (``external_data`` / a variant's ``weights_from``)."""
    extra = next((v.weights_from for v in manifest.transformer.all_variants() if v.file == file), None)
    return [file] + ([extra] if extra and extra != file else [])
