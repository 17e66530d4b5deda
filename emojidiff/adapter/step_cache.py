"""Compute the branch projections once per generation instead of once per denoising step.

The identity MLP and the expression resampler depend only on the embeddings, which stay the same through all
denoising steps, yet diffusers' UNet reruns them at every step. This subclass of diffusers' own
``MultiIPAdapterImageProjection`` (same submodules, same state-dict keys) returns the previous output when it is
called again with the very same embedding tensors, unmodified, with gradients off. Outputs are identical; only
repeated work is skipped. Training (gradients on) always recomputes.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import MultiIPAdapterImageProjection


class StepCachedProjection(MultiIPAdapterImageProjection):
    def __init__(self, layers):
        super().__init__(list(layers))
        self._key: list[tuple[torch.Tensor, int]] | None = None
        self._out: list[torch.Tensor] | None = None

    def forward(self, image_embeds):
        if torch.is_grad_enabled() or not isinstance(image_embeds, list):
            return super().forward(image_embeds)
        key = self._key
        # Holding references to the inputs means no other tensor can take their place (or address) while cached.
        if key is not None and len(key) == len(image_embeds):
            if all(t is e and t._version == v for (t, v), e in zip(key, image_embeds, strict=True)):
                return self._out
        out = super().forward(image_embeds)
        self._key, self._out = [(e, e._version) for e in image_embeds], out
        return out

    def clear(self) -> None:
        """Drop the cached inputs and outputs (call after a generation to free them)."""
        self._key = self._out = None


def install_step_cache(unet) -> None:
    """Swap the UNet's IP-Adapter projection for the caching one (the same layer objects; no copy)."""
    proj = unet.encoder_hid_proj
    if isinstance(proj, MultiIPAdapterImageProjection) and not isinstance(proj, StepCachedProjection):
        unet.encoder_hid_proj = StepCachedProjection(proj.image_projection_layers)
