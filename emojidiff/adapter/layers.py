"""Attention-block naming and the expression-layer map.

We name cross-attention blocks exactly as diffusers' per-block IP-Adapter scales (InstantStyle) do:
``down.block_<i>.<j>``, ``mid`` and ``up.block_<i>.<j>``, where ``j`` indexes the ``Transformer2DModel``
(``attentions.j``) inside UNet block ``i``. The expression-layer map is a list of such keys; turning it into
the dict that ``pipe.set_ip_adapter_scale`` takes is what makes a stock diffusers pipeline inject the
expression branch into exactly the same layers as ours.
"""

from __future__ import annotations

import re

from ..errors import AdapterError

_PROC = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\..*attn2\.processor$")


def block_key(processor_name: str) -> str | None:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor`` -> ``down.block_1.0``.

    Returns None for self-attention processors.
    """
    if not processor_name.endswith("attn2.processor"):
        return None
    if processor_name.startswith("mid_block."):
        return "mid"
    m = _PROC.match(processor_name)
    if m is None:
        return None
    updown = "down" if m.group(1) == "down_blocks" else "up"
    return f"{updown}.block_{m.group(2)}.{m.group(3)}"


def cross_attention_processors(unet) -> list[str]:
    """Names of the UNet's cross-attention processors, in diffusers' iteration order."""
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


def attention_blocks(unet) -> list[str]:
    """Block keys of every block holding cross-attention, in UNet order (down, mid, up)."""
    keys: list[str] = []
    for name in cross_attention_processors(unet):
        k = block_key(name)
        if k is not None and k not in keys:
            keys.append(k)
    return keys


def parse_layer_spec(spec: str | list[str] | None, blocks: list[str]) -> list[str]:
    """Expand a layer spec into block keys.

    ``spec`` is a comma-separated string or a list of items, each one of: ``all``, ``none``, ``down``, ``mid``,
    ``up``, a block (``up.block_0``: all its attention layers) or a single key (``up.block_0.1``).
    """
    if spec is None:
        return list(blocks)
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(blocks)
            continue
        if item == "none":
            continue
        matches = [b for b in blocks if b == item or b.startswith(item + ".")]
        if not matches:
            raise AdapterError(
                f"expression layer '{item}' does not exist in this UNet: its attention blocks are {', '.join(blocks)}"
            )
        chosen.update(matches)
    return [b for b in blocks if b in chosen]


def layer_scale_dict(layers: list[str], blocks: list[str], scale: float) -> dict:
    """The ``set_ip_adapter_scale`` dict giving ``scale`` on ``layers`` and 0 on every other block."""
    out: dict = {}
    per_block: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for b in blocks:
        s = float(scale) if b in layers else 0.0
        if b == "mid":
            out["mid"] = s
            continue
        updown, blk, idx = b.split(".")
        per_block.setdefault((updown, blk), []).append((int(idx), s))
    for (updown, blk), vals in per_block.items():
        out.setdefault(updown, {})[blk] = [s for _, s in sorted(vals)]
    return out
