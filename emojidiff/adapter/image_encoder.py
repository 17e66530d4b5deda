"""The frozen image encoder of the expression branch (any ``CLIPVisionModelWithProjection``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from PIL import Image

from ..errors import AdapterError
from .config import IMAGE_ENCODER_DIR, EmojiDiffConfig

#: The CLIP ViT-H/14 that IP-Adapter Plus (SD1.5 and SDXL "vit-h") was trained with.
DEFAULT_IMAGE_ENCODER = {"path": "h94/IP-Adapter", "subfolder": "models/image_encoder"}


def image_processor(image_size: int):
    """CLIP preprocessing at the encoder's resolution (resize shortest side, centre crop, CLIP mean/std)."""
    try:  # transformers >= 5 without torchvision: use the PIL backend directly (same numbers, no warning)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def encoder_reference(path_or_id: str | None, subfolder: str | None = None) -> dict:
    if path_or_id is None:
        return dict(DEFAULT_IMAGE_ENCODER)
    return {"path": str(path_or_id), "subfolder": subfolder}


def read_encoder_config(ref: dict, adapter_dir: str | Path | None = None):
    """The encoder's ``CLIPVisionConfig`` (no weights), from the adapter folder, a local folder, or the hub."""
    from transformers import CLIPVisionConfig

    location = _locate(ref, adapter_dir)
    try:
        cfg = CLIPVisionConfig.from_pretrained(location, subfolder=ref.get("subfolder") or "")
    except Exception as e:
        raise AdapterError(
            f"image encoder '{_describe(ref)}' could not be read ({_first_line(e)}); pass --image-encoder with a "
            "local CLIPVisionModelWithProjection folder"
        ) from None
    return cfg


def load_image_encoder(cfg: EmojiDiffConfig, adapter_dir: str | Path, dtype: torch.dtype | None = None):
    from transformers import CLIPVisionModelWithProjection

    ref = cfg.image_encoder
    location = _locate(ref, adapter_dir)
    try:
        enc = CLIPVisionModelWithProjection.from_pretrained(location, subfolder=ref.get("subfolder") or "")
    except Exception as e:
        raise AdapterError(f"image encoder '{_describe(ref)}' could not be loaded ({_first_line(e)})") from None
    if enc.config.hidden_size != cfg.expression_embed_dim:
        raise AdapterError(
            f"image encoder '{_describe(ref)}' gives {enc.config.hidden_size}-d features, but the adapter's expression "
            f"branch was made for {cfg.expression_embed_dim}-d"
        )
    enc.requires_grad_(False).eval()
    return enc.to(dtype) if dtype is not None else enc


def copy_encoder_into(ref: dict, adapter_dir: str | Path) -> dict:
    """Copy a local encoder folder into ``adapter_dir/image_encoder`` so the adapter is self-contained."""
    src = Path(ref["path"], ref.get("subfolder") or "")
    if not src.is_dir():
        return ref  # a hub id: keep the reference
    dst = Path(adapter_dir, IMAGE_ENCODER_DIR)
    if src.resolve() != dst.resolve():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    return {"path": IMAGE_ENCODER_DIR, "subfolder": None}


@torch.no_grad()
def encode_pixels(encoder, pixel_values: torch.Tensor, layer: int = -2) -> torch.Tensor:
    """Patch features fed to the resampler: ``hidden_states[layer]``, shape (B, tokens, hidden)."""
    return encoder(pixel_values, output_hidden_states=True).hidden_states[layer]


def preprocess(processor, image: Image.Image, device, dtype) -> torch.Tensor:
    return processor(images=image, return_tensors="pt").pixel_values.to(device=device, dtype=dtype)


def _locate(ref: dict, adapter_dir: str | Path | None) -> str:
    path = ref["path"]
    if adapter_dir is not None and Path(adapter_dir, path).is_dir():
        return str(Path(adapter_dir, path))
    return path


def _describe(ref: dict) -> str:
    return ref["path"] + (f"/{ref['subfolder']}" if ref.get("subfolder") else "")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
