"""``emojidiff train``."""

from __future__ import annotations

import click

from ..cli import main, user_errors


@main.command("train")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML training config (see configs/ for examples; every field of emojidiff.train.TrainConfig).",
)
@click.option("--resume", default=None, help="`latest` (newest checkpoint in output_dir) or a checkpoint folder.")
@user_errors
def train_cmd(config_path: str, resume: str | None) -> None:
    """Train the E-Adapter's branches (stage 1 / IDI rounds) under Hugging Face Accelerate.

    One process here; the same command scales out with `accelerate launch -m emojidiff train --config ...`.
    Checkpoints go to OUTPUT_DIR/checkpoint-STEP (each holds a usable adapter/), the final adapter to
    OUTPUT_DIR/adapter, validation grids to OUTPUT_DIR/validation, TensorBoard logs to OUTPUT_DIR/logs.
    """
    from .config import TrainConfig
    from .loop import Trainer

    cfg = TrainConfig.from_yaml(config_path)
    final = Trainer(cfg).train(resume=resume)
    click.echo(f"adapter written to {final}")
