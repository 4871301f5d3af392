"""Input images and masks -> VAE-ready arrays (as diffusers' VaeImageProcessor prepares them),
decoded VAE output -> uint8 images, and PNG files that record how they were made."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import EdgegenError


def load_image(image, what: str = "image"):
    """A PIL image from a file path, a PIL image, or a uint8 (or bool) HxW / HxWx3 / HxWx4 array."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        a = image.astype(np.uint8) * 255 if image.dtype == bool else image
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise EdgegenError(f"{what}: an array must be uint8 HxW, HxWx3 or HxWx4, got {image.dtype} {image.shape}")
        return Image.fromarray(a)
    if not isinstance(image, (str, os.PathLike)):
        raise EdgegenError(f"{what} must be a file path, a PIL image or a uint8 array, got {type(image).__name__}")
    try:
        with Image.open(image) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise EdgegenError(f"{what} {image}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise EdgegenError(f"{what} {image}: not a readable image ({type(e).__name__}: {str(e)[:120]})") from None


def image_to_array(image, height: int, width: int) -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1]: VaeImageProcessor.preprocess (PIL lanczos resize to the
    target size, /255, 2x - 1). Other modes than RGB become RGB first (diffusers would fail on them)."""
    from PIL import Image

    im = image if image.mode == "RGB" else image.convert("RGB")
    im = im.resize((width, height), resample=Image.LANCZOS)
    x = np.asarray(im).astype(np.float32) / 255.0
    return (2.0 * x - 1.0).transpose(2, 0, 1)[None]


def mask_to_array(mask, height: int, width: int) -> np.ndarray:
    """(1, 1, H, W) float32 of 0 (keep) and 1 (repaint): the inpainting pipelines' mask processor
    (resize in the mask's own mode, then grayscale, /255, >= 0.5)."""
    from PIL import Image

    m = mask.resize((width, height), resample=Image.LANCZOS).convert("L")
    x = np.asarray(m).astype(np.float32) / 255.0
    return (x >= 0.5).astype(np.float32)[None, None]


def nearest_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """NCHW resized as torch.nn.functional.interpolate(x, size=...) does by default ('nearest':
    source index floor(i * in / out), in float32)."""
    def index(n_in, n_out):
        i = np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)).astype(np.int64)
        return np.minimum(i, n_in - 1)

    return x[:, :, index(x.shape[2], height)][:, :, :, index(x.shape[3], width)]


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
