"""The transformer graph contract: input and output names, dtypes, dynamic axes and feeds — one definition shared
by the exporter, every runtime, validation, the TensorRT builder and the docs (docs/package-format.md).

Only the standard library is imported at module level (numpy lazily).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping

from engines.errors import PackageError

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
