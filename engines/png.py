"""Images out: uint8 RGB arrays to PIL images and PNG files whose text chunks carry the generation parameters.

The one PNG encoder of the toolkit (docs/runtime-spec.md, PNG metadata); the JavaScript twin is js/src/png.js.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def to_pil(image: np.ndarray, parameters: Optional[dict] = None):
    """uint8 (H, W, 3) array -> PIL image carrying ``parameters`` in ``info`` (written by :func:`save_png`)."""
    from PIL import Image

    pil = Image.fromarray(image, "RGB")
    if parameters is not None:
        pil.info["parameters"] = json.dumps(parameters, sort_keys=True)
    return pil


def tile_images(images: Sequence[np.ndarray], columns: Optional[int] = None, gap: int = 2) -> np.ndarray:
    """Tile uint8 images (H, W, 3) of any sizes into one, row by row, ``gap`` black pixels apart."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    row_heights = [max(im.shape[0] for im in row) for row in rows]
    col_widths = [max(row[c].shape[1] for row in rows if c < len(row)) for c in range(columns)]
    out = np.zeros((sum(row_heights) + gap * (len(rows) - 1), sum(col_widths) + gap * (columns - 1), 3), np.uint8)
    top = 0
    for row, row_h in zip(rows, row_heights):
        left = 0
        for c, im in enumerate(row):
            out[top:top + im.shape[0], left:left + im.shape[1]] = im
            left += col_widths[c] + gap
        top += row_h + gap
    return out


def png_bytes(image, parameters: Optional[dict] = None) -> bytes:
    """The PNG file of a uint8 (H, W, 3) array or PIL image, with ``parameters`` as text chunks: ``parameters``
    (all of them as JSON) and one ``fit:<name>`` entry per parameter. The one PNG encoder of the toolkit:
    :func:`save_png` and the server (fit_serve) write these bytes."""
    import io

    from PIL import Image, PngImagePlugin

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image), "RGB")
    if parameters is None and "parameters" in getattr(pil, "info", {}):
        parameters = json.loads(pil.info["parameters"])
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", json.dumps(parameters, sort_keys=True))
        for key, value in parameters.items():
            info.add_text(f"fit:{key}", "" if value is None else str(value))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image, path, parameters: Optional[dict] = None) -> Path:
    """Write :func:`png_bytes` of ``image`` and ``parameters`` to ``path`` atomically
    (:func:`engines.atomic.atomic_write`)."""
    from engines.atomic import atomic_write

    return atomic_write(Path(path), png_bytes(image, parameters))


def read_parameters(path) -> dict:
    """The generation parameters stored in a PNG written by :func:`save_png`."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["parameters"])


__all__ = ["to_pil", "tile_images", "png_bytes", "save_png", "read_parameters"]
