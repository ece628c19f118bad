"""The graph contracts of a package — the transformer's and the VAE decoder's: input and output names, dtypes,
dynamic axes, and the transformer's padded feed — one definition shared by the exporter, every runtime,
validation, the TensorRT builder and the docs (docs/package-format.md, docs/runtime-spec.md §6).

Only the standard library is imported at module level (numpy and engines.rope lazily).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterable, Mapping, Optional, Sequence, Union

from engines.errors import PackageError

if TYPE_CHECKING:                                            # annotations only: this module stays import-light
    import numpy as np

    from engines.rope import RopeSettings

PRECISIONS = ("fp32", "fp16")      # the precisions a graph's activations (x, v) come in

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


class _Contract:
    """What every graph contract derives from its ``inputs`` and ``outputs`` properties (TensorSpecs): names,
    axes, feeds."""

    INPUT_NAMES: ClassVar[tuple]
    OUTPUT_NAMES: ClassVar[tuple]
    TITLE: ClassVar[str]                 # how messages name the contract

    def axes(self) -> dict[str, dict[int, str]]:
        """name -> {axis index: axis name} for every dynamic axis (torch.onnx / ONNX Runtime convention)."""
        return {spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
                for spec in self.inputs + self.outputs}

    @classmethod
    def check_names(cls, inputs: Iterable[str], outputs: Iterable[str], source: str) -> None:
        """Raise PackageError unless a graph's input and output names are the contract's, in order."""
        inputs, outputs = tuple(inputs), tuple(outputs)
        if inputs != cls.INPUT_NAMES or outputs != cls.OUTPUT_NAMES:
            raise PackageError(f"{source}: inputs/outputs {inputs} -> {outputs} do not follow the {cls.TITLE} "
                               f"{cls.INPUT_NAMES} -> {cls.OUTPUT_NAMES}")

    def feed(self, **arrays) -> dict:
        """The contract's inputs in order, each as a contiguous array of its dtype."""
        import numpy as np

        missing = [name for name in self.INPUT_NAMES if name not in arrays]
        unexpected = [name for name in arrays if name not in self.INPUT_NAMES]
        if missing or unexpected:
            raise ValueError(f"{self.TITLE} feed: missing {missing}, unexpected {unexpected}")
        return {spec.name: np.ascontiguousarray(arrays[spec.name], dtype=spec.dtype) for spec in self.inputs}


# ------------------------------------------------------------------------------------------------------------
# The transformer
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphContract(_Contract):
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
    TITLE: ClassVar[str] = "graph contract"
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

    def shapes(self, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for a (batch, seq) call."""
        sizes = {self.BATCH: batch, self.SEQ: seq}
        return {spec.name: tuple(sizes.get(d, d) for d in spec.shape) for spec in self.inputs}

    def example_feed(self, batch: int = 1, seq: int = 4, seed: int = 0) -> dict:
        """A valid random feed (all tokens real; tables of angle 0 rotate nothing): for tracing and smoke tests."""
        import numpy as np

        rng = np.random.default_rng(seed)
        return self.feed(x=rng.standard_normal((batch, seq, self.token_dim)),
                         t=rng.uniform(0.05, 0.95, batch), y=np.zeros(batch, np.int64),
                         rope_cos=np.ones((batch, seq, self.head_dim)), rope_sin=np.zeros((batch, seq, self.head_dim)),
                         mask=np.ones((batch, seq)))

    def padded_batch(self, grids: Sequence[tuple[int, int]], rope: Union["RopeSettings", Sequence["RopeSettings"]],
                     labels: Sequence[int], tokens: Optional[Sequence["np.ndarray"]] = None,
                     null_class: Optional[int] = None) -> "PaddedBatch":
        """Rows of (h, w) patch grids as one padded batch (docs/runtime-spec.md §6), ready to feed.

        rope: one RopeSettings for every row or one per row (each row's tables are those of its own grid);
        labels: (B,) class ids (``null_class`` for an unconditional row); tokens: per row (h·w, token_dim), e.g.
        ``patchify(noise, p)`` (default zeros); null_class: given, every call runs [cond; uncond] halves for
        classifier-free guidance (2B graph rows, the second half labelled ``null_class``).
        """
        import numpy as np

        from engines.rope import RopeSettings, rope_tables

        grids = tuple((int(h), int(w)) for h, w in grids)
        if not grids or min(min(g) for g in grids) < 1:
            raise ValueError(f"a padded batch needs one or more grids of at least 1x1 patches, got {list(grids)}")
        per_row = [rope] * len(grids) if isinstance(rope, RopeSettings) else list(rope)
        y = np.asarray(labels, dtype=np.int64)
        if len(per_row) != len(grids) or y.shape != (len(grids),):
            raise ValueError(f"{len(grids)} grids need as many labels and RoPE settings, got {y.size} labels and "
                             f"{len(per_row)} settings")
        b, n = len(grids), max(h * w for h, w in grids)
        x = np.zeros((b, n, self.token_dim), dtype=np.float32)
        mask = np.zeros((b, n), dtype=np.float32)
        cos = np.zeros((b, n, self.head_dim), dtype=np.float32)
        sin = np.zeros((b, n, self.head_dim), dtype=np.float32)
        for i, (h, w) in enumerate(grids):
            length = h * w
            if tokens is not None:
                x[i, :length] = tokens[i]
            mask[i, :length] = 1
            cos[i, :length], sin[i, :length] = rope_tables(per_row[i], h, w)
        if null_class is not None:
            y = np.concatenate([y, np.full_like(y, null_class)])
            cos, sin, mask = np.concatenate([cos, cos]), np.concatenate([sin, sin]), np.concatenate([mask, mask])
        return PaddedBatch(self, grids, x, {"y": y, "rope_cos": cos, "rope_sin": sin, "mask": mask},
                           null_class is not None)

    def polygraphy_metadata(self):
        """Polygraphy ``TensorMetadata`` of the inputs (dynamic axes as names), for runners and data loaders."""
        import numpy as np
        from polygraphy.common import TensorMetadata

        meta = TensorMetadata()
        for spec in self.inputs:
            meta.add(spec.name, np.dtype(spec.dtype), list(spec.shape))
        return meta


@dataclass(frozen=True, eq=False)
class PaddedBatch:
    """Rows of different patch grids as one graph batch of N = the longest row's tokens: row i holds its h·w tokens
    (row-major), then zeros; mask 1 on real tokens, 0 on padding; RoPE tables of the row's own grid, zeros on
    padding. Made by :meth:`GraphContract.padded_batch`."""

    contract: GraphContract
    grids: tuple                   # (h, w) patch grid of each row
    x: "np.ndarray"                # (B, N, token_dim) float32: each row's tokens, then zeros
    conditioning: dict             # y, rope_cos, rope_sin, mask: the same in every call; 2B rows when guided
    guided: bool                   # every call runs [cond; uncond] halves

    @property
    def lengths(self) -> list[int]:
        """Real tokens of each row."""
        return [h * w for h, w in self.grids]

    def feed(self, t, x: Optional["np.ndarray"] = None) -> dict:
        """The graph feed for the state ``x`` (B, N, token_dim) (default: the batch's tokens) at times ``t`` (B,),
        in the contract's dtypes; guided: x and t doubled into [cond; uncond] halves."""
        import numpy as np

        x = self.x if x is None else x
        t = np.asarray(t)
        if self.guided:
            x, t = np.concatenate([x, x]), np.concatenate([t, t])
        return self.contract.feed(x=x, t=t, **self.conditioning)

    def unpack(self, x: "np.ndarray", patch_size: int) -> list["np.ndarray"]:
        """Each row's latent (C, h·p, w·p) from a state (B, N, token_dim)."""
        return [unpatchify(x[i, :h * w], h, w, patch_size) for i, (h, w) in enumerate(self.grids)]


# ------------------------------------------------------------------------------------------------------------
# Tokens <-> latents
# ------------------------------------------------------------------------------------------------------------

def patchify(latent: "np.ndarray", p: int) -> "np.ndarray":
    """(C, H, W) -> (H/p * W/p, C*p*p): row-major tokens, channel order (c, p1, p2)."""
    c, h, w = latent.shape
    x = latent.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4)
    return x.reshape((h // p) * (w // p), c * p * p)


def unpatchify(tokens: "np.ndarray", h: int, w: int, p: int) -> "np.ndarray":
    """(h*w, C*p*p) tokens of an h x w patch grid -> (C, h*p, w*p)."""
    import numpy as np

    c = tokens.shape[-1] // (p * p)
    x = tokens.reshape(h, w, c, p, p).transpose(2, 0, 3, 1, 4)
    return np.ascontiguousarray(x.reshape(c, h * p, w * p))


# ------------------------------------------------------------------------------------------------------------
# The VAE decoder
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VaeDecoderContract(_Contract):
    """The VAE decoder graph a package may ship (docs/package-format.md): latent (batch, C, height, width) float32
    -> image (batch, 3, d·height, d·width) float32, RGB in about [-1, 1]; d = ``latent.downsample``."""

    latent_channels: int
    downsample: int

    INPUT_NAMES: ClassVar[tuple] = ("latent",)
    OUTPUT_NAMES: ClassVar[tuple] = ("image",)
    TITLE: ClassVar[str] = "VAE decoder contract"
    IMAGE_CHANNELS: ClassVar[int] = 3
    BATCH: ClassVar[str] = GraphContract.BATCH
    HEIGHT: ClassVar[str] = "height"
    WIDTH: ClassVar[str] = "width"
    MEANINGS: ClassVar[dict] = {
        "latent": "the sampler's latent divided by `latent.scaling_factor` (the sampler's latent itself when "
                  "`vae_decoder.input_is_scaled`)",
        "image": "RGB in about [-1, 1]",
    }

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("latent", "float32", (self.BATCH, self.latent_channels, self.HEIGHT, self.WIDTH)),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        d = self.downsample
        return (TensorSpec("image", "float32", (self.BATCH, self.IMAGE_CHANNELS, f"{d}*{self.HEIGHT}",
                                                f"{d}*{self.WIDTH}")),)

    @property
    def dynamic_axes(self) -> tuple[str, str, str]:
        return (self.BATCH, self.HEIGHT, self.WIDTH)

    def image_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Shape of the image decoded from a (batch, C, height, width) latent."""
        return (batch, self.IMAGE_CHANNELS, self.downsample * height, self.downsample * width)
