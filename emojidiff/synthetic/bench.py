"""Measured quality of the synthetic world's shipped models (the figures in BENCHMARKS.md come from here).

* ``analysers``: identity verification ROC-AUC on held-out people, expression MAE per factor (fraction of its
  range), ratio MAE, landmark error and presence rates, for both analyser sets, plus the style classifier;
* ``base``: prompts made from held-out captions, sampled with the base model; the *evaluation* analysers score
  face presence and whether the expression word was followed (the nearest named template of the measured
  expression is the caption's: ``expression_word_followed``, next to the same on VAE round trips of the captions' own
  renders, the ceiling, and the share of the commonest word, what a base that ignores the word scores), and the
  style classifier scores whether the prompt's style words were followed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base_model import ANALYSERS_DIR, BASE_DIR, load_base_pipeline
from .dataset import HELDOUT_IDS, sample_portraits
from .style import STYLE_HEADS, load_style_net, style_labels


def bench_render(n: int = 2048, size: int = 64, repeats: int = 3) -> dict:
    """Portraits per second on the calling thread (numpy; set OMP_NUM_THREADS=1 for a one-core figure)."""
    from .render import render_array

    portraits = sample_portraits(n, 0)
    render_array(portraits[:32], size)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        render_array(portraits, size)
        rates.append(n / (time.perf_counter() - t))
        cpu_rates.append(n / (time.process_time() - c))
    return {
        "size": size,
        "n": n,
        "portraits_per_wall_second_best": round(max(rates), 1),
        # per second of this process's CPU time: what one uncontended core gives, even on a busy machine
        "portraits_per_cpu_second_median": round(float(np.median(cpu_rates)), 1),
    }


def bench_analysers(root: str | Path | None = None, n_people: int = 200, n_face: int = 1000) -> dict:
    from .analysers import SyntheticAnalysers
    from .train_analysers import evaluate_face, evaluate_identity

    root = Path(root) if root is not None else ANALYSERS_DIR
    out: dict = {}
    for kind in ("train", "eval"):
        nets = SyntheticAnalysers(kind, root / kind)
        t = time.time()
        out[kind] = {
            "architecture": nets.config["identity_arch"],
            "identity": evaluate_identity(nets.identity_net, n_ids=n_people),
            "face": evaluate_face(nets.face_net, n=n_face),
            "seconds": round(time.time() - t, 1),
        }
    # the two sets disagree like two independent recognisers should, but both separate people
    if (root / "eval" / "style.safetensors").is_file():
        out["style"] = bench_style(root)
    return out


@torch.no_grad()
def bench_style(root: str | Path | None = None, n: int = 500) -> dict:
    """The evaluation style classifier's per-word accuracy on ``n`` held-out renders, clean and through the shipped
    base's VAE round trip (what a generated image looks like at best)."""
    from .render import render_array
    from .train_analysers import HELDOUT, _to_tensor

    root = Path(root) if root is not None else ANALYSERS_DIR
    net = load_style_net(root / "eval" / "style.safetensors")
    portraits = sample_portraits(n, 4242, HELDOUT)
    x = _to_tensor(render_array(portraits, 64))
    acc, followed = _style_scores({k: v.argmax(1).numpy() for k, v in net(x).items()}, portraits)
    out = {"n": n, "accuracy_on_renders": acc, "background_and_shading_on_renders": followed}
    if (BASE_DIR / "vae").is_dir():
        from diffusers import AutoencoderKL

        rt = vae_round_trip(AutoencoderKL.from_pretrained(BASE_DIR / "vae").eval(), x)
        out["accuracy_on_vae_round_trips"], _ = _style_scores(
            {k: v.argmax(1).numpy() for k, v in net(rt).items()}, portraits
        )
    return out


def _style_scores(pred: dict, portraits) -> tuple[dict, float]:
    """Per-word accuracy of the style classifier against the prompted style. A monochrome palette removes the
    background's colour, so background colour is scored only on non-monochrome prompts."""
    truth = {k: np.array([style_labels(p.style)[k] for p in portraits]) for k in STYLE_HEADS}
    colour = np.array([p.style.palette != "monochrome" for p in portraits])
    ok = {k: pred[k] == truth[k] for k in STYLE_HEADS}
    acc = {k: float(v.mean()) for k, v in ok.items()}
    acc["background"] = float(ok["background"][colour].mean()) if colour.any() else float("nan")
    followed = ok["shading"] & (ok["background"] | ~colour)
    return acc, float(followed.mean())


def bench_base(
    base: str | Path | None = None,
    n: int = 200,
    steps: int = 25,
    guidance: float = 4.0,
    seed: int = 0,
    batch: int = 50,
    save_grid: str | Path | None = None,
) -> dict:
    """Face presence and style-word following of the base model's samples at one guidance scale."""
    return bench_base_guidances(base, (guidance,), n=n, steps=steps, seed=seed, batch=batch, save_grid=save_grid)[0]


def bench_base_guidances(
    base: str | Path | None = None,
    guidances: Sequence[float] = (4.0,),
    n: int = 200,
    steps: int = 25,
    seed: int = 0,
    batch: int = 50,
    save_grid: str | Path | None = None,
    guidance_rescale: float = 0.0,
) -> list[dict]:
    """:func:`bench_base` at several guidance scales: the models, prompts and the VAE round-trip ceiling (which does
    not depend on guidance) are made once; ``save_grid`` shows the first scale's samples. ``guidance_rescale`` is
    diffusers' rescaled classifier-free guidance (Lin et al. 2024, for zero-terminal-SNR models like this base)."""
    from .analysers import SyntheticAnalysers
    from .factors import TEMPLATE_WORDS, Expression, nearest_template

    pipe = load_base_pipeline(base)
    portraits = sample_portraits(n, seed + 777, HELDOUT_IDS)
    prompts = [p.caption() for p in portraits]
    ev = SyntheticAnalysers("eval")
    style = load_style_net(ANALYSERS_DIR / "eval" / "style.safetensors")
    # the same words read on VAE reconstructions of the prompts' own renders: what a perfect UNet could reach
    round_trip = _vae_round_trip_images(pipe.vae, portraits)
    with torch.no_grad():
        ceiling, _ = _style_scores({k: v.argmax(1).numpy() for k, v in style(round_trip).items()}, portraits)
        rt_expr = ev.expression(round_trip).numpy()
    true_words = [TEMPLATE_WORDS[nearest_template(p.expression)] for p in portraits]

    def words_followed(expr: np.ndarray) -> float:
        words = [TEMPLATE_WORDS[nearest_template(Expression.from_vector(e))] for e in expr]
        return float(np.mean([w == t for w, t in zip(words, true_words, strict=True)]))

    expr_ceiling = words_followed(rt_expr)
    # always drawing the commonest expression: what a base that ignores expression words scores
    expr_chance = max(true_words.count(w) for w in set(true_words)) / len(true_words)
    results = []
    for guidance in guidances:
        t = time.time()
        images = sample_base_images(pipe, prompts, guidance, steps, seed, batch, guidance_rescale)
        seconds = time.time() - t
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            presence = ev.presence(x).numpy()
            logits = style(x)
            expr = ev.expression(x).numpy()
        acc, both = _style_scores({k: v.argmax(1).numpy() for k, v in logits.items()}, portraits)
        if save_grid is not None and not results:
            _save_grid(images, save_grid)
        results.append({
            "n": n,
            "steps": steps,
            "guidance": guidance,
            "guidance_rescale": guidance_rescale,
            "face_presence_rate": float((presence >= 0.5).mean()),
            "style_word_accuracy": acc,
            "background_and_shading_followed": both,
            "style_word_accuracy_vae_round_trip": ceiling,
            "expression_word_followed": words_followed(expr),
            "expression_word_followed_vae_round_trip": expr_ceiling,
            "expression_word_commonest_share": expr_chance,
            "sampling_seconds": round(seconds, 1),
        })  # fmt: skip
    return results


@torch.no_grad()
def mean_expression_readings(analysers, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, float]:
    """Mean expression factors (``names``, default all) that ``analysers`` read on the images (B, 3, H, W) in [0, 1]
    in which they find a face, and how many those are (``faces``)."""
    from .factors import EXPRESSION_NAMES

    keep = analysers.presence(x) >= 0.5
    e = analysers.expression(x[keep]).numpy()
    names = EXPRESSION_NAMES if names is None else names
    return {n: round(float(e[:, EXPRESSION_NAMES.index(n)].mean()), 3) for n in names} | {"faces": int(keep.sum())}


def sample_base_images(
    pipe,
    prompts: Sequence[str],
    guidance: float,
    steps: int = 25,
    seed: int = 0,
    batch: int = 50,
    guidance_rescale: float = 0.0,
    latents: torch.Tensor | None = None,
) -> np.ndarray:
    """The base's samples for ``prompts`` as :func:`bench_base` draws them: (N, H, W, 3) float32 in [0, 1].
    ``latents`` (N, C, h, w): the starting noise, one per prompt, instead of drawing it from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    images = [
        pipe(
            list(prompts[k : k + batch]), num_inference_steps=steps, guidance_scale=guidance, generator=gen,
            guidance_rescale=guidance_rescale, output_type="np",
            latents=None if latents is None else latents[k : k + batch],
        ).images
        for k in range(0, len(prompts), batch)
    ]  # fmt: skip
    return np.concatenate(images).astype(np.float32)


@torch.no_grad()
def vae_round_trip(vae, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] encoded (latent mean) and decoded again by ``vae``, in [0, 1]."""
    rec = torch.cat([vae.decode(vae.encode(b * 2 - 1).latent_dist.mean).sample for b in x.split(batch)])
    return (rec / 2 + 0.5).clamp(0, 1)


def _save_grid(images: np.ndarray, path: str | Path, cols: int = 8) -> None:
    from PIL import Image

    m = min(32, len(images))
    grid = Image.new("RGB", (64 * cols, 64 * ((m + cols - 1) // cols)))
    for i in range(m):
        grid.paste(Image.fromarray((images[i] * 255).astype(np.uint8)), ((i % cols) * 64, (i // cols) * 64))
    grid.save(path)


@torch.no_grad()
def _vae_round_trip_images(vae, portraits) -> torch.Tensor:
    """The portraits rendered and passed through ``vae``: what a perfect UNet could draw, (B, 3, 64, 64) in [0, 1]."""
    from .render import render_array

    x = torch.from_numpy(np.ascontiguousarray(render_array(portraits, 64))).permute(0, 3, 1, 2).float()
    return vae_round_trip(vae, x)


def min_snr_v_loss(unet, sched, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The bases' diffusion loss on a batch, for the bench scripts that train a UNet: noise and timesteps drawn from
    ``gen`` (in that order), v-prediction target, min-SNR-5 weighting floored at 1 (as ``world pretrain``'s UNet
    stage, without its optional part and expression weights)."""
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
    xt = sched.add_noise(x0, noise, t)
    alphas = sched.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    err = torch.nn.functional.mse_loss(unet(xt, t, cond).sample, sched.get_velocity(x0, noise, t), reduction="none")
    return (err.mean(dim=(1, 2, 3)) * snr.clamp(min=1.0, max=5.0) / (snr + 1)).mean()
