"""Does a synthetic base take its background colour from the prompt or from the starting noise?

Samples the same held-out captions (non-monochrome palettes) three ways and reads the background colour with the
evaluation style classifier:

* ``plain``: ordinary Gaussian starting latents;
* ``zero_mean``: the same latents with each channel's spatial mean removed;
* ``true_mean``: zero-mean latents plus the per-channel mean the *prompt's own render* would have at the first
  sampled timestep (sqrt(alpha_bar_t) x its latent mean), i.e. the noise hints the right colour.

If ``true_mean`` follows the prompt far better than ``plain``, the UNet reads the background from the noise's mean
(the non-zero terminal SNR of SD's schedule), not from the prompt. Run on the previous base (epsilon prediction,
``git archive d4b91d4 emojidiff/synthetic/weights/base``) and on the shipped one:

    python bench/base_noise_mean.py --base runs/world/base --json bench/results/base_noise_mean_v1.json
    python bench/base_noise_mean.py --json bench/results/base_noise_mean_v2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emojidiff.synthetic.base_model import ANALYSERS_DIR, load_base_pipeline
from emojidiff.synthetic.dataset import HELDOUT_IDS, sample_portraits
from emojidiff.synthetic.render import render_array
from emojidiff.synthetic.style import load_style_net, style_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="base model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=64, help="non-monochrome prompts")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args()
    torch.set_num_threads(1)

    pipe = load_base_pipeline(a.base)
    style = load_style_net(ANALYSERS_DIR / "eval" / "style.safetensors")
    portraits = [p for p in sample_portraits(4 * a.n, 777, HELDOUT_IDS) if p.style.palette != "monochrome"][: a.n]
    prompts = [p.caption() for p in portraits]
    truth = np.array([style_labels(p.style)["background"] for p in portraits])
    renders = torch.from_numpy(np.ascontiguousarray(render_array(portraits, 64))).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        z = pipe.vae.encode(renders * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    zero = noise - noise.mean((2, 3), keepdim=True)
    pipe.scheduler.set_timesteps(a.steps)
    first = int(pipe.scheduler.timesteps[0])
    a_t = pipe.scheduler.alphas_cumprod[first]
    # x_t = sqrt(a) x0 + sqrt(1 - a) eps with only x0's per-channel mean kept (DDIM's init_noise_sigma is 1)
    hinted = (1 - a_t).sqrt() * zero + a_t.sqrt() * z.mean((2, 3), keepdim=True)

    def followed(latents: torch.Tensor) -> float:
        out = pipe(
            prompts, num_inference_steps=a.steps, guidance_scale=a.guidance, latents=latents, output_type="np"
        ).images
        with torch.no_grad():
            pred = style(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous())["background"].argmax(1).numpy()
        return float((pred == truth).mean())

    res = {
        "base": a.base or "shipped",
        "prediction_type": pipe.scheduler.config.prediction_type,
        "n_prompts": len(prompts),
        "first_timestep": first,
        "sqrt_alpha_bar_first": float(a_t.sqrt()),
        "background_followed": {"plain": followed(noise), "zero_mean": followed(zero), "true_mean": followed(hinted)},
    }
    text = json.dumps(res, indent=2)
    if a.json:
        Path(a.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
