"""``emojidiff ica``."""

from __future__ import annotations

import click

from ..cli import main, user_errors


@main.command("ica")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML config: every `emojidiff train` setting plus an `ica:` mapping (emojidiff.ica.ICASettings).",
)
@click.option("--resume", default=None, help="`latest` (newest checkpoint in output_dir) or a checkpoint folder.")
@user_errors
def ica_cmd(config_path: str, resume: str | None) -> None:
    """Stage 2: ID-enhanced Contrast Alignment fine-tuning of a stage-1 adapter.

    Adds to the diffusion loss an identity loss and an expression loss on the one-step reconstruction decode(x̂0)
    (timestep range adapted by ANI), and a contrast alignment of the identity branch's attention with and without
    expression control. Same loop, checkpoints, resume and outputs as `emojidiff train`; scales out with
    `accelerate launch -m emojidiff ica --config ...`.
    """
    from .config import ICAConfig
    from .trainer import ICATrainer

    cfg = ICAConfig.from_yaml(config_path)
    final = ICATrainer(cfg).train(resume=resume)
    click.echo(f"adapter written to {final}")
