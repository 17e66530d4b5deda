"""``emojidiff eval`` and ``emojidiff bench``: adapters scored on held-out people of the synthetic world."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..cli import main, user_errors
from ..errors import InputError

WORLDS = ("synthetic",)

METRICS_HELP = """
\b
Metrics (evaluation analysers `synthetic-eval` only, never the training ones):
  id_sim            cosine of identity embeddings, output vs the identity references
  exp_err           mean over the 13 expression factors of |true template factor - measured
                    output factor| / factor range: a fraction of the range (0 = exact)
  lms_err           mean |measured - exact| landmark ratio of the ideal output
  leakage           cosine of the output with the template's person; it should fall to
  unrelated_id_sim  the mean cosine between different held-out people
  style_leakage     over style heads where the template differs from the prompt (absent
                    words = defaults), fraction the style classifier reads as the template's
  prompt_acc        fraction of style heads read as the prompt asks
  quality           mean face-presence probability; quality_fd: feature-statistics distance
                    to real renders (lower is better; quality_fd_floor = real vs real)
  intensity_r       (bench) Pearson correlation of exp_scale with the measured expression change
"""


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise InputError(f"--world '{world}' is not available: choose from {', '.join(WORLDS)}")


def _positive(flag: str, value: int | float | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise InputError(f"{flag} must be at least {minimum}, got {value}")


def _command_line() -> str:
    """The running command as a shell line, rebuilt from the parsed options (for the record in results)."""
    ctx = click.get_current_context()
    words = ["emojidiff", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == () or not isinstance(param, click.Option):
            continue
        flag = param.opts[0]
        for v in value if isinstance(value, tuple) else [value]:
            words += [flag] if v is True else [flag, str(v)]
    return " ".join(shlex.quote(w) for w in words)


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


@main.command("eval", epilog=METRICS_HELP)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    required=True,
    help="Adapter folder or bundled name (e.g. synthetic-idi); repeat to compare several on the same cases.",
)
@click.option("--world", default="synthetic", show_default=True, help="Evaluation world (only 'synthetic' so far).")
@click.option("--n-identities", type=int, default=8, show_default=True, help="Held-out identities (at least 2).")
@click.option(
    "--n-templates",
    type=int,
    default=8,
    show_default=True,
    help="Expression templates, each a named expression on another held-out person.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Picks people, templates, styles and noise.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
@click.option("--steps", type=int, default=20, show_default=True, help="Denoising steps.")
@click.option("--guidance", type=float, default=4.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--exp-scale", type=float, default=1.0, show_default=True, help="Expression branch strength.")
@click.option("--id-scale", type=float, default=1.0, show_default=True, help="Identity branch strength.")
@click.option("--batch", type=int, default=16, show_default=True, help="Cases per diffusion call.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@user_errors
def eval_cmd(adapters, world, n_identities, n_templates, seed, json_out, steps, guidance, exp_scale, id_scale, batch,
             device) -> None:  # fmt: skip
    """Score adapters on held-out identities x expression templates: identity kept, expression error, leakage.

    Every adapter generates the same N x M cases (prompts name a style drawn independently of the template's),
    with the same noise; a table is printed and --json writes {"models": {ADAPTER: {metric: value}}}.
    """
    from .bench import check_world_adapter
    from .runner import markdown_table
    from .synthetic import DEFINITIONS, AdapterMethod, GenSettings, PipelinePool, evaluate_world
    from .synthetic_cases import heldout_cases

    _check_world(world)
    _positive("--n-identities", n_identities, 2)
    _positive("--n-templates", n_templates, 1)
    _positive("--steps", steps)
    _positive("--batch", batch)
    if len(set(adapters)) != len(adapters):
        raise InputError("the same --adapter is given twice")
    if json_out and Path(json_out).is_dir():
        raise InputError(f"--json '{json_out}' is a folder; give a file name")
    for a in adapters:
        warning = check_world_adapter(a)
        if warning:
            click.echo(f"warning: {warning}", err=True)
    gen = GenSettings(steps=steps, guidance=guidance, id_scale=id_scale, batch=batch, device=_device(device))
    pool = PipelinePool(gen.device)
    methods = {a: AdapterMethod(pool, a, "full", gen, name=a, progress=True) for a in adapters}
    cases = heldout_cases(n_identities, n_templates, seed)
    res = evaluate_world(methods, cases, seed=seed, exp_scales=(exp_scale,), main_scale=exp_scale, progress=True)
    keep = ("id_sim", "exp_err", "leakage", "style_leakage", "lms_err", "prompt_acc", "quality", "quality_fd",
            "leakage_gap", "face_found")  # fmt: skip
    models = {a: {**{k: res["methods"][a][k] for k in keep}, "unrelated_id_sim": res["unrelated_id_sim"]}
              for a in adapters}  # fmt: skip
    out = {
        "models": models,
        "world": world,
        "seed": seed,
        "n_pairs": res["n_pairs"],
        "n_identities": n_identities,
        "n_templates": n_templates,
        "unrelated_id_sim": res["unrelated_id_sim"],
        "quality_fd_floor": res["quality_fd_floor"],
        "settings": {"steps": steps, "guidance": guidance, "exp_scale": exp_scale, "id_scale": id_scale},
        "definitions": {k: v for k, v in DEFINITIONS.items() if k != "intensity_r"},
        "timings": res["timings"],
    }
    cols = ("id_sim", "exp_err", "leakage", "unrelated_id_sim", "style_leakage", "lms_err", "prompt_acc", "quality",
            "quality_fd")  # fmt: skip
    click.echo(markdown_table({"methods": models, "n_pairs": res["n_pairs"], "seed": seed,
                               "unrelated_level": res["unrelated_id_sim"]}, cols), nl=False)  # fmt: skip
    if json_out:
        from .runner import json_text

        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json_text(out))
        tmp.replace(path)
        click.echo(f"wrote {path}")


@main.command("bench", epilog=METRICS_HELP)
@click.option("--world", default="synthetic", show_default=True, help="Benchmark world (only 'synthetic' so far).")
@click.option("--quick", is_flag=True, help="A small run (a few minutes on a CPU) instead of the full one.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for cases, styles and noise.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Output folder: results.json, results.md, grid_cases.png, grid_scales.png, tradeoff.png.",
)
@click.option("--methods", default=None, help="Comma-separated subset of: identity_only, coarse_control, naive, "
              "idi, ica (default: all).")  # fmt: skip
@click.option("--adapter", "overrides", multiple=True, metavar="ROLE=DIR",
              help="Use DIR instead of a bundled adapter; ROLE is naive, idi or ica (identity_only and "
              "coarse_control use idi). Repeatable.")  # fmt: skip
@click.option("--n-identities", type=int, default=None, help="Override the number of held-out identities.")
@click.option("--n-templates", type=int, default=None, help="Override the number of templates.")
@click.option("--steps", type=int, default=None, help="Override the denoising steps (default 20).")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@user_errors
def bench_cmd(world, quick, seed, out, methods, overrides, n_identities, n_templates, steps, device) -> None:
    """Every method on the same held-out identities x templates x styles, scored with the evaluation analysers.

    \b
    Methods: identity_only (identity branch alone, expression named in the prompt), coarse_control (the
    template's measured expression factors re-rendered on a neutral face, fed to the idi adapter), and the
    bundled adapters naive, idi and ica. A method whose adapter is not installed is reported as skipped.
    Full run: 16 identities x 16 templates, exp_scales 0-1 in 5 steps; --quick: 6 x 4, 3 scales.
    """
    from .bench import FULL, METHODS, QUICK, ROLES, run_bench, with_overrides

    _check_world(world)
    _positive("--n-identities", n_identities, 2)
    _positive("--n-templates", n_templates, 1)
    _positive("--steps", steps)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out '{out}' exists and is not a folder")
    keys = None
    if methods:
        keys = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in keys if m not in METHODS]
        if bad or not keys:
            raise InputError(f"unknown method(s) {', '.join(bad) or '(none)'}: choose from {', '.join(METHODS)}")
    roles: dict[str, str] = {}
    for item in overrides:
        role, sep, path = item.partition("=")
        if not sep or role not in ROLES or not path:
            raise InputError(f"--adapter '{item}' must be ROLE=DIR with ROLE one of {', '.join(ROLES)}")
        roles[role] = path
    settings = with_overrides(QUICK if quick else FULL, n_identities=n_identities, n_templates=n_templates,
                              steps=steps, device=_device(device))  # fmt: skip
    res = run_bench(out, seed, settings, roles, keys, progress=True, command=_command_line())
    click.echo((Path(out) / "results.md").read_text(), nl=False)
    for key, why in res["skipped"].items():
        click.echo(f"skipped {key}: {why}", err=True)
    for warning in res["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {', '.join(res['files'])} in {out}")
