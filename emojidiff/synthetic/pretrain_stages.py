"""Stage names of `emojidiff world pretrain` (kept import-light for the CLI)."""

STAGES = ("analysers", "data", "vae", "decoder", "clip", "unet", "assemble")
