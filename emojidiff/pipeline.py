"""EmojiDiffPipeline: a portrait of a given person wearing a given expression, on any SD/SDXL diffusers pipeline.

The wrapper adds nothing to the denoising loop: it loads the E-Adapter with diffusers' own ``load_ip_adapter``,
turns identity photos/embeddings and the expression template into the two branches' inputs (with a null input per
branch for classifier-free guidance), applies the expression-layer map as per-block IP-Adapter scales, and calls
the diffusers pipeline. A stock diffusers pipeline given the same embeddings and scales makes the same image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .adapter.config import EmojiDiffConfig, UNetSignature
from .adapter.core import (
    load_adapter_into,
    meta_unet,
    read_unet_config,
    resolve_adapter,
    resolve_base,
    warn_if_other_base_version,
)
from .adapter.image_encoder import encode_pixels, image_processor, preprocess
from .adapter.layers import layer_scale_dict
from .adapter.step_cache import StepCachedProjection, install_step_cache
from .encode import LRU, FaceEncoder, IdentityInput, TemplateInput, image_key
from .errors import AdapterError, InputError
from .faces import get_face_analyzer
from .faces.base import FaceAnalyzer
from .io import load_image


def _dtype_kwarg(dtype: torch.dtype | None) -> dict:
    """diffusers >= 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns)."""
    if dtype is None:
        return {}
    import diffusers.utils.deprecation_utils as dep

    return {"dtype": dtype} if hasattr(dep, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else {"torch_dtype": dtype}


class EmojiDiffPipeline:
    """Wraps a diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` with an E-Adapter.

    Build it with :meth:`from_pretrained` (base model id/folder + adapter folder or bundled name) or attach an
    adapter to a pipeline you already have with :meth:`from_pipe`. Any attribute not defined here (``scheduler``,
    ``enable_model_cpu_offload``, ``load_lora_weights``, ...) is the underlying diffusers pipeline's.
    """

    def __init__(self, pipe, adapter: str | Path, face_backend: str | FaceAnalyzer | None = None, base_name=None):
        self.__dict__["pipe"] = pipe  # set first: __getattr__ forwards to it
        self.adapter_path = resolve_adapter(adapter)
        self.config, self.image_encoder = load_adapter_into(pipe, adapter, base_name or "the given pipeline")
        install_step_cache(pipe.unet)
        self.face_analyzer = get_face_analyzer(face_backend or self.config.face_backend)
        self.processor = image_processor(self.image_encoder.config.image_size)
        self.faces = FaceEncoder(self.face_analyzer, self.config.identity_dim)
        self._template_cache = LRU()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        base: str | Path | None = None,
        adapter: str | Path = None,
        face_backend: str | FaceAnalyzer | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> EmojiDiffPipeline:
        """Load ``base`` (hub id or local folder; default: the base the adapter was made from) plus ``adapter``.

        The adapter is checked against the base's UNet config before any weight is loaded.
        """
        from diffusers import AutoPipelineForText2Image

        if adapter is None:
            raise AdapterError("no adapter given: pass adapter=FOLDER (make one with `emojidiff init-adapter`)")
        adapter_dir = resolve_adapter(adapter)
        cfg = EmojiDiffConfig.load(adapter_dir)
        if base is None:
            if not cfg.base_model:
                raise AdapterError(f"adapter '{adapter}' does not record its base model: pass a base model")
            base = cfg.base_model
        base = str(base)
        # Compatibility first, from configs only: no tensor is read for a mismatched pair.
        theirs = UNetSignature.of(meta_unet(read_unet_config(base)))
        ours = cfg.signature
        if ours != theirs:
            raise AdapterError(
                f"adapter '{adapter}' was made for {ours.describe()}, but base '{base}' is {theirs.describe()}"
            )
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(resolve_base(base), **_dtype_kwarg(torch_dtype), **kwargs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AdapterError(f"base model '{base}' could not be loaded ({first})") from None
        warn_if_other_base_version(cfg, adapter, base)
        if hasattr(pipe, "safety_checker") and pipe.safety_checker is None:
            pipe.register_to_config(requires_safety_checker=False)
        return cls(pipe, adapter, face_backend=face_backend, base_name=base)

    @classmethod
    def from_pipe(cls, pipe, adapter: str | Path, face_backend: str | FaceAnalyzer | None = None) -> EmojiDiffPipeline:
        """Attach an adapter to an already-built diffusers SD/SDXL pipeline (LoRAs, schedulers etc. are kept)."""
        return cls(pipe, adapter, face_backend=face_backend)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["pipe"], name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("scheduler",):
            setattr(self.pipe, name, value)
        else:
            super().__setattr__(name, value)

    def to(self, *args, **kwargs) -> EmojiDiffPipeline:
        self.pipe.to(*args, **kwargs)
        self.image_encoder.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    # ------------------------------------------------------------------ encoding
    def encode_identity(self, identity: IdentityInput | Sequence[IdentityInput], face_index: int | None = None):
        """One identity embedding ``(identity_dim,)`` from images, ``.npy`` files or arrays, averaged + renormalised."""
        return self.faces.identity(identity, face_index)

    def expression_crop(self, template: TemplateInput, face_index: int | None = None) -> Image.Image:
        """The masked, aligned face crop of the template that the expression branch sees."""
        return self.faces.crop(template, face_index)

    def encode_expression(
        self, template: TemplateInput | torch.Tensor, face_index: int | None = None, is_crop: bool = False
    ) -> torch.Tensor:
        """Image-encoder patch features of the template's face crop, shape ``(tokens, hidden)``.

        A tensor is taken as precomputed features and returned as is (after a shape check). ``is_crop``: the image is
        already the face crop (from :meth:`expression_crop`), so no face detection runs again.
        """
        if isinstance(template, torch.Tensor):
            feats = template.reshape(-1, template.shape[-1])
            if feats.shape[-1] != self.config.expression_embed_dim:
                raise InputError(
                    f"expression features have width {feats.shape[-1]}, but this adapter expects "
                    f"{self.config.expression_embed_dim}"
                )
            return feats
        img = load_image(template, "expression template") if isinstance(template, (str, Path)) else template
        key = (image_key(img), self.face_analyzer.name, face_index, is_crop)
        return self._template_cache.get_or(
            key, lambda: self._features(img if is_crop else self.expression_crop(img, face_index))
        )

    def _features(self, crop: Image.Image) -> torch.Tensor:
        enc = self.image_encoder
        px = preprocess(self.processor, crop, enc.device, enc.dtype)
        return encode_pixels(enc, px, self.config.image_encoder_layer)[0]

    def null_expression(self) -> torch.Tensor:
        """The expression branch's null input: features of an all-zero (mean-grey) image, as diffusers uses."""

        def compute():
            enc = self.image_encoder
            size = enc.config.image_size
            px = torch.zeros(1, 3, size, size, device=enc.device, dtype=enc.dtype)
            return encode_pixels(enc, px, self.config.image_encoder_layer)[0]

        return self._template_cache.get_or(("null",), compute)

    def ip_adapter_embeds(
        self, identity: np.ndarray | None, expression: torch.Tensor | None, do_cfg: bool
    ) -> list[torch.Tensor]:
        """The ``ip_adapter_image_embeds`` list diffusers takes: ``[identity, expression]``, negatives first.

        One row per input: diffusers' pipelines tile it to every prompt and image themselves.
        """
        dtype, device = self.dtype, self.pipe.unet.device
        id_pos = (
            torch.zeros(1, 1, self.config.identity_dim) if identity is None else torch.as_tensor(identity)[None, None]
        )
        null = self.null_expression()
        exp_pos = (null if expression is None else expression)[None, None]
        id_pos = id_pos.to(device=device, dtype=dtype)
        exp_pos = exp_pos.to(device=device, dtype=dtype)
        if not do_cfg:
            return [id_pos, exp_pos]
        exp_neg = null[None, None].to(device=device, dtype=dtype)
        return [torch.cat([torch.zeros_like(id_pos), id_pos]), torch.cat([exp_neg, exp_pos])]

    def set_scales(self, id_scale: float, exp_scale: float) -> None:
        """Identity branch on every cross-attention layer; expression branch only on the expression-layer map."""
        cfg = self.config
        self.pipe.set_ip_adapter_scale(
            [float(id_scale), layer_scale_dict(cfg.expression_layers, cfg.attention_blocks, exp_scale)]
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "a portrait photo of a person",
        identity: IdentityInput | Sequence[IdentityInput] | None = None,
        expression: TemplateInput | torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        id_scale: float = 1.0,
        exp_scale: float = 1.0,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        num_images: int = 1,
        height: int | None = None,
        width: int | None = None,
        face_index: int | None = None,
        template_is_crop: bool = False,
        **kwargs: Any,
    ):
        """Generate portraits. Returns the diffusers output (``.images`` is a list of PIL images).

        ``identity``: image(s), ``.npy`` path(s) or embedding array(s) of one person; ``expression``: the template
        image (any person, any style) or precomputed features; ``template_is_crop``: it is already the face crop. Either
        may be None to switch that branch off.
        Extra keyword arguments go to the diffusers pipeline (e.g. ``callback_on_step_end``, ``output_type``).
        """
        id_emb = None if identity is None else self.encode_identity(identity, face_index)
        exp_feats = None if expression is None else self.encode_expression(expression, face_index, template_is_crop)
        self.set_scales(id_scale if id_emb is not None else 0.0, exp_scale if exp_feats is not None else 0.0)
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
        do_cfg = guidance_scale > 1 and self.pipe.unet.config.get("time_cond_proj_dim") is None
        try:
            return self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                ip_adapter_image_embeds=self.ip_adapter_embeds(id_emb, exp_feats, do_cfg),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                num_images_per_prompt=num_images,
                height=height,
                width=width,
                **kwargs,
            )
        finally:  # the projections were computed once for all steps; free them
            if isinstance(self.pipe.unet.encoder_hid_proj, StepCachedProjection):
                self.pipe.unet.encoder_hid_proj.clear()
