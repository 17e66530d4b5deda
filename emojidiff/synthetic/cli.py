"""``emojidiff world ...``: render, gallery, analysers, pretrain and sample in the synthetic portrait world."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import main, user_errors
from ..errors import InputError
from .pretrain_stages import STAGES


@click.group()
def world() -> None:
    """The synthetic portrait world: exact-factor renders, its face analysers and its tiny base model."""


@world.command("render")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of portraits.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same portraits.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--size", type=click.IntRange(min=16, max=2048), default=64, show_default=True, help="Pixels.")
@click.option("--heldout", is_flag=True, help="Draw people from the held-out identity range (not used in training).")
@user_errors
def render_cmd(n: int, seed: int, out: str, size: int, heldout: bool) -> None:
    """Render N random portraits as PNGs plus manifest.jsonl (file, identity, expression, style, caption)."""
    from .dataset import HELDOUT_IDS, TRAIN_IDS, sample_portraits, write_renders

    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out '{out}' exists and is not a folder")
    portraits = sample_portraits(n, seed, HELDOUT_IDS if heldout else TRAIN_IDS)
    manifest = write_renders(portraits, out, size)
    click.echo(f"wrote {n} portraits and {manifest}")


@world.command("pairs")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Data folder to write.")
@click.option("--n-people", type=click.IntRange(min=2), default=3000, show_default=True, help="Training people.")
@click.option("--per-person", type=click.IntRange(min=2), default=3, show_default=True, help="Renders per person.")
@click.option("--n-val", type=click.IntRange(min=0), default=8, show_default=True, help="Validation triplets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same data.")
@user_errors
def pairs_cmd(out: str, n_people: int, per_person: int, n_val: int, seed: int) -> None:
    """Write stage-1 training data from training-range people: round-0 triplets (template = target, identity =
    another render of the same person; prompts name the style only), validation triplets, and the templates /
    identities source manifests that `emojidiff idi` pairs across people."""
    from .pairs import write_round0

    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out '{out}' exists and is not a folder")
    s = write_round0(out, n_people, per_person, seed, n_val)
    click.echo(
        f"wrote {s.images} renders of {s.people} people to {out}: {s.triplets} round-0 triplets (triplets.jsonl), "
        f"{s.val} validation (val.jsonl), {s.templates} templates and {s.identities} identities for IDI"
    )


@world.command("gallery")
@click.option("--out", type=click.Path(file_okay=False), default="examples", show_default=True)
@click.option("--size", type=click.IntRange(min=32, max=512), default=96, show_default=True)
@user_errors
def gallery_cmd(out: str, size: int) -> None:
    """Regenerate the example gallery (identities/ and expressions/ under OUT)."""
    from .dataset import write_gallery

    files = write_gallery(out, size)
    click.echo(f"wrote {len(files)} images under {out}")


@world.command("pretrain")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder (checkpoints, stages).")
@click.option("--quick", is_flag=True, help="A few steps of every stage on a few images (for tests).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run in OUT with the options it began with (OUT/config.json; those given again win): finished "
    "stages are skipped, the UNet resumes (a --unet-steps above a finished UNet's continues it from its last "
    "checkpoint).",
)
@click.option(
    "--stages",
    default=",".join(STAGES),
    show_default=True,
    help="Comma-separated subset of the stages to run.",
)
@click.option("--seed", type=int, default=None, help="Seed of every stage (default 0; --resume: the run's own).")
@click.option("--unet-steps", type=click.IntRange(min=1), default=None, help="Override the UNet step count.")
@click.option("--vae-steps", type=click.IntRange(min=1), default=None, help="Override the VAE step count.")
@click.option("--clip-steps", type=click.IntRange(min=1), default=None, help="Override the CLIP step count.")
@click.option(
    "--clip-hard-negatives",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="Share of each CLIP batch's renders also scored against their caption with one style word changed, once "
    "per style field (NegCLIP hard negatives; default 0: none); teaches the text encoder words that in-batch "
    "negatives rarely contrast, such as 'round' against 'square' glasses. Measured: with --clip-steps 2000 it "
    "triples their distance and the base draws the right shape more often, not reliably (BENCHMARKS.md).",
)
@click.option("--n-images", type=click.IntRange(min=8), default=None, help="Override the number of renders.")
@click.option(
    "--style-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps of the evaluation style classifier (default 2000, as the shipped one: it reads glasses right on "
    "99 % of held-out renders, against 86 % after 600).",
)
@click.option(
    "--part-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Extra UNet loss weight around the eyes and mouth (default 0: none). A pilot for drawing expressions; "
    "measured: it does not make the base draw them (BENCHMARKS.md).",
)
@click.option(
    "--glasses-share",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="Share of each UNet batch drawn from the renders wearing glasses (default 0: uniform draws, 30 % wear "
    "them). A pilot for drawing the named glasses shape (BENCHMARKS.md).",
)
@click.option(
    "--expression-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Weight of an expression loss on the UNet's clean-image estimate, read by the training analysers "
    "(default 0: none). A pilot for drawing expressions; measured: it does not make the base draw them "
    "(BENCHMARKS.md).",
)
@click.option(
    "--expression-analysers",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Training analysers for --expression-weight (default: the run's own, OUT/analysers/train).",
)
@click.option(
    "--expression-captions",
    type=click.FloatRange(min=0, max=1),
    default=None,
    help="Share of the template-drawn renders captioned by their expression alone ('a smiling person') at each "
    "UNet step; renders drawn uniformly then lose the expression word (default 0: the captions as drawn). "
    "Measured: 0.5 with --part-weight 4 for 7000 steps from nothing made the first base that draws smile and "
    "frown from words; at the default 3500 steps it did not, with or without --part-weight 4 (BENCHMARKS.md).",
)
@click.option(
    "--attention-at-full-res",
    is_flag=True,
    default=None,
    help="A UNet with cross-attention at the 16x16 latent level too (twice the time per step; new UNets only).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option(
    "--parallel/--sequential",
    default=True,
    show_default=True,
    help="Train the analysers in a second process (one thread) beside the other stages, which get one thread "
    "fewer; --sequential runs every stage in this process, one after another.",
)
@user_errors
def pretrain_cmd(
    out,
    quick,
    resume,
    stages,
    seed,
    unet_steps,
    vae_steps,
    clip_steps,
    clip_hard_negatives,
    n_images,
    style_steps,
    part_weight,
    glasses_share,
    expression_weight,
    expression_analysers,
    expression_captions,
    attention_at_full_res,
    threads,
    parallel,
) -> None:
    """Train every model of the synthetic world: analysers, VAE, CLIP text/image encoders, UNet; then OUT/base.

    The default run took 46 minutes on 2 CPU cores on a fast day and 77 on a slow one (MODEL_CARD.md); --quick
    checks the whole path in seconds.
    Ctrl-C or kill stops it (the analysers' second process too); --resume goes on from where it stopped.
    """
    import torch

    from .pretrain import PretrainConfig, pretrain

    if threads:
        torch.set_num_threads(threads)
    if resume and Path(out, "config.json").is_file():  # a run goes on with the options it began with unless given
        cfg = PretrainConfig.from_run(out)
    else:
        cfg = PretrainConfig.quick() if quick else PretrainConfig()
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGES)}")
    cfg.stages = chosen
    for name, value in (
        ("seed", seed),
        ("unet_steps", unet_steps),
        ("vae_steps", vae_steps),
        ("clip_steps", clip_steps),
        ("clip_hard_negatives", clip_hard_negatives),
        ("n_images", n_images),
        ("style_steps", style_steps),
        ("part_weight", part_weight),
        ("glasses_share", glasses_share),
        ("expression_weight", expression_weight),
        ("expression_analysers", expression_analysers),
        ("expression_captions", expression_captions),
        ("unet_attention_at_full_res", attention_at_full_res),
    ):
        if value is not None:
            setattr(cfg, name, value)
    state = pretrain(out, cfg, resume=resume, log=lambda m: click.echo(m, err=True), parallel=parallel)
    click.echo(f"done: {', '.join(state['done'])}; base model in {Path(out) / 'base'}")


guidance_rescale_option = click.option(
    "--guidance-rescale",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Rescaled classifier-free guidance (diffusers' guidance_rescale; 0 = plain). Measured on this world's bases: "
    "at most 2 points more style words followed, fewer faces at 0.7-1 (BENCHMARKS.md).",
)


@world.command("sample")
@click.option("--prompt", required=True, help="e.g. 'a shaded portrait of a smiling person with red hair'.")
@click.option("--n", "n", type=click.IntRange(min=1, max=1024), default=4, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--base", type=click.Path(file_okay=False), default=None, help="Base model folder (default: shipped).")
@click.option("--steps", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--guidance", type=float, default=4.0, show_default=True)
@guidance_rescale_option
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def sample_cmd(prompt, n, out, base, steps, guidance, guidance_rescale, seed) -> None:
    """Sample the synthetic base model alone (a plain diffusers StableDiffusionPipeline)."""
    import torch

    from .base_model import load_base_pipeline

    pipe = load_base_pipeline(base)
    gen = torch.Generator().manual_seed(seed)
    images = pipe(
        [prompt] * n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        guidance_rescale=guidance_rescale,
        generator=gen,
    ).images
    Path(out).mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        img.save(Path(out) / f"sample_{k:03d}.png")
    click.echo(f"wrote {n} images to {out}")


@world.command("bench")
@click.option(
    "--what",
    type=click.Choice(["render", "analysers", "style", "base", "all"]),
    default="all",
    show_default=True,
    help="What to measure: the renderer's speed, both analyser sets (and the style classifier), the style "
    "classifier alone (clean and VAE round-tripped held-out renders), or the base's samples.",
)
@click.option("--n", "n", type=click.IntRange(min=10), default=200, show_default=True, help="Base samples.")
@click.option("--base", type=click.Path(file_okay=False), default=None, help="Base model folder (default: shipped).")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Save a grid of base samples.")
@click.option(
    "--guidance",
    type=click.FloatRange(min=1.0),
    multiple=True,
    help="Guidance scale(s) of the base samples (repeatable; default 4).",
)
@guidance_rescale_option
@user_errors
def bench_cmd(
    what: str,
    n: int,
    base: str | None,
    json_out: str | None,
    grid: str | None,
    guidance: tuple[float, ...],
    guidance_rescale: float,
) -> None:
    """Measure the shipped analysers (held-out people) and the base model (faces, style and expression words)."""
    import torch

    from .bench import bench_analysers, bench_base_guidances, bench_render, bench_style

    torch.manual_seed(0)
    res = {}
    if what in ("render", "all"):
        res["render"] = bench_render()
    if what in ("analysers", "all"):
        res["analysers"] = bench_analysers()
    if what == "style":
        res["style"] = bench_style()
    if what in ("base", "all"):
        scales = guidance or (4.0,)
        figures = bench_base_guidances(base, scales, n=n, save_grid=grid, guidance_rescale=guidance_rescale)
        for k, (g, f) in enumerate(zip(scales, figures, strict=True)):
            res["base" if k == 0 else f"base_guidance_{g:g}"] = f
    text = json.dumps(res, indent=2)
    if json_out:
        Path(json_out).write_text(text)
    click.echo(text)


main.add_command(world)
