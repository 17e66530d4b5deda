"""Give a trained world UNet cross-attention at the 16x16 latent level too (``make_unet(attention_at_full_res=True)``),
starting as the same function: its weights are copied, and each new transformer's output projection is zeroed, so
the new blocks add nothing until trained. Used to ask whether the glasses' frame, drawn at that level, follows the
word once the text can reach it there (BENCHMARKS.md, "Which words do the bases miss?"):

    python bench/widen_unet_attention.py runs/RUN/checkpoints/unet-3500 runs/WIDE/checkpoints/unet-3500
    emojidiff world pretrain --out runs/WIDE --resume --stages unet,assemble --unet-steps 5000 --threads 2 --sequential
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel

from emojidiff.synthetic.base_model import make_unet


def widen(old: UNet2DConditionModel) -> UNet2DConditionModel:
    if old.config.down_block_types[0] == "CrossAttnDownBlock2D":
        raise SystemExit("this UNet already has cross-attention at its top level")
    wide = make_unet(attention_at_full_res=True)
    missing, unexpected = wide.load_state_dict(old.state_dict(), strict=False)
    top = {"down_blocks.0": wide.down_blocks[0], f"up_blocks.{len(wide.up_blocks) - 1}": wide.up_blocks[-1]}
    new_keys = {f"{name}.{k}" for name, b in top.items() for k in b.state_dict() if k.startswith("attentions.")}
    if unexpected or set(missing) != new_keys:
        raise SystemExit(f"not a world UNet of the expected layout (unexpected {unexpected[:3]})")
    with torch.no_grad():
        for block in top.values():
            for attn in block.attentions:
                attn.proj_out.weight.zero_()
                attn.proj_out.bias.zero_()
    return wide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a UNet folder (save_pretrained), e.g. a run's checkpoints/unet-3500")
    ap.add_argument("dst", help="where to save the widened UNet")
    a = ap.parse_args()
    old = UNet2DConditionModel.from_pretrained(a.src).eval()
    wide = widen(old).eval()
    x, t, c = torch.randn(2, 8, 16, 16), torch.tensor([10, 900]), torch.randn(2, 77, old.config.cross_attention_dim)
    with torch.no_grad():
        gap = (wide(x, t, c).sample - old(x, t, c).sample).abs().max().item()
    wide.save_pretrained(a.dst)
    print(f"saved {a.dst}; largest difference from {a.src} on random inputs: {gap:.2e}")


if __name__ == "__main__":
    main()
