"""ICA configuration: every stage-1 setting (:class:`TrainConfig`) plus an ``ica:`` sub-mapping.

Example (YAML)::

    base: runwayml/stable-diffusion-v1-5
    adapter: runs/idi-round2/adapter        # start from the stage-1 (IDI) adapter
    train_manifest: data/triplets.jsonl
    output_dir: runs/ica
    train_branches: [identity, expression]
    ica:
      face_models: {name: arcface-landmarks, recognizer: models/glint360k_r100.pth, landmarks: models/fan68.pt}
      lambda_diffusion: 1.0
      lambda_id: 1.0
      lambda_exp: 0.5
      lambda_align: 0.1

Paths among the ``face_models`` options are relative to the config file's folder, like the other paths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..train.config import TrainConfig


@dataclass
class ICASettings:
    """Stage-2 knobs. All loss weights are >= 0; with ``lambda_id = lambda_exp = lambda_align = 0`` (and
    ``lambda_diffusion = 1``) an ICA step is exactly a stage-1 step."""

    #: ``{name: <registered face models>, **options}`` (see :mod:`emojidiff.ica.face_models`)
    face_models: dict = field(default_factory=lambda: {"name": "synthetic"})
    lambda_diffusion: float = 1.0
    lambda_id: float = 1.0
    lambda_exp: float = 0.5
    lambda_align: float = 0.1
    #: inside the alignment loss: weight of the InfoNCE term (push from other identities) next to the pull term
    align_contrast_weight: float = 1.0
    align_temperature: float = 0.1
    #: block keys (``down.block_1.0`` ...) whose identity-branch attention output is aligned; None: every block
    align_layers: list[str] | None = None
    #: ANI: the one-step timestep is drawn from [ani_t_min, t_hi]; t_hi adapts within [ani_t_hi_min, ani_t_hi_max]
    ani_t_min: int = 0
    ani_t_hi_init: int = 400
    ani_t_hi_min: int = 100
    ani_t_hi_max: int = 800
    #: the identity similarity of decode(x̂0) to the reference that the range is steered to
    ani_target_sim: float = 0.5
    #: how far t_hi moves per micro-step, and the EMA momentum of the measured similarity
    ani_step: float = 10.0
    ani_momentum: float = 0.9
    #: the diffusion loss on its own UNet pass at a uniform timestep (stage-1 semantics), or on the one-step pass at
    #: the ANI timestep (one UNet pass fewer; the diffusion loss then sees only the truncated range)
    share_diffusion_pass: bool = False
    #: what decodes x̂0 for the face models: ``vae`` (the base model's own) or a diffusers ``AutoencoderTiny`` folder or
    #: hub id (TAESD: ``madebyollin/taesd`` for SD1.5/2, ``madebyollin/taesdxl`` for SDXL) — about 1/13 of the SD1.5
    #: VAE decoder's compute, at the price of supervising an approximation of the image the base model would decode;
    #: its upsampling factor must equal the VAE's (checked)
    decoder: str = "vae"
    #: recompute VAE decode and face models in the backward pass instead of storing their activations
    #: (None: follow ``gradient_checkpointing``)
    checkpoint_decode: bool | None = None

    def validate(self, where: str, num_train_timesteps: int | None = None) -> None:
        for k in ("lambda_diffusion", "lambda_id", "lambda_exp", "lambda_align", "align_contrast_weight"):
            if getattr(self, k) < 0:
                raise InputError(f"{where}: ica.{k} must be >= 0")
        if self.align_temperature <= 0:
            raise InputError(f"{where}: ica.align_temperature must be > 0")
        if not isinstance(self.face_models, dict) or "name" not in self.face_models:
            raise InputError(f"{where}: ica.face_models must be a mapping with a 'name'")
        if not 0 <= self.ani_t_min <= self.ani_t_hi_min <= self.ani_t_hi_init <= self.ani_t_hi_max:
            raise InputError(f"{where}: ica needs 0 <= ani_t_min <= ani_t_hi_min <= ani_t_hi_init <= ani_t_hi_max")
        if num_train_timesteps is not None and self.ani_t_hi_max >= num_train_timesteps:
            raise InputError(f"{where}: ica.ani_t_hi_max must be below the scheduler's {num_train_timesteps} steps")
        if not 0 <= self.ani_momentum < 1 or self.ani_step < 0:
            raise InputError(f"{where}: ica needs 0 <= ani_momentum < 1 and ani_step >= 0")

    @property
    def extra_losses(self) -> bool:
        return bool(self.lambda_id or self.lambda_exp or self.lambda_align)


@dataclass
class ICAConfig(TrainConfig):
    """A stage-1 config plus ``ica`` (:class:`ICASettings`). Both branches train by default."""

    train_branches: list[str] = field(default_factory=lambda: ["identity", "expression"])
    ica: ICASettings = field(default_factory=ICASettings)

    def __post_init__(self) -> None:
        if isinstance(self.ica, dict):
            known = {f.name for f in fields(ICASettings)}
            unknown = sorted(set(self.ica) - known)
            if unknown:
                raise InputError(f"unknown ica setting(s) {', '.join(unknown)}")
            self.ica = ICASettings(**self.ica)
        elif self.ica is None:
            self.ica = ICASettings()

    @classmethod
    def from_yaml(cls, path: str | Path) -> ICAConfig:
        cfg = super().from_yaml(path)
        root = Path(path).parent
        fm = dict(cfg.ica.face_models)
        for k, v in fm.items():  # options naming files next to the config
            if k != "name" and isinstance(v, str) and not Path(v).is_absolute() and (root / v).exists():
                fm[k] = str(root / v)
        cfg.ica.face_models = fm
        return cfg

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        self.ica.validate(where)

    def to_dict(self) -> dict:
        return asdict(self)
