"""Loading user images and embeddings with one-line errors instead of deep tracebacks."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

#: Images larger than this many pixels are refused before decoding (bounded memory).
MAX_PIXELS = 64_000_000
#: Images are downscaled so that their longer side is at most this (faces need far less).
MAX_SIDE = 4096

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _check_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} '{p}' does not exist")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a directory, not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{what} '{p}' is an empty (zero-byte) file")
    return p


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode (alpha, palette, CMYK, 16-bit, grayscale) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image file as 8-bit RGB, honouring EXIF orientation, taking the first frame of animations.

    Raises :class:`InputError` with one sentence for a missing path, a directory, an empty, truncated,
    corrupt or non-image file, or an image too large to decode safely.
    """
    p = _check_path(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            w, h = img.size
            if w * h > MAX_PIXELS:
                # JPEG can decode at reduced scale without ever holding the full image.
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))
                if img.size[0] * img.size[1] > MAX_PIXELS:
                    raise InputError(
                        f"{what} '{p}' is too large ({w}x{h} pixels; at most {MAX_PIXELS:,} are accepted): "
                        "downscale it first"
                    )
            img.seek(0)  # first frame of an animated GIF/WebP
            img.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise InputError(f"{what} '{p}' is not an image file PIL can read") from None
        raise InputError(f"{what} '{p}' is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what} '{p}' is corrupt or truncated ({e})") from None
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


def load_embedding(path: str | os.PathLike, dim: int, what: str = "identity embedding") -> np.ndarray:
    """Load a ``.npy`` file holding one embedding ``(dim,)``/``(1, dim)`` or several ``(n, dim)``.

    Returns a float32 array of shape ``(n, dim)``. Pickled objects are never loaded.
    """
    p = _check_path(path, what)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{what} '{p}' is not a readable .npy array ({e})") from None
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} '{p}' holds {arr.dtype} values, not numbers")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise InputError(f"{what} '{p}' has shape {tuple(arr.shape)}, but this adapter expects ({dim},) or (n, {dim})")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} '{p}' contains NaN or infinite values")
    if (np.linalg.norm(arr, axis=1) == 0).any():
        raise InputError(f"{what} '{p}' contains an all-zero embedding")
    return arr


def is_embedding_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".npy"
