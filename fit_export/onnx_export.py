"""torch -> ONNX: the FiT transformer under the package graph contract, and the optional VAE decoder.

Exporter: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export + onnxscript), opset 18.
docs/export.md records why; the short version: the TorchScript exporter is deprecated, torch.export states the
dynamic axes as symbols (a shape it would have to bake in is an export error, not a silent constant), and opset 18
has every op we need while staying inside what the TensorRT 10 ONNX parser and ONNX Runtime support.
"""
from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
import torch.nn as nn

from engines.contract import GraphContract, VaeDecoderContract
from engines.errors import PackageError
from fit.model import FiT
# FP32_OPS: ops computed in float32 in fp16 graphs (the one rule of fit_export.typed, used by the fp16 export too).
from fit_export.typed import FP32_OPS, save_model

DEFAULT_OPSET = 18
EXPORTER = f"torch.onnx.export(dynamo=True) torch {torch.__version__.split('+')[0]}"
_COMPLEX = {ir.DataType.COMPLEX64, ir.DataType.COMPLEX128}


class ExportError(RuntimeError):
    """The model or its ONNX graph cannot be exported under the package contract."""


def read_onnx(path, load_external_data: bool = False):
    """The ``onnx.ModelProto`` of an ONNX file (external weights left on disk unless asked for). A file that is
    not a readable ONNX model (truncated, or not ONNX at all) is a PackageError naming it, in one line."""
    import onnx

    path = Path(path)
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except OSError:
        raise
    except Exception as e:  # protobuf's DecodeError and onnx's own errors for damaged files
        text = str(e).strip()
        raise PackageError(f"{path} is not a readable ONNX model ({text.splitlines()[0] if text else type(e).__name__}); "
                           f"re-export the package") from None


#################################################################################
#                          The transformer graph contract                       #
#################################################################################

class TransformerGraph(nn.Module):
    """FiT with the package signature: (x, t, y, rope_cos, rope_sin, mask) -> v, tokens always (B, N, C)."""

    def __init__(self, model: FiT):
        super().__init__()
        self.model = model

    def forward(self, x, t, y, rope_cos, rope_sin, mask):
        channels_first = not self.model.use_sit
        out = self.model(x.transpose(1, 2) if channels_first else x, t, y, mask=mask,
                         rope_cos=rope_cos, rope_sin=rope_sin)
        return out.transpose(1, 2) if channels_first else out


def example_inputs(model: FiT, precision: str = "fp32") -> tuple[torch.Tensor, ...]:
    """Trace inputs: batch 2, two grids of different sizes padded to one sequence (the padding path is traced).

    Sizes differ from anything the tests run, so a shape baked into the graph shows up as a failure.
    """
    cfg = model.config
    batch = graph_contract(model, precision).padded_batch([(3, 5), (2, 4)], cfg.rope_settings(),   # 15 and 8 tokens
                                                          [1, cfg.null_class])
    x = torch.randn(*batch.x.shape, generator=torch.Generator().manual_seed(0)).numpy()
    feed = batch.feed([0.25, 0.75], x)
    return tuple(torch.from_numpy(feed[name]) for name in GraphContract.INPUT_NAMES)


def graph_contract(model: FiT, precision: str = "fp32") -> GraphContract:
    """The package graph contract of a model (engines.contract)."""
    cfg = model.config
    return GraphContract(cfg.token_dim, cfg.patch_size ** 2 * cfg.out_channels, cfg.head_dim, precision)


def _dynamic_shapes(contract: GraphContract | VaeDecoderContract):
    """torch.export dynamic shapes of a contract's inputs: one Dim per named axis."""
    dims = {name: torch.export.Dim(name) for name in contract.dynamic_axes}
    axes = contract.axes()
    return {name: {i: dims[d] for i, d in axes[name].items()} for name in contract.INPUT_NAMES}


def _quiet_export(module, args, **kwargs):
    """torch.onnx.export with its progress chatter and known-harmless warnings silenced; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(module, args, dynamo=True, verbose=False, report=False, **kwargs)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_transformer(model: FiT, path, precision: str = "fp32", opset: int = DEFAULT_OPSET) -> dict:
    """Write the transformer graph to ``path`` (+ ``<name>.data`` when over 2 GB). Returns export facts.

    precision: ``fp32``, or ``fp16`` (weights and activations in float16; LayerNorm and softmax in float32;
    ``t``, ``rope_cos``, ``rope_sin`` and ``mask`` stay float32 inputs).
    """
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"unknown precision {precision!r}; choose fp32 or fp16")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # The ONNX initializers share storage with the module until saved: convert a copy, never the caller's model.
    same_dtype = all(p.dtype == dtype for p in model.parameters())
    graph_module = TransformerGraph(model if same_dtype else copy.deepcopy(model).to(dtype))
    was_training = model.training
    graph_module.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            contract = graph_contract(model, precision)
            program = _quiet_export(graph_module, example_inputs(model, precision),
                                    input_names=list(contract.INPUT_NAMES), output_names=list(contract.OUTPUT_NAMES),
                                    dynamic_shapes=_dynamic_shapes(contract), opset_version=opset, optimize=True)
    except Exception as e:  # torch.export raises many types; the first line names the construct
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    finally:
        model.train(was_training)
    onnx_model = program.model
    if precision == "fp16":
        keep_ops_in_fp32(onnx_model.graph, FP32_OPS)
    check_graph(onnx_model)
    external = save_model(onnx_model, path)
    return {"exporter": EXPORTER, "opset": opset, "precision": precision,
            "seconds": round(time.perf_counter() - start, 3), "external_data": external}


#################################################################################
#                                  Graph passes                                 #
#################################################################################

def keep_ops_in_fp32(graph: ir.Graph, op_types) -> int:
    """Run ``op_types`` nodes in float32 inside a float16 graph: Cast their float16 inputs up and outputs down.

    Returns the number of nodes changed.
    """
    changed = 0
    for node in list(graph):
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        touched = False
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype == ir.DataType.FLOAT16:
                up = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT})
                up.outputs[0].dtype, up.outputs[0].shape = ir.DataType.FLOAT, value.shape
                graph.insert_before(node, up)
                node.replace_input_with(index, up.outputs[0])
                touched = True
        for value in node.outputs:
            if value.dtype != ir.DataType.FLOAT16:
                continue
            down = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT16})
            down.outputs[0].dtype, down.outputs[0].shape = ir.DataType.FLOAT16, value.shape
            for user, index in list(value.uses()):
                if user is not down:
                    user.replace_input_with(index, down.outputs[0])
            if value.is_graph_output():
                raise ExportError(f"{node.op_type} output {value.name} is a graph output; cannot keep it in fp32")
            value.dtype = ir.DataType.FLOAT
            graph.insert_after(node, down)
            touched = True
        changed += touched
    return changed


def check_graph(onnx_model: ir.Model) -> None:
    """The contract's static part: standard ONNX ops only, no complex tensors, ``batch``/``seq`` symbolic."""
    graph = onnx_model.graph
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in graph if n.domain not in ("", "ai.onnx")})
    if foreign or onnx_model.functions:
        raise ExportError(f"graph uses non-standard ops or local functions: {', '.join(foreign) or 'functions'}")
    values = [v for n in graph for v in n.outputs] + list(graph.inputs) + list(graph.initializers.values())
    complex_values = sorted({v.name for v in values if v.dtype in _COMPLEX})
    if complex_values:
        raise ExportError(f"graph has complex tensors ({', '.join(complex_values[:3])}); TensorRT cannot run them")
    try:
        GraphContract.check_names((v.name for v in graph.inputs), (v.name for v in graph.outputs), "exported graph")
    except PackageError as err:
        raise ExportError(str(err)) from None
    axes = GraphContract(0, 0, 0).axes()
    for value in list(graph.inputs) + list(graph.outputs):
        dims = list(value.shape)
        if any(isinstance(dims[i], int) for i in axes[value.name]):
            raise ExportError(f"{value.name} has a fixed batch/seq dimension {dims}; the export lost the dynamic axes")


#################################################################################
#                                  VAE decoder                                  #
#################################################################################

class VaeDecoderGraph(nn.Module):
    """VAE latent (B, C, h, w) -> image (B, 3, d*h, d*w) in about [-1, 1] (engines.contract.VaeDecoderContract).

    The input is the VAE's own latent: the host divides the transformer's latent by ``latent.scaling_factor``
    first (as diffusers pipelines do), so the graph is the plain decoder.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent).sample


def load_vae(vae_dir):
    """A diffusers AutoencoderKL from a local directory (``config.json`` + weights), in eval mode."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:  # pragma: no cover - diffusers is part of the export extra
        raise ExportError("exporting a VAE needs diffusers: pip install 'fit-toolkit[export]'") from e
    directory = Path(vae_dir)
    if not (directory / "config.json").is_file():
        raise ExportError(f"VAE directory {directory} has no config.json (expected a diffusers AutoencoderKL "
                          f"saved with save_pretrained, e.g. sd-vae-ft-ema)")
    try:
        vae = AutoencoderKL.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise ExportError(f"cannot load the VAE from {directory}: {str(e).strip().splitlines()[0]}") from None
    if vae.config.out_channels != VaeDecoderContract.IMAGE_CHANNELS:
        raise ExportError(f"the VAE in {directory} decodes {vae.config.out_channels}-channel images; a package's "
                          f"decoder gives RGB ({VaeDecoderContract.IMAGE_CHANNELS} channels)")
    return vae.eval().float()


def vae_downsample(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_contract(vae) -> VaeDecoderContract:
    """The package's VAE decoder contract for a diffusers AutoencoderKL."""
    return VaeDecoderContract(vae.config.latent_channels, vae_downsample(vae))


def export_vae_decoder(vae, path, opset: int = DEFAULT_OPSET) -> dict:
    """Write ``vae_decoder.onnx`` (fp32) with dynamic batch, height and width. Returns its manifest entry."""
    contract = vae_contract(vae)
    graph_module = VaeDecoderGraph(vae).eval()
    latent = torch.randn(2, contract.latent_channels, 6, 10, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            program = _quiet_export(graph_module, (latent,), input_names=list(contract.INPUT_NAMES),
                                    output_names=list(contract.OUTPUT_NAMES), dynamic_shapes=_dynamic_shapes(contract),
                                    opset_version=opset, optimize=True)
    except Exception as e:
        raise ExportError(f"VAE decoder export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    save_model(program.model, path)
    return {"file": Path(path).name, "opset": opset, "precision": "fp32", "exporter": EXPORTER,
            "scaling_factor": float(vae.config.scaling_factor), "input_is_scaled": False,
            "downsample": contract.downsample, "inputs": [spec.to_dict() for spec in contract.inputs],
            "outputs": [spec.to_dict() for spec in contract.outputs]}


def run_vae_reference(vae, latent: np.ndarray) -> np.ndarray:
    """The diffusers decoder on a VAE latent, the reference the ONNX decoder is checked against."""
    with torch.no_grad():
        return VaeDecoderGraph(vae)(torch.from_numpy(latent)).numpy()
