"""Contrast alignment: the identity branch's attention output with and without expression control.

At every identity-attended cross-attention layer the identity branch adds ``Attn(q, K_id, V_id)``. ``K_id``/``V_id``
come from the identity tokens alone; expression control changes it only through the queries ``q`` (the hidden states
that earlier expression injections have moved). :class:`IdentityAttentionCapture` recomputes that term from forward
hooks on ``attn.to_q`` and the identity projections ``to_k_ip[0]``/``to_v_ip[0]`` (the diffusers processor itself
is untouched), so one UNet pass yields the identity representation at every chosen layer.

:func:`alignment_loss` pulls the representation under expression control toward the identity-only one computed on
the same noisy latent (stop-gradient) and, InfoNCE-style, away from the identity-only representations of the other
identities in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..adapter.layers import block_key, cross_attention_processors
from ..errors import InputError


class IdentityAttentionCapture:
    """Forward hooks recording ``Attn(q, K_id, V_id)`` (B, N, C) per chosen cross-attention layer.

    The hooks only keep references to ``q``, ``K_id`` and ``V_id``; the attention is computed when the
    :meth:`recording` block ends, outside the UNet. That keeps the UNet's gradient checkpointing valid (a checkpointed
    block must save the same tensors when it is recomputed in the backward pass, where the hooks are idle).
    """

    def __init__(self, unet, layers: list[str] | None = None, branch: int = 0):
        modules = dict(unet.named_modules())
        names = [n for n in cross_attention_processors(unet) if layers is None or block_key(n) in layers]
        if layers is not None:
            missing = sorted(set(layers) - {block_key(n) for n in names})
            if missing:
                raise InputError(f"ica.align_layers: no such attention block(s) {', '.join(missing)}")
        self.names = names
        self.active = False
        self._seen: dict[str, dict[str, torch.Tensor]] = {}
        self._heads: dict[str, int] = {}
        self._handles = []
        for name in names:
            attn = modules[name[: -len(".processor")]]
            proc = attn.processor
            self._heads[name] = attn.heads
            self._handles.append(attn.to_q.register_forward_hook(self._store("q", name)))
            self._handles.append(proc.to_k_ip[branch].register_forward_hook(self._store("k", name)))
            self._handles.append(proc.to_v_ip[branch].register_forward_hook(self._store("v", name)))

    def _store(self, what: str, name: str):
        def hook(module, inputs, output):
            if self.active:
                self._seen.setdefault(name, {})[what] = output

        return hook

    def _attention(self, name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, c = q.shape
        heads = self._heads[name]
        split = lambda x: x.reshape(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, c)

    @contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        """Capture during the block; the yielded dict holds the outputs once the block has ended."""
        out: dict[str, torch.Tensor] = {}
        self._seen = {}
        self.active = True
        try:
            yield out
        finally:
            self.active = False
            seen, self._seen = self._seen, {}
        for name, d in seen.items():
            if {"q", "k", "v"} <= set(d):  # a branch at scale 0 is skipped by diffusers: nothing to align there
                out[name] = self._attention(name, d["q"], d["k"], d["v"])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextmanager
def expression_branch_off(unet) -> Iterator[None]:
    """Scale 0 on the expression branch of every IP-Adapter processor for the block (identity-only UNet passes)."""
    saved = []
    for proc in unet.attn_processors.values():
        scale = getattr(proc, "scale", None)
        if isinstance(scale, list) and len(scale) > 1:
            saved.append((proc, scale))
            proc.scale = [scale[0], 0.0, *scale[2:]]
    try:
        yield
    finally:
        for proc, scale in saved:
            proc.scale = scale


def alignment_loss(
    with_exp: dict[str, torch.Tensor],
    id_only: dict[str, torch.Tensor],
    mask: torch.Tensor,
    same_identity: torch.Tensor,
    temperature: float = 0.1,
    contrast_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Mean over layers of ``pull + contrast_weight * InfoNCE`` on the samples in ``mask``.

    ``pull = 1 - cos(r_exp, sg(r_id))`` per sample (representations flattened over tokens and channels); InfoNCE
    treats ``sg(r_id)`` of the same sample as the positive and those of the other samples as negatives, except
    samples of the same identity (``same_identity``, a (B, B) bool matrix), which are left out. With one usable sample
    the InfoNCE term is 0.
    """
    idx = mask.nonzero().flatten()
    layers = [n for n in with_exp if n in id_only]
    if idx.numel() == 0 or not layers:
        return torch.zeros((), device=mask.device), {"align_pull": float("nan"), "align_nce": float("nan")}
    same = same_identity[idx][:, idx].to(mask.device)
    eye = torch.eye(idx.numel(), dtype=torch.bool, device=mask.device)
    labels = torch.arange(idx.numel(), device=mask.device)
    pulls, nces = [], []
    for n in layers:
        z = F.normalize(with_exp[n][idx].flatten(1).float(), dim=-1)
        z0 = F.normalize(id_only[n][idx].flatten(1).float(), dim=-1).detach()
        pulls.append((1 - (z * z0).sum(-1)).mean())
        logits = (z @ z0.T / temperature).masked_fill(same & ~eye, float("-inf"))
        nces.append(F.cross_entropy(logits, labels))
    pull, nce = torch.stack(pulls).mean(), torch.stack(nces).mean()
    return pull + contrast_weight * nce, {"align_pull": pull.item(), "align_nce": nce.item()}
