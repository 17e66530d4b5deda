"""``emojidiff probe-layers``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import main, user_errors
from .core import format_table, plot_probe, probe_layers, probe_pairs, write_layer_map


@main.command("probe-layers")
@click.option("--adapter", required=True, help="Adapter folder (trained with expression_layers: all).")
@click.option("--base", default=None, help="Base model (default: the one the adapter records).")
@click.option("--templates", required=True, type=click.Path(dir_okay=False), help="Templates source manifest.")
@click.option("--identities", required=True, type=click.Path(dir_okay=False), help="Identities source manifest.")
@click.option("--out", default="probe-layers", show_default=True, type=click.Path(file_okay=False),
              help="Folder for probe.json and probe.png.")  # fmt: skip
@click.option("--write", is_flag=True, help="Write the chosen map into the adapter's emojidiff.json.")
@click.option("--face-backend", default=None, help="Face backend for encoding inputs (default: the adapter's).")
@click.option("--score-backend", default=None, help="Face backend for the measurements (default: as encoding).")
@click.option("--pairs", default=4, show_default=True, help="Number of (template, identity) probe pairs.")
@click.option("--steps", default=20, show_default=True, help="Denoising steps per image.")
@click.option("--guidance", default=5.0, show_default=True, help="Guidance scale.")
@click.option("--resolution", default=None, type=int, help="Image size (default: the base model's).")
@click.option("--exp-scale", default=1.0, show_default=True, help="Expression-branch scale on the probed block.")
@click.option("--id-scale", default=1.0, show_default=True, help="Identity-branch scale.")
@click.option("--w-id", default=1.0, show_default=True, help="Weight of identity change in the block score.")
@click.option("--w-style", default=1.0, show_default=True, help="Weight of style change in the block score.")
@click.option("--keep-fraction", default=0.5, show_default=True, help="Keep blocks scoring >= this x the best.")
@click.option("--prompt", default=None, help="Prompt (default: each template's prompt, else a portrait prompt).")
@click.option("--seed", default=0, show_default=True, help="Seed of the first pair (pair i uses seed + i).")
@user_errors
def probe_layers_cmd(
    adapter, base, templates, identities, out, write, face_backend, score_backend, pairs, steps, guidance, resolution,
    exp_scale, id_scale, w_id, w_style, keep_fraction, prompt, seed,
) -> None:  # fmt: skip
    """Find the expression-sensitive attention blocks: inject the expression branch one block at a time.

    Prints a table (expression gain toward the template, identity change, style change, score per block), writes
    OUT/probe.json and OUT/probe.png, and with --write sets the adapter's expression_layers to the chosen map.
    Rule: score = exp_gain - w_id*id_change - w_style*style_change; blocks with exp_gain > 0 and score > 0 and
    score >= keep_fraction x best are chosen.
    """
    from ..adapter.core import resolve_adapter
    from ..faces import get_face_analyzer
    from ..idi.sources import read_sources
    from ..pipeline import EmojiDiffPipeline

    adapter_dir = resolve_adapter(adapter)
    pipe = EmojiDiffPipeline.from_pretrained(base, adapter=adapter_dir, face_backend=face_backend)
    pp = probe_pairs(read_sources(templates, "templates manifest"), read_sources(identities, "identities manifest"),
                     pairs, seed, prompt)  # fmt: skip
    result = probe_layers(
        pipe, pp, analyzer=get_face_analyzer(score_backend) if score_backend else None, id_scale=id_scale,
        exp_scale=exp_scale, num_inference_steps=steps, guidance_scale=guidance, resolution=resolution,
        w_id=w_id, w_style=w_style, keep_fraction=keep_fraction,
    )  # fmt: skip
    click.echo(format_table(result))
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    tmp = outp / "probe.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    tmp.replace(outp / "probe.json")
    plot_probe(result, outp / "probe.png")
    click.echo(f"wrote {outp / 'probe.json'} and {outp / 'probe.png'}")
    if write:
        path = write_layer_map(adapter_dir, result.chosen)
        click.echo(f"expression_layers = {','.join(result.chosen)} written to {path}")
