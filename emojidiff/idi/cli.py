"""``emojidiff idi``."""

from __future__ import annotations

import click

from ..cli import main, user_errors


@main.command("idi")
@click.option("--adapter", required=True, help="Adapter of the current model (folder or bundled name), e.g. round 0.")
@click.option("--templates", required=True, type=click.Path(dir_okay=False), help="Templates source manifest (JSONL).")
@click.option("--identities", required=True, type=click.Path(dir_okay=False), help="Identities source manifest.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--rounds", default=1, show_default=True, help="Number of IDI rounds (each trains the next model).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="IDI config (YAML).")
@click.option("--base", default=None, help="Base model (default: the one the adapter records).")
@click.option("--face-backend", default=None, help="Face backend for encoding inputs (default: the adapter's).")
@user_errors
def idi_cmd(adapter, templates, identities, out, rounds, config_path, base, face_backend) -> None:
    """ID-irrelevant Data Iteration: cross-identity triplets, filtered, and the next model trained on them.

    Manifests are JSON lines {"image": PATH, "person": ID, "prompt": ..., "style": ...} (see `emojidiff.idi`).
    Run it again after an interruption: finished candidates and rounds are kept, none is done twice. Scale out with
    `accelerate launch -m emojidiff idi ...` (candidates are sharded by process rank).
    """
    from .config import IDIConfig
    from .rounds import run_idi

    cfg = IDIConfig.from_yaml(config_path) if config_path else IDIConfig()
    summary = run_idi(adapter, templates, identities, out, rounds=rounds, cfg=cfg, base=base,
                      face_backend=face_backend, log=click.echo)  # fmt: skip
    click.echo(f"final adapter: {summary['final_adapter']}")
