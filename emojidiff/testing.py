"""Tiny random-weight diffusers/transformers components built from configs, never from a hub.

Used by the test suite and the smoke benchmarks: they run exactly the code users run, at a size a CPU
handles in milliseconds. The configs follow diffusers' own test-suite tiny models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: identity-embedding size used by the test adapters (small, so tests stay fast)
TEST_ID_DIM = 16


#: The real SD1.5 / SDXL UNet configs (as in their model repos), for meta-device checks and benchmarks.
SD15_UNET_CONFIG = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=64,
)  # fmt: skip
SDXL_UNET_CONFIG = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    in_channels=4, out_channels=4, layers_per_block=2, projection_class_embeddings_input_dim=2816,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, norm_num_groups=32, sample_size=128,
)  # fmt: skip


def random_image(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8))


def random_embedding(seed: int, dim: int = TEST_ID_DIM) -> np.ndarray:
    return np.random.RandomState(seed).randn(dim).astype(np.float32)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (the base alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiny_tokenizer():
    """A CLIP BPE tokenizer over byte-level characters plus a few merges (no vocabulary download)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = [("p", "o"), ("po", "r"), ("t", "r"), ("a", "i"), ("s", "m"), ("i", "l")]
    vocab_list += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(
        vocab=vocab, merges=merges, unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77
    )


def _text_config(tokenizer, projection_dim: int = 32, hidden_size: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=projection_dim,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )


def tiny_sd_pipeline(seed: int = 0):
    """A StableDiffusionPipeline (SD1.5 layout) with ~2 M random parameters."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    tok = tiny_tokenizer()
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tok)),
        tokenizer=tok,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline (SDXL layout: two text encoders, text_time conditioning)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * addition_time_embed_dim + text_encoder_2 projection_dim
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    tok = tiny_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tok)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok)),
        tokenizer=tok,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
        image_encoder=None,
        feature_extractor=None,
    )


def tiny_image_encoder(seed: int = 0):
    """A CLIPVisionModelWithProjection at 32x32 pixels (65 patch tokens of width 32)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        intermediate_size=37,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def retrained_copy(base: str | Path, out: str | Path) -> Path:
    """A copy of the saved pipeline ``base`` whose UNet differs by one bias: another version of a same-shaped base."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = Path(shutil.copytree(base, out))
    unet_file = out / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(unet_file))
    sd["conv_in.bias"] = sd["conv_in.bias"] + 0.01
    save_file(sd, str(unet_file))
    return out
