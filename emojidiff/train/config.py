"""Training configuration (YAML), shared by stage 1, IDI rounds and ICA."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError

BRANCHES = ("identity", "expression")


@dataclass
class TrainConfig:
    """Every knob of a training run. Paths in a YAML file are relative to that file's folder."""

    base: str  # diffusers SD/SDXL model id or folder
    adapter: str  # starting adapter folder (from `emojidiff init-adapter` or an earlier run) or bundled name
    train_manifest: str  # triplets (see emojidiff.data.manifest)
    output_dir: str
    val_manifest: str | None = None
    train_branches: list[str] = field(default_factory=lambda: ["expression"])
    resolution: int = 512
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_steps: int = 1000
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    validation_steps: int = 500
    num_validation: int = 4
    validation_inference_steps: int = 20
    # independent condition dropout, so classifier-free guidance works per branch
    drop_text: float = 0.05
    drop_identity: float = 0.05
    drop_expression: float = 0.05
    drop_all: float = 0.05
    face_backend: str | None = None
    cache_dir: str | None = None  # default: OUTPUT_DIR/cache
    num_workers: int = 0
    report_to: str = "tensorboard"  # tensorboard | none

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(f"config '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"config '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"config '{path}' must be a mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"config '{path}' has unknown setting(s) {', '.join(unknown)}")
        missing = [k for k in ("base", "adapter", "train_manifest", "output_dir") if k not in data]
        if missing:
            raise InputError(f"config '{path}' lacks {', '.join(missing)}")
        root = path.parent
        for key in ("train_manifest", "val_manifest", "output_dir", "cache_dir"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(root / data[key])
        for key in ("adapter", "base"):  # a folder next to the config, else a hub id / bundled name as given
            v = data.get(key)
            if isinstance(v, str) and not Path(v).is_absolute() and (root / v).exists():
                data[key] = str(root / v)
        cfg = cls(**data)
        cfg.validate(str(path))
        return cfg

    def validate(self, where: str = "config") -> None:
        bad = [b for b in self.train_branches if b not in BRANCHES]
        if bad or not self.train_branches:
            raise InputError(f"{where}: train_branches must be a non-empty subset of {list(BRANCHES)}, got {bad}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"{where}: mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpointing_steps", "resolution"):
            if getattr(self, name) < 1:
                raise InputError(f"{where}: {name} must be at least 1")
        if self.resolution % 8:
            raise InputError(f"{where}: resolution must be a multiple of 8, got {self.resolution}")

    def to_dict(self) -> dict:
        return asdict(self)
