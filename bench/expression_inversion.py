"""Can the frozen base UNet be steered to draw an expression at all? Textual inversion of expression words.

For each word (``smiling``, ``frowning`` by default) the input embedding of its token is re-learned with the UNet,
VAE and the rest of the text encoder frozen, on renders of that named template (jittered, random training people and
styles) with their captions, by the base's own diffusion loss (Gal et al. 2022). The base is then sampled from
held-out captions with those words, before and after, and the evaluation analyser reads the expression. If the
re-learned words are drawn, the UNet can draw the expression when its conditioning asks clearly, and what fails is the
text encoder's representation of the word (BENCHMARKS.md, "Can the base draw expressions?"); if not, the UNet itself
cannot be steered to it through cross-attention.

    OMP_NUM_THREADS=1 python bench/expression_inversion.py \
        --json bench/results/base_expression/inversion_shipped_v2.json

Hand-written: a few lines of token-embedding optimisation for a diagnostic (diffusers' textual-inversion example
is a training script for new pseudo-words, not a library call).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="a base folder (default: the shipped synthetic base)")
    ap.add_argument(
        "--template", action="append", help="named templates whose words to re-learn (default: smile, frown)"
    )
    ap.add_argument("--n-train", type=int, default=512, help="renders per word")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--n-eval", type=int, default=32, help="held-out samples per word, before and after")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--part-weight", type=float, default=0.0, help="loss weight on eyes and mouth, as world pretrain's")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from diffusers import DDPMScheduler

    from emojidiff.eval.synthetic_cases import jittered
    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.base_model import load_base_pipeline
    from emojidiff.synthetic.bench import mean_expression_readings, sample_base_images
    from emojidiff.synthetic.dataset import HELDOUT_IDS, TRAIN_IDS
    from emojidiff.synthetic.factors import (
        TEMPLATE_WORDS,
        TEMPLATES,
        Identity,
        Portrait,
        Style,
        nearest_template,
    )
    from emojidiff.synthetic.pretrain import part_weight_maps
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import _to_tensor

    names = a.template or ["smile", "frown"]
    pipe = load_base_pipeline(a.base)
    pipe.set_progress_bar_config(disable=True)
    tok, text, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    for m in (text, unet, vae):
        m.requires_grad_(False).eval()
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ev = SyntheticAnalysers("eval")
    emb_layer = text.get_input_embeddings()
    deltas: dict[int, torch.Tensor] = {}

    def add_deltas(_module, inputs, output):
        ids = inputs[0]
        for tid, d in deltas.items():
            output = output + (ids == tid).unsqueeze(-1).to(output.dtype) * d
        return output

    emb_layer.register_forward_hook(add_deltas)

    def portraits(name: str, n: int, ids: tuple[int, int], seed: int) -> list:
        rng = np.random.default_rng(seed)
        out = []
        while len(out) < n:
            iid = int(rng.integers(*ids))
            p = Portrait(iid, Identity.from_id(iid), jittered(TEMPLATES[name], rng, 0.05), Style.sample(rng))
            if nearest_template(p.expression) == name:  # its caption says the word
                out.append(p)
        return out

    def read(held: list) -> dict:
        x = sample_base_images(pipe, [p.caption() for p in held], a.guidance, steps=20)
        return mean_expression_readings(ev, _to_tensor(x))

    held = {n: portraits(n, a.n_eval, HELDOUT_IDS, 100 + k) for k, n in enumerate(names)}
    res: dict = {"base": a.base or "synthetic (shipped)", "steps": a.steps, "lr": a.lr, "part_weight": a.part_weight}
    res["words"] = {}
    for n in names:
        res["words"][n] = {"word": TEMPLATE_WORDS[n], "true": TEMPLATES[n].to_dict(), "before": read(held[n])}

    for k, n in enumerate(names):
        ids = tok(TEMPLATE_WORDS[n], add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise SystemExit(f"'{TEMPLATE_WORDS[n]}' is {len(ids)} tokens; this check re-learns one-token words")
        delta = torch.zeros(emb_layer.weight.shape[1], requires_grad=True)
        deltas[ids[0]] = delta
        train = portraits(n, a.n_train, TRAIN_IDS, k)
        x = _to_tensor(render_array(train, 64)) * 2 - 1
        with torch.no_grad():
            z = torch.cat([vae.encode(b).latent_dist.mean for b in x.split(64)]) * vae.config.scaling_factor
        wmap = part_weight_maps(train, z.shape[-1], a.part_weight)
        enc = tok([p.caption() for p in train], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids  # fmt: skip
        opt = torch.optim.Adam([delta], lr=a.lr)
        gen = torch.Generator().manual_seed(k)
        t0, losses = time.time(), []
        for _ in range(a.steps):
            idx = torch.randint(0, len(train), (a.batch,), generator=gen)
            z0 = z[idx]
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,), generator=gen)
            pred = unet(sched.add_noise(z0, noise, t), t, text(enc[idx]).last_hidden_state).sample
            target = sched.get_velocity(z0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
            loss = (F.mse_loss(pred, target, reduction="none") * wmap[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        delta.requires_grad_(False)
        res["words"][n].update(
            train_seconds=round(time.time() - t0, 1),
            loss_first_last_50=[round(float(np.mean(losses[:50])), 4), round(float(np.mean(losses[-50:])), 4)],
            delta_norm=round(float(delta.norm()), 3),
            embedding_norm=round(float(emb_layer.weight[ids[0]].norm()), 3),
        )
    for n in names:
        res["words"][n]["after"] = read(held[n])

    shown = ("smile", "mouth_open", "eye_open_l", "brow_raise_l", "brow_tilt_l", "cheek_raise", "pout")
    for w in res["words"].values():
        for what in ("true", "before", "after"):
            print(f"{w['word']:10s} {what:6s} " + " ".join(f"{f[:10]}={w[what][f]:+.2f}" for f in shown))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
