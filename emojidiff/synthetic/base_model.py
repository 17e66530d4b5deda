"""The synthetic world's tiny but genuine Stable Diffusion: component configs, the crop the image encoder is
trained on, and loading the shipped weights.

Sizes were chosen from CPU measurements (see MODEL_CARD.md): 64x64 px images, a VAE with a 4x downsampling to
16x16x8 latents, a UNet with cross-attention at 8x8 and 4x4 only, a 4-layer CLIP text encoder over the caption
vocabulary and a 4-layer CLIP vision encoder on 64 px inputs (8 px patches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 64
LATENT_SIZE = 16
#: 8 latent channels (not SD's 4): at a 4x downsampling of 64 px cartoons, 4 channels blurred eyes and mouths
LATENT_CHANNELS = 8
TEXT_DIM = 64
VISION_SIZE = 64
WEIGHTS_DIR = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"
ANALYSERS_DIR = WEIGHTS_DIR / "analysers"

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        projection_dim=64,
    )


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=4,
        image_size=VISION_SIZE,
        patch_size=8,
        projection_dim=64,
        hidden_act="quick_gelu",
    )


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[32, 64, 64],
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def make_unet(attention_at_full_res: bool = False):
    """The world's UNet. By default cross-attention only at 8x8 and 4x4 latents (the 16x16 level has none, half
    the cost per step); ``attention_at_full_res`` adds it at 16x16 too, as Stable Diffusion has at its top level."""
    from diffusers import UNet2DConditionModel

    top_down, top_up = (
        ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if attention_at_full_res else ("DownBlock2D", "UpBlock2D")
    )
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=(top_down, "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", top_up),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def make_scheduler(zero_snr: bool = True):
    """SD's scaled-linear DDIM schedule; with ``zero_snr`` rescaled to zero terminal SNR, with v-prediction and
    trailing timesteps (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").

    Why: the plain schedule leaves sqrt(alpha_bar_T) = 0.068 of the image in x_T. At 16x16 latents the mean of
    x_T then gives away the flat background's colour, so an epsilon model learns to take the background from
    the starting noise (random at sampling time) and ignores the prompt's colour word (27 % followed). At zero
    terminal SNR the model must predict the image at t = T from the prompt alone."""
    from diffusers import DDIMScheduler

    extra = {}
    if zero_snr:
        extra = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **extra,
    )


def image_processor():
    """The preprocessing of this world's image encoder (CLIP mean/std at 64 px), as a transformers processor."""
    from ..adapter.image_encoder import image_processor as clip_processor

    return clip_processor(VISION_SIZE)


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) floats in [0, 1] at 64 px -> CLIP-normalised (N, 3, 64, 64) tensor."""
    x = (images - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def crop_box(box: tuple[float, float, float, float], scale: float = 1.15) -> tuple[float, float, float, float]:
    """A square around a face box, ``scale`` times its longer side."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * scale / 2
    return cx - half, cy - half, cx + half, cy + half


def ellipse_mask(h: int, w: int, box: tuple[float, float, float, float], soft: float = 1.0) -> np.ndarray:
    """Soft mask of the ellipse inscribed in ``box`` (pixels), shape (h, w), 1 inside."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = max((x1 - x0) / 2, 1e-3), max((y1 - y0) / 2, 1e-3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    k = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    return np.clip((1.0 - k) * min(a, b) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def masked_face_crop(image: np.ndarray, box: tuple[float, float, float, float], out_size: int = VISION_SIZE):
    """Aligned square crop of a face with everything outside the face ellipse set to black.

    ``image`` is (H, W, 3) floats in [0, 1]; returns (out_size, out_size, 3). This is what the expression branch's
    image encoder sees, both in this world's CLIP pretraining and through :class:`SyntheticFaceAnalyzer`.
    """
    from PIL import Image

    h, w = image.shape[:2]
    masked = image * ellipse_mask(h, w, box)[..., None]
    sq = crop_box(box)
    # a face near the border (generated images) gives a square reaching outside the image: pad with black first
    pad = int(np.ceil(max(0.0, -sq[0], -sq[1], sq[2] - w, sq[3] - h)))
    if pad:
        masked = np.pad(masked, ((pad, pad), (pad, pad), (0, 0)))
        sq = tuple(v + pad for v in sq)
    pil = Image.fromarray((np.clip(masked, 0, 1) * 255 + 0.5).astype(np.uint8))
    crop = pil.resize((out_size, out_size), Image.BILINEAR, box=sq)
    return np.asarray(crop, dtype=np.float32) / 255.0


def load_base_pipeline(path: str | Path | None = None, **kwargs):
    """The shipped base model (or one at ``path``) as a plain ``StableDiffusionPipeline``."""
    from diffusers import StableDiffusionPipeline

    from ..errors import ModelMissingError

    path = Path(path) if path is not None else BASE_DIR
    if not (path / "model_index.json").is_file():
        raise ModelMissingError(
            f"no synthetic base model at '{path}': run `emojidiff world pretrain --out DIR` and pass DIR/base"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
