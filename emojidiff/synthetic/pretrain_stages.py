"""Stage names of `emojidiff world pretrain` (kept import-light for the CLI)."""

STAGES = ("analysers", "data", "vae", "clip", "unet", "assemble")
