"""Is the text path or the UNet what keeps a synthetic base from drawing expressions?

The bases ignore the caption's expression word at every noise level (``--probe-only`` on a base: the clean-image
estimate of a noised "smiling" render reads the same smile whether its caption says "smiling" or "frowning"). This
check gives a base's UNet the expression by another road: one extra conditioning token, a learned linear projection
of the render's 13 true expression factors, appended to the text encoder's output. The UNet (and the projection) are
trained on for ``--steps`` with the base's own diffusion loss (v-prediction, min-SNR-5, 10 % of conditions dropped),
the text encoder and VAE frozen. Then, read by the *evaluation* analysers:

* ``x0``: the clean-image estimate of noised held-out "smile" and "frown" renders at several noise levels, with the
  caption's own expression (word and token) and with the other one swapped in: does the condition change the
  estimate's smile?
* ``samples``: the base sampled (DDIM, guidance 4) from held-out captions with each template's token: smile read.

If the token moves the smile and the word never did, the UNet can draw expressions and the text path is what fails.

    OMP_NUM_THREADS=1 python bench/expression_token_probe.py --run runs/world_timed2 --steps 1000 \\
        --json bench/results/expression_loss/token_probe.json
    OMP_NUM_THREADS=1 python bench/expression_token_probe.py --run runs/world_expr --probe-only --json ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

WORDS = {"smile": "smiling", "frown": "frowning"}
LEVELS = (250, 400, 500, 600, 700, 800)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a `world pretrain` run folder (its base/, data and config)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--probe-only", action="store_true", help="no token: probe the run's base as it is")
    ap.add_argument(
        "--film",
        action="store_true",
        help="give the factors through the UNet's time embedding (diffusers' class embedding, added to it and so "
        "modulating every ResNet block at every resolution) instead of a cross-attention token",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.base_model import load_base_pipeline
    from emojidiff.synthetic.bench import min_snr_v_loss
    from emojidiff.synthetic.dataset import HELDOUT_IDS
    from emojidiff.synthetic.factors import TEMPLATES, Identity, Portrait, Style
    from emojidiff.synthetic.pretrain import PretrainConfig, _run_portraits
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import _to_tensor

    run = Path(a.run)
    pipe = load_base_pipeline(run / "base")
    pipe.set_progress_bar_config(disable=True)
    vae, unet, tok, text = pipe.vae, pipe.unet, pipe.tokenizer, pipe.text_encoder
    width = text.config.hidden_size
    proj = torch.nn.Linear(13, width)
    torch.nn.init.normal_(proj.weight, std=0.02)
    torch.nn.init.zeros_(proj.bias)
    film: dict = {"labels": None}
    if a.film:  # UNet2DConditionModel adds class_embedding(class_labels) to the time embedding when it has one
        proj = torch.nn.Linear(13, unet.time_embedding.linear_2.out_features)
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
        unet.class_embedding = proj
        forward = unet.forward
        unet.forward = lambda *args, **kw: forward(*args, class_labels=film["labels"], **kw)

    def encode(captions: list[str]) -> torch.Tensor:
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return text(ids.input_ids).last_hidden_state

    def condition(h: torch.Tensor, factors: torch.Tensor | None) -> torch.Tensor:
        if a.probe_only:
            return h
        if a.film:
            film["labels"] = factors if factors is not None else h.new_zeros(len(h), 13)
            return h
        token = proj(factors) if factors is not None else h.new_zeros(len(h), width)
        return torch.cat([h, token[:, None]], 1)

    res: dict = {"run": str(run), "probe_only": a.probe_only, "film": a.film, "steps": 0 if a.probe_only else a.steps}
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = sched.alphas_cumprod
    if not a.probe_only:
        cfg = PretrainConfig.from_run(run)
        captions = json.loads((run / "data_captions.json").read_text())["captions"]
        latents = torch.from_numpy(np.load(run / "data_latents.npy"))
        factors = torch.from_numpy(np.stack([p.expression.to_vector() for p in _run_portraits(run, cfg, captions)]))
        empty = encode([""])
        unet.train()
        opt = torch.optim.AdamW([*unet.parameters(), *proj.parameters()], lr=a.lr, weight_decay=1e-2)
        gen = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        losses, t0 = [], time.time()
        for _ in tqdm(range(a.steps), desc="token", mininterval=5):
            idx = rng.choice(len(latents), a.batch, replace=False)
            z0 = latents[idx]
            h = encode([captions[i] for i in idx])
            f = factors[idx]
            drop = torch.rand(len(idx), generator=gen) < 0.1
            h[drop] = empty
            if a.film:
                film["labels"], cond = f * (~drop).float()[:, None], h
            else:
                cond = torch.cat([h, (proj(f) * (~drop).float()[:, None])[:, None]], 1)
            loss = min_snr_v_loss(unet, sched, z0, cond, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        res["train"] = {"seconds": round(time.time() - t0), "loss_first_100": float(np.mean(losses[:100])),
                        "loss_last_100": float(np.mean(losses[-100:]))}  # fmt: skip
        unet.eval()

    ev = SyntheticAnalysers("eval")
    rng = np.random.default_rng(0)
    lo = HELDOUT_IDS[0] + 50_000
    res["x0"], res["samples"] = {}, {}
    with torch.no_grad():
        for name, other in (("smile", "frown"), ("frown", "smile")):
            people = [Portrait(lo + k, Identity.from_id(lo + k), TEMPLATES[name], Style.sample(rng)) for k in range(24)]
            x = _to_tensor(render_array(people, 64)) * 2 - 1
            z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            caps = [p.caption() for p in people]
            own_f = torch.from_numpy(TEMPLATES[name].to_vector()).expand(len(people), -1)
            other_f = torch.from_numpy(TEMPLATES[other].to_vector()).expand(len(people), -1)
            conds = {
                "own": condition(encode(caps), own_f),
                "swapped": condition(encode([c.replace(WORDS[name], WORDS[other]) for c in caps]), other_f),
            }
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
            rows = {}
            for t in LEVELS:
                tt = torch.full((len(z0),), t)
                zt = sched.add_noise(z0, noise, tt)
                ab = alphas[t]
                rows[t] = {}
                for label, cond in conds.items():
                    film["labels"] = {"own": own_f, "swapped": other_f}[label]
                    x0 = ab.sqrt() * zt - (1 - ab).sqrt() * unet(zt, tt, cond).sample
                    img = (vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) / 2
                    rows[t][label] = round(float(ev.expression(img)[:, 0].mean()), 3)
                print(f"{name} t={t}: x0 smile with own condition {rows[t]['own']:+.2f}, "
                      f"swapped {rows[t]['swapped']:+.2f}", flush=True)  # fmt: skip
            res["x0"][name] = rows
            negative = condition(encode([""] * len(people)), None)
            film["labels"] = torch.cat([torch.zeros_like(own_f), own_f])  # classifier-free guidance: negative first
            out = pipe(
                prompt_embeds=conds["own"],
                negative_prompt_embeds=negative,
                num_inference_steps=20,
                guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0),
                output_type="np",
            ).images
            images = _to_tensor(out.astype(np.float32))
            res["samples"][name] = {
                "smile_read": round(float(ev.expression(images)[:, 0].mean()), 3),
                "presence": round(float((ev.presence(images) > 0.5).float().mean()), 3),
                "template_smile": float(TEMPLATES[name].smile),
            }  # fmt: skip
            print(
                f"{name}: samples read smile {res['samples'][name]['smile_read']:+.2f} "
                f"(template {TEMPLATES[name].smile:+.2f}), faces {res['samples'][name]['presence']:.0%}",
                flush=True,
            )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
