"""IDI configuration (YAML): generation, identity alteration, filter thresholds, and the per-round training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError

DEFAULT_PROMPTS = [
    "a portrait photo of a person",
    "a close-up portrait of a person, studio lighting",
    "a portrait of a person outdoors, natural light",
    "a painting of a person, portrait",
]

#: TrainConfig fields that IDI fills in itself for each round
TRAIN_FIELDS_SET_BY_IDI = ("adapter", "train_manifest", "output_dir")


@dataclass
class IDIConfig:
    """Every knob of an IDI run. Paths in a YAML file are relative to that file's folder.

    Filter (see :func:`emojidiff.idi.filters.filter_reasons`): keep G' iff ``exp_err <= max_expression_error``,
    ``id_sim >= min_identity_sim``, ``leak_sim <= max_template_identity_sim`` and
    ``id_sim - leak_sim >= min_identity_margin``. Scores use ``score_backend`` (default: the generation backend).
    """

    seed: int = 0
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    negative_prompt: str | None = None
    identities_per_template: int = 1  # other persons B paired with each template
    resolution: int = 512
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    id_scale: float = 1.0
    exp_scale: float = 1.0
    # identity alteration: "diffusion" (built-in re-identification) or the name of a registered face swapper
    alteration: str = "diffusion"
    # diffusion re-identification: img2img strengths tried in order until identity is B's and expression is kept
    # (0.0 means "G as it is"); steps and scales of the img2img pass (None: the generation values)
    reid_strengths: list[float] = field(default_factory=lambda: [0.3, 0.45, 0.6, 0.75])
    reid_steps: int | None = None
    reid_id_scale: float | None = None
    reid_exp_scale: float | None = None
    # filters
    max_expression_error: float = 0.1
    min_identity_sim: float = 0.5
    max_template_identity_sim: float = 0.3
    min_identity_margin: float = 0.0
    score_backend: str | None = None
    save_generated: bool = False  # also keep G (before identity alteration) as images/<id>-G.png
    # training of the next model after each round (fields of emojidiff.train.TrainConfig, except adapter,
    # train_manifest and output_dir, which IDI sets; base defaults to --base or the adapter's base model)
    train: dict = field(default_factory=dict)
    train_last_round: bool = True
    mix_previous_rounds: bool = True  # train round r on the kept triplets of rounds 1..r
    mix_manifests: list[str] = field(default_factory=list)  # extra triplet manifests mixed in (e.g. round-0 data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> IDIConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(f"IDI config '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"IDI config '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"IDI config '{path}' must be a mapping of settings")
        cfg = cls.from_dict(data, str(path))
        root = path.parent
        cfg.mix_manifests = [m if Path(m).is_absolute() else str(root / m) for m in cfg.mix_manifests]
        for key in ("cache_dir", "val_manifest"):
            v = cfg.train.get(key)
            if isinstance(v, str) and not Path(v).is_absolute():
                cfg.train[key] = str(root / v)
        v = cfg.train.get("base")
        if isinstance(v, str) and not Path(v).is_absolute() and (root / v).exists():
            cfg.train["base"] = str(root / v)
        return cfg

    @classmethod
    def from_dict(cls, data: dict, where: str = "IDI config") -> IDIConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{where} has unknown setting(s) {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "IDI config") -> None:
        from ..train.config import TrainConfig

        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise InputError(f"{where}: prompts must be a non-empty list of strings")
        if self.identities_per_template < 1:
            raise InputError(f"{where}: identities_per_template must be at least 1")
        if self.resolution < 8 or self.resolution % 8:
            raise InputError(f"{where}: resolution must be a positive multiple of 8, got {self.resolution}")
        if self.num_inference_steps < 1:
            raise InputError(f"{where}: num_inference_steps must be at least 1")
        s = self.reid_strengths
        if not s or any(not 0.0 <= x <= 1.0 for x in s) or list(s) != sorted(s):
            raise InputError(f"{where}: reid_strengths must be a non-empty increasing list in [0, 1], got {s}")
        if not isinstance(self.train, dict):
            raise InputError(f"{where}: train must be a mapping of training settings")
        known = {f.name for f in fields(TrainConfig)}
        bad = sorted(set(self.train) - known)
        if bad:
            raise InputError(f"{where}: train has unknown setting(s) {', '.join(bad)}")
        fixed = sorted(set(self.train) & set(TRAIN_FIELDS_SET_BY_IDI))
        if fixed:
            raise InputError(f"{where}: train must not set {', '.join(fixed)} (IDI sets them for each round)")

    def to_dict(self) -> dict:
        return asdict(self)

    def generation_fingerprint(self) -> dict:
        """The settings a round's candidates depend on (all but training and mixing); a resumed round must match."""
        skip = {"train", "train_last_round", "mix_previous_rounds", "mix_manifests", "save_generated"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}
