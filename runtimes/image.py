"""Decoded VAE output -> uint8 images, and PNG files that record how they were made."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8, rounding as diffusers' image processor does."""
    x = np.clip(image.astype(np.float32) / 2 + 0.5, 0, 1)
    return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike, meta: dict) -> Path:
    """Write HxWx3 uint8 as PNG with `meta` in tEXt chunks; temp file then rename."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for k, v in meta.items():
        info.add_text(f"edgegen:{k}", v if isinstance(v, str) else json.dumps(v))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_png_meta(path: str | os.PathLike) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return {k.removeprefix("edgegen:"): v for k, v in im.text.items() if k.startswith("edgegen:")}
