"""Loading user images and embeddings with one-line errors instead of deep tracebacks.

:func:`load_image` takes whatever users bring (phone photos with EXIF rotation, CMYK JPEGs, 16-bit PNGs,
images with alpha, grayscale scans, animated GIFs, huge camera files) to 8-bit RGB, and turns every unusable
file (missing, a directory, empty, truncated, corrupt, not an image, too large) into one
:class:`~emojidiff.errors.InputError` sentence naming the file and what is wrong.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

#: Images with more pixels than this are never decoded at full size: JPEGs are decoded at a reduced scale
#: (1/2, 1/4 or 1/8, without ever holding the full image), other formats are refused (bounded memory).
MAX_PIXELS = 64_000_000
#: Images are downscaled so that their longer side is at most this (faces need far less).
MAX_SIDE = 4096

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# PIL's own decompression-bomb guard is global; we replace it by MAX_PIXELS/draft while opening.
_OPEN_LOCK = threading.Lock()

_MAGIC = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<!DOCTYPE html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"\x7fELF", "an executable"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"ftypheic", "a HEIC photo (convert it to JPEG or PNG)"),
    (b"ftypheix", "a HEIC photo (convert it to JPEG or PNG)"),
    (b"ftypmif1", "a HEIF photo (convert it to JPEG or PNG)"),
    (b"ftypavif", "an AVIF image (convert it to JPEG or PNG)"),
]


def _sniff(p: Path) -> str | None:
    """A short description of what a non-image file looks like, from its first bytes."""
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    for magic, desc in _MAGIC:
        if head.startswith(magic) or (magic.startswith(b"ftyp") and head[4:12] == magic):
            return desc
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return None


def _check_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} '{p}' does not exist")
    if p.is_dir():
        raise InputError(f"{what} '{p}' is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} '{p}' cannot be read (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{what} '{p}' is an empty (zero-byte) file")
    return p


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode (alpha, palette, CMYK, 16-bit, 32-bit, float, grayscale) to 8-bit RGB.

    Transparent pixels are composited over ``background``. 16-bit images are scaled by 1/257 (full range kept).
    """
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0  # PIL gives "I" for some 16-bit TIFF/PNG files
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def load_image(path: str | os.PathLike, what: str = "image", notes: list[str] | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, honouring EXIF orientation, taking the first frame of animations.

    Memory stays bounded: an image over :data:`MAX_PIXELS` is decoded at a reduced scale when its format allows
    it (JPEG) and refused otherwise, before any pixel is decoded; the result's longer side is at most
    :data:`MAX_SIDE`. Raises :class:`InputError` with one sentence for a missing path, a directory, an empty,
    truncated, corrupt or non-image file, or an image too large to decode safely. What was done to the image
    (first frame taken, downscaled, alpha flattened, rotated, converted) is appended to ``notes`` when given.
    """
    p = _check_path(path, what)
    notes = notes if notes is not None else []
    try:
        with _OPEN_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # our own limit (MAX_PIXELS) applies below, before decoding
            try:
                img = Image.open(p)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        try:
            out = _decode(img, p, what, notes)
            if out is img:  # detach the pixels from the file before closing it
                out = img.copy()
        finally:
            img.close()
    except InputError:
        raise
    except UnidentifiedImageError:
        kind = _sniff(p)
        suffix = f" (it looks like {kind})" if kind else ""
        raise InputError(f"{what} '{p}' is not an image file PIL can read{suffix}") from None
    except (Image.DecompressionBombError, MemoryError):
        raise InputError(f"{what} '{p}' is too large to decode safely: downscale it first") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{what} '{p}' is corrupt or truncated ({detail})") from None
    return out


def _decode(img: Image.Image, p: Path, what: str, notes: list[str]) -> Image.Image:
    w, h = img.size
    fmt = img.format or "image"
    if w <= 0 or h <= 0:
        raise InputError(f"{what} '{p}' has no pixels ({w}x{h})")
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    if n_frames > 1:
        img.seek(0)  # first frame of an animated GIF/WebP/APNG or a multi-page TIFF
        notes.append(f"used the first of {n_frames} frames")
    if w * h > MAX_PIXELS:
        if fmt == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale straight from the DCT: the full image is never held.
            scale = next((s for s in (2, 4, 8) if max(w, h) / s <= MAX_SIDE), 8)
            img.draft(img.mode if img.mode in ("L", "RGB", "CMYK") else "RGB", (-(-w // scale), -(-h // scale)))
        if img.size[0] * img.size[1] > MAX_PIXELS:
            raise InputError(
                f"{what} '{p}' is too large ({w}x{h} = {w * h / 1e6:.0f} megapixels; {fmt} files over "
                f"{MAX_PIXELS / 1e6:.0f} megapixels are refused to bound memory): downscale it first"
            )
        notes.append(f"decoded at reduced scale {img.size[0]}x{img.size[1]} from {w}x{h}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.load()
    exif_note = _orientation(img)
    if exif_note:  # exif_transpose copies even when there is nothing to do: call it only when needed
        try:
            img = ImageOps.exif_transpose(img)
            notes.append(exif_note)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unusable
            notes.append("ignored an unreadable EXIF orientation")
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        notes.append("flattened transparency onto white")
    elif mode == "CMYK":
        notes.append("converted CMYK to RGB")
    elif mode.startswith("I;16") or mode == "I":
        notes.append("converted 16-bit to 8-bit")
    elif mode in ("L", "1"):
        notes.append("grayscale image: expanded to RGB")
    img = to_rgb(img)
    if max(img.size) > MAX_SIDE:
        before = img.size
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {before[0]}x{before[1]} to {img.size[0]}x{img.size[1]}")
    return img


def _orientation(img: Image.Image) -> str | None:
    try:
        o = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001
        return None
    if o and o != 1:
        return f"applied EXIF orientation {o}"
    return None


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
