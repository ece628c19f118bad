"""The model package manifest — the one definition of its schema, shared by the exporter and every runtime.

A package is a directory with ``manifest.json`` and the files it lists (``transformer.onnx``, optionally
``transformer.onnx.data``, ``vae_decoder.onnx``, ``weights.safetensors``, TensorRT engines). docs/package-format.md
describes the format in prose; this module is what both sides run. It imports only the standard library so the
torch-free runtime can use it.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

FORMAT = "fit-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# The transformer graph contract (docs/package-format.md). Shapes use the symbolic names "batch" and "seq".
INPUT_NAMES = ("x", "t", "y", "rope_cos", "rope_sin", "mask")
OUTPUT_NAMES = ("v",)
DYNAMIC_AXES = ("batch", "seq")
PRECISIONS = ("fp32", "fp16")
LATENT_SPACES = ("sd-vae", "pixel")

_REQUIRED = {
    "format": str, "format_version": int, "name": str, "created": str, "model": dict, "latent": dict,
    "transformer": dict, "guidance": dict, "sampler": dict, "rope": dict, "sizes": dict, "files": dict,
}
_REQUIRED_MODEL = ("config", "patch_size", "latent_channels", "token_dim", "out_token_dim", "head_dim",
                   "num_classes", "null_class")
_REQUIRED_TRANSFORMER = ("file", "precision", "opset", "inputs", "outputs")
_REQUIRED_ROPE = ("theta", "head_dim", "method", "decouple", "ori_max_pe_len", "online", "methods")
_REQUIRED_SIZES = ("train_token_budget", "max_tokens", "default", "buckets")


class PackageError(ValueError):
    """A model package is missing, unreadable, of an unknown version or does not match its hashes."""


# ------------------------------------------------------------------------------------------------------------
# Hashing
# ------------------------------------------------------------------------------------------------------------

def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (packages hold multi-GB weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory, names: Iterable[str]) -> dict:
    """``files`` section for ``names`` (paths relative to ``directory``): sha256 and size of each."""
    directory = Path(directory)
    return {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in sorted(names)}


def verify_files(directory, manifest: dict, names: Optional[Iterable[str]] = None) -> None:
    """Check size and sha256 of the listed files (all of ``manifest['files']`` when ``names`` is None)."""
    directory = Path(directory)
    files = manifest["files"]
    for name in sorted(files if names is None else names):
        if name not in files:
            raise PackageError(f"package {directory}: {name} is not listed in {MANIFEST_NAME}")
        entry, path = files[name], directory / name
        if not path.is_file():
            raise PackageError(f"package {directory}: {name} is missing; re-export the package")
        if path.stat().st_size != entry["bytes"]:
            raise PackageError(f"package {directory}: {name} has {path.stat().st_size} bytes, the manifest says "
                               f"{entry['bytes']} (truncated or replaced); re-export the package")
        if sha256_file(path) != entry["sha256"]:
            raise PackageError(f"package {directory}: sha256 of {name} does not match the manifest "
                               f"(corrupt or replaced); re-export the package")


# ------------------------------------------------------------------------------------------------------------
# Building and checking the dict
# ------------------------------------------------------------------------------------------------------------

def tensor_spec(name: str, dtype: str, shape: list) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def transformer_io(token_dim: int, out_token_dim: int, head_dim: int, precision: str) -> tuple[list, list]:
    """(inputs, outputs) specs of the transformer graph contract for a precision."""
    if precision not in PRECISIONS:
        raise PackageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    act = "float16" if precision == "fp16" else "float32"
    inputs = [
        tensor_spec("x", act, ["batch", "seq", token_dim]),
        tensor_spec("t", "float32", ["batch"]),
        tensor_spec("y", "int64", ["batch"]),
        tensor_spec("rope_cos", "float32", ["batch", "seq", head_dim]),
        tensor_spec("rope_sin", "float32", ["batch", "seq", head_dim]),
        tensor_spec("mask", "float32", ["batch", "seq"]),
    ]
    return inputs, [tensor_spec("v", act, ["batch", "seq", out_token_dim])]


def build_manifest(*, name: str, model: dict, latent: dict, transformer: dict, guidance: dict, sampler: dict,
                   rope: dict, sizes: dict, files: dict, vae_decoder: Optional[dict] = None,
                   reference: Optional[dict] = None, created: Optional[str] = None) -> dict:
    """Assemble and validate a manifest; ``created`` defaults to now (UTC, ISO 8601)."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model,
        "latent": latent,
        "transformer": transformer,
        "vae_decoder": vae_decoder,
        "guidance": guidance,
        "sampler": sampler,
        "rope": rope,
        "sizes": sizes,
        "reference": reference,
        "files": files,
    }
    return validate_manifest(doc)


def validate_manifest(doc, source: str = MANIFEST_NAME) -> dict:
    """Check the structure of a manifest dict; returns it unchanged or raises :class:`PackageError`."""
    if not isinstance(doc, dict):
        raise PackageError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise PackageError(f"{source}: not a FiT model package (format {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise PackageError(f"{source}: package format version {version!r} is not supported (this code reads "
                           f"version {FORMAT_VERSION}); re-export the package or update fit-toolkit")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind):
            raise PackageError(f"{source}: field {key!r} is missing or not a {kind.__name__}")
    for section, keys in (("model", _REQUIRED_MODEL), ("transformer", _REQUIRED_TRANSFORMER),
                          ("rope", _REQUIRED_ROPE), ("sizes", _REQUIRED_SIZES)):
        missing = [k for k in keys if k not in doc[section]]
        if missing:
            raise PackageError(f"{source}: {section} lacks {', '.join(missing)}")
    transformer = doc["transformer"]
    if transformer["precision"] not in PRECISIONS:
        raise PackageError(f"{source}: unknown transformer precision {transformer['precision']!r}")
    names = tuple(spec.get("name") for spec in transformer["inputs"])
    if names != INPUT_NAMES or tuple(spec.get("name") for spec in transformer["outputs"]) != OUTPUT_NAMES:
        raise PackageError(f"{source}: transformer inputs/outputs {names} do not follow the graph contract "
                           f"{INPUT_NAMES} -> {OUTPUT_NAMES}")
    if doc["latent"].get("space") not in LATENT_SPACES:
        raise PackageError(f"{source}: latent.space must be one of {', '.join(LATENT_SPACES)}")
    referenced = [transformer["file"]] + ([doc["vae_decoder"]["file"]] if doc.get("vae_decoder") else [])
    referenced += [name for name in [transformer.get("external_data"), (doc.get("reference") or {}).get("weights")]
                   if name]
    for name in referenced:
        if name not in doc["files"]:
            raise PackageError(f"{source}: {name} is referenced but not listed under files")
    for name, entry in doc["files"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int)):
            raise PackageError(f"{source}: files[{name!r}] needs sha256 and bytes")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PackageError(f"{source}: file name {name!r} must be relative to the package")
    return doc


def write_manifest(directory, doc: dict) -> Path:
    """Validate ``doc`` and write it as ``manifest.json`` in ``directory``."""
    validate_manifest(doc)
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(directory, verify: bool = True) -> dict:
    """Read and check ``directory/manifest.json``; with ``verify`` also the size and sha256 of every file.

    Raises :class:`PackageError` with a one-line message on any problem.
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
    validate_manifest(doc, str(path))
    if verify:
        verify_files(directory, doc)
    return doc
