"""``emojidiff.json``: what an adapter folder was made for and how its two branches are shaped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..errors import AdapterError

CONFIG_NAME = "emojidiff.json"
IDENTITY_WEIGHTS = "ip_adapter_identity.safetensors"
EXPRESSION_WEIGHTS = "ip_adapter_expression.safetensors"
IMAGE_ENCODER_DIR = "image_encoder"
FORMAT_VERSION = 1

#: diffusers' loader gives every FaceID-layout projection 4 tokens, so the identity branch must use 4.
IDENTITY_TOKENS = 4


@dataclass
class UNetSignature:
    """What an adapter must match in a UNet: family, cross-attention width and its attention blocks."""

    family: str  # "sd15", "sd2" (SD layout with 1024-d cross-attention) or "sdxl"
    cross_attention_dim: int
    attention_blocks: list[str]
    hidden_sizes: list[int]  # one per cross-attention processor, in diffusers order

    @classmethod
    def of(cls, unet) -> UNetSignature:
        from .layers import attention_blocks, cross_attention_processors

        cfg = unet.config
        if cfg.get("addition_embed_type") == "text_time":
            family = "sdxl"
        else:
            family = "sd2" if cfg.cross_attention_dim == 1024 else "sd15"
        procs = cross_attention_processors(unet)
        sizes = [_hidden_size(cfg, n) for n in procs]
        return cls(family, int(cfg.cross_attention_dim), attention_blocks(unet), sizes)

    def describe(self) -> str:
        return (
            f"an {self.family} base (cross-attention dim {self.cross_attention_dim}, "
            f"{len(self.hidden_sizes)} cross-attention layers)"
        )


def _hidden_size(cfg, name: str) -> int:
    # Same rule as diffusers' IP-Adapter loader (UNet2DConditionLoadersMixin._convert_ip_adapter_attn_to_diffusers).
    boc = list(cfg.block_out_channels)
    if name.startswith("mid_block"):
        return boc[-1]
    block_id = int(name.split(".")[1])
    return list(reversed(boc))[block_id] if name.startswith("up_blocks") else boc[block_id]


@dataclass
class EmojiDiffConfig:
    """Contents of ``emojidiff.json``."""

    base_family: str
    cross_attention_dim: int
    attention_blocks: list[str]
    hidden_sizes: list[int]
    expression_layers: list[str]
    identity_dim: int = 512
    identity_tokens: int = IDENTITY_TOKENS
    identity_mult: int = 2
    expression_tokens: int = 16
    expression_embed_dim: int = 1280  # width of the image encoder's patch features
    expression_hidden_dim: int = 768
    expression_heads: int = 12
    image_encoder: dict = field(default_factory=lambda: {"path": IMAGE_ENCODER_DIR, "subfolder": None})
    image_encoder_layer: int = -2  # which hidden state of the image encoder feeds the resampler (IP-Adapter Plus: -2)
    face_backend: str = "none"
    base_model: str | None = None
    #: digest of the base's UNet weights it was trained on (small local bases only: ``adapter.core.base_digest``)
    base_digest: str | None = None
    format_version: int = FORMAT_VERSION
    emojidiff_version: str = __version__
    #: free-form record of how the weights were made (commands, data, steps); shipped adapters fill it in
    training: dict | None = None

    @property
    def signature(self) -> UNetSignature:
        return UNetSignature(self.base_family, self.cross_attention_dim, self.attention_blocks, self.hidden_sizes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_NAME).write_text(self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> EmojiDiffConfig:
        path = Path(directory, CONFIG_NAME)
        if not Path(directory).is_dir():
            raise AdapterError(f"adapter '{directory}' is not a folder")
        if not path.is_file():
            raise AdapterError(f"adapter '{directory}' has no {CONFIG_NAME}: it is not an EmojiDiff adapter folder")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AdapterError(f"adapter config '{path}' is not valid JSON ({e})") from None
        known = {f.name for f in fields(cls)}
        missing = [
            n
            for n in ("base_family", "cross_attention_dim", "attention_blocks", "hidden_sizes", "expression_layers")
            if n not in data
        ]
        if missing:
            raise AdapterError(f"adapter config '{path}' lacks {', '.join(missing)}")
        if data.get("format_version", 1) > FORMAT_VERSION:
            raise AdapterError(
                f"adapter '{directory}' uses format version {data['format_version']}, newer than this EmojiDiff "
                f"({__version__}) understands: upgrade emojidiff"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_compatible(self, unet, adapter_name: str, base_name: str) -> None:
        """Raise one clear :class:`AdapterError` if this adapter cannot go into ``unet``."""
        ours, theirs = self.signature, UNetSignature.of(unet)
        if (ours.family, ours.cross_attention_dim, ours.hidden_sizes) != (
            theirs.family,
            theirs.cross_attention_dim,
            theirs.hidden_sizes,
        ) or ours.attention_blocks != theirs.attention_blocks:
            raise AdapterError(
                f"adapter '{adapter_name}' was made for {ours.describe()}, but base '{base_name}' is "
                f"{theirs.describe()}"
            )
