"""Control: does a small UNet learn commanded expressions in pixel space, where the base's latent UNet does not?

Issue 3's starting point reported a small UNet at 32 x 32 *pixels*, conditioned directly on the factors, drawing the
commanded expressions after ~700 steps. The synthetic bases (16 x 16 x 8 VAE latents of 64-px renders) do not use an
expression condition at all, whatever road it takes (``bench/expression_token_probe.py``). This control trains the
base's UNet architecture (``make_unet``, from nothing) in one of two spaces, conditioned *only* on the render's 13
true expression factors (one cross-attention token, a learned linear projection; 10 % of tokens dropped for
guidance), with the base's loss and schedule (v-prediction, zero terminal SNR, min-SNR-5):

* ``pixel``: renders at 32 x 32 pixels, 3 channels;
* ``latent``: the 16 x 16 x 8 latents of a run's VAE (its cached ``data_latents.npy``) of 64-px renders.

Then it samples (DDIM, 20 steps, guidance 4) 24 images per named template (smile, frown, surprise, wink_left) and
reads them with the *evaluation* analysers (32-px images upsampled to 64), next to the same reading of that space's
own training images of the template (renders at 32 px upsampled / VAE round trips), the ceiling.

    OMP_NUM_THREADS=2 python bench/expression_space_control.py --space pixel --steps 1000 \\
        --json bench/results/expression_loss/space_control_pixel.json
    OMP_NUM_THREADS=2 python bench/expression_space_control.py --space latent --run runs/world_timed2 --steps 1000 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TEMPLATES_SHOWN = ("smile", "frown", "surprise", "wink_left")
READ = ("smile", "mouth_open", "eye_open_l", "eye_open_r", "brow_raise_l")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", choices=("pixel", "latent"), required=True)
    ap.add_argument("--run", default="runs/world_timed2", help="for --space latent: a `world pretrain` run folder")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-images", type=int, default=8000, help="training renders (pixel space)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from tqdm.auto import tqdm

    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.base_model import TEXT_DIM, make_scheduler, make_unet
    from emojidiff.synthetic.bench import min_snr_v_loss
    from emojidiff.synthetic.dataset import HELDOUT_IDS, TRAIN_IDS, sample_portraits
    from emojidiff.synthetic.factors import EXPRESSION_NAMES, TEMPLATES, Identity, Portrait, Style
    from emojidiff.synthetic.pretrain import PretrainConfig, _run_portraits
    from emojidiff.synthetic.render import render_array

    torch.manual_seed(0)
    vae = None
    if a.space == "pixel":
        portraits = sample_portraits(a.n_images, 1000, TRAIN_IDS)
        data = torch.from_numpy(render_array(portraits, 32)).permute(0, 3, 1, 2) * 2 - 1
        template = make_unet()
        unet = UNet2DConditionModel.from_config({**template.config, "sample_size": 32, "in_channels": 3,
                                                 "out_channels": 3})  # fmt: skip
    else:
        run = Path(a.run)
        captions = json.loads((run / "data_captions.json").read_text())["captions"]
        cfg = PretrainConfig.from_run(run)
        portraits = _run_portraits(run, cfg, captions)
        data = torch.from_numpy(np.load(run / "data_latents.npy"))
        vae = AutoencoderKL.from_pretrained(run / "vae").eval()
        unet = make_unet()
    factors = torch.from_numpy(np.stack([p.expression.to_vector() for p in portraits]))
    proj = torch.nn.Linear(13, TEXT_DIM)
    sched = DDPMScheduler.from_config(make_scheduler(True).config)
    opt = torch.optim.AdamW([*unet.parameters(), *proj.parameters()], lr=a.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses, t0 = [], time.time()
    unet.train()

    def token(f: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return (proj(f) * keep.float()[:, None])[:, None]

    for step in tqdm(range(a.steps), desc=a.space, mininterval=5):
        lr = a.lr * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(len(data), a.batch, replace=False)
        x0 = data[idx]
        keep = torch.rand(len(idx), generator=gen) >= 0.1
        loss = min_snr_v_loss(unet, sched, x0, token(factors[idx], keep), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    res: dict = {
        "space": a.space,
        "steps": a.steps,
        "batch": a.batch,
        "seconds": round(time.time() - t0),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "loss_first_100": float(np.mean(losses[:100])),
        "loss_last_100": float(np.mean(losses[-100:])),
        "templates": {},
    }
    unet.eval()
    ev = SyntheticAnalysers("eval")
    ddim = DDIMScheduler.from_config(make_scheduler(True).config)
    lo = HELDOUT_IDS[0] + 50_000
    rng = np.random.default_rng(0)

    def to_images(x: torch.Tensor) -> torch.Tensor:
        if vae is not None:
            x = vae.decode(x / vae.config.scaling_factor).sample
        x = ((x.clamp(-1, 1) + 1) / 2).float()
        return F.interpolate(x, size=64, mode="bilinear", align_corners=False) if x.shape[-1] != 64 else x

    def read(images: torch.Tensor) -> dict:
        e = ev.expression(images)
        out = {n: round(float(e[:, EXPRESSION_NAMES.index(n)].mean()), 3) for n in READ}
        out["faces"] = round(float((ev.presence(images) > 0.5).float().mean()), 3)
        return out

    with torch.no_grad():
        for name in TEMPLATES_SHOWN:
            people = [Portrait(lo + k, Identity.from_id(lo + k), TEMPLATES[name], Style.sample(rng)) for k in range(24)]
            if a.space == "pixel":
                own = torch.from_numpy(render_array(people, 32)).permute(0, 3, 1, 2) * 2 - 1
            else:
                x = torch.from_numpy(render_array(people, 64)).permute(0, 3, 1, 2) * 2 - 1
                own = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            f = torch.from_numpy(TEMPLATES[name].to_vector()).expand(len(people), -1)
            keep = torch.arange(2 * len(f)) >= len(f)  # classifier-free guidance: the dropped token first
            cond = token(torch.cat([f, f]), keep)
            ddim.set_timesteps(20)
            z = torch.randn(own.shape, generator=torch.Generator().manual_seed(1))
            for t in ddim.timesteps:
                v_u, v_c = unet(torch.cat([z, z]), t, cond).sample.chunk(2)
                z = ddim.step(v_u + 4.0 * (v_c - v_u), t, z).prev_sample
            res["templates"][name] = {
                "true": {n: float(getattr(TEMPLATES[name], n)) for n in READ},
                "training_space_ceiling": read(to_images(own)),
                "samples": read(to_images(z)),
            }
            print(f"{name:10s} ceiling {res['templates'][name]['training_space_ceiling']}\n{'':10s} samples "
                  f"{res['templates'][name]['samples']}", flush=True)  # fmt: skip
    print(f"loss {res['loss_first_100']:.4f} -> {res['loss_last_100']:.4f} in {res['seconds']} s")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
