"""Creating adapter folders and loading them into diffusers pipelines."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..errors import AdapterError, BaseMismatchWarning
from .config import (
    EXPRESSION_WEIGHTS,
    IDENTITY_TOKENS,
    IDENTITY_WEIGHTS,
    EmojiDiffConfig,
    UNetSignature,
)
from .image_encoder import copy_encoder_into, encoder_reference, load_image_encoder, read_encoder_config
from .layers import parse_layer_spec
from .weights import check_weight_files, init_branch_weights, save_branch_weights

_SYNTHETIC_WEIGHTS = Path(__file__).resolve().parent.parent / "synthetic" / "weights"
#: adapters shipped inside the package, addressable by name wherever an adapter path is accepted
BUNDLED_ADAPTERS: dict[str, Path] = {
    "synthetic-naive": _SYNTHETIC_WEIGHTS / "adapters" / "naive",  # stage 1, round 0 (same-identity pairs)
    "synthetic-idi": _SYNTHETIC_WEIGHTS / "adapters" / "idi",  # stage 1 after the IDI rounds
    "synthetic-ica": _SYNTHETIC_WEIGHTS / "adapters" / "ica",  # stage 2 (ICA) on top of synthetic-idi
}
#: base models shipped inside the package, addressable by name wherever a base model is accepted
BUNDLED_BASES: dict[str, Path] = {"synthetic": _SYNTHETIC_WEIGHTS / "base"}


def resolve_base(name_or_path: str | Path) -> str:
    """A hub id or folder as given, or the folder of a bundled base (``synthetic``) when no such local folder exists."""
    s = str(name_or_path)
    if s in BUNDLED_BASES and not Path(s).exists():
        return str(BUNDLED_BASES[s])
    return s


#: UNet weight files up to this size are hashed by :func:`base_digest`; real bases (SD1.5's UNet is 3.4 GB) are not
DIGEST_MAX_BYTES = 64 * 2**20


def base_digest(base: str | Path) -> str | None:
    """A short SHA-256 of a small local base's UNet weights, or None (a hub id, or a UNet over ``DIGEST_MAX_BYTES``).

    Adapters record it so that one trained on another version of a same-shaped base (the bundled synthetic base
    is replaced by better ones over time) is noticed at load time. Real bases are left out on purpose: hashing
    gigabytes at every load costs seconds, and adapters are meant to be used on fine-tunes of their base.
    """
    unet_dir = Path(resolve_base(base), "unet")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        f = unet_dir / name
        if f.is_file() and f.stat().st_size <= DIGEST_MAX_BYTES:
            return hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return None


def warn_if_other_base_version(cfg: EmojiDiffConfig, adapter: str | Path, base: str | Path) -> None:
    """Warn (:class:`BaseMismatchWarning`) when ``base`` is not the version of the base that ``cfg`` was trained on."""
    if not cfg.base_digest:
        return
    digest = base_digest(base)
    if digest is not None and digest != cfg.base_digest:
        warnings.warn(
            f"adapter '{adapter}' was trained on another version of base '{base}' (UNet {cfg.base_digest}, this one "
            f"{digest}): expect poor portraits; use the base it was trained on or train it again for this one",
            BaseMismatchWarning,
            stacklevel=3,
        )


def resolve_adapter(name_or_path: str | Path) -> Path:
    """A folder path, or the name of a bundled adapter."""
    p = Path(name_or_path)
    if p.exists():
        if not p.is_dir():
            raise AdapterError(f"adapter '{name_or_path}' is a file; an adapter is a folder holding emojidiff.json")
        return p
    if str(name_or_path) in BUNDLED_ADAPTERS:
        path = BUNDLED_ADAPTERS[str(name_or_path)]
        if not (path / "emojidiff.json").is_file():
            raise AdapterError(f"bundled adapter '{name_or_path}' is not in this installation ({path} is missing)")
        return path
    names = ", ".join(sorted(BUNDLED_ADAPTERS)) or "none in this version"
    raise AdapterError(f"adapter '{name_or_path}' not found: not a folder, nor a bundled adapter name ({names})")


def read_unet_config(base: str) -> dict:
    """The base model's UNet config, read without loading any weights."""
    from diffusers import UNet2DConditionModel

    try:
        return dict(UNet2DConditionModel.load_config(resolve_base(base), subfolder="unet"))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AdapterError(f"base model '{base}' could not be read ({msg})") from None


def meta_unet(unet_config: dict):
    """A UNet built on the meta device: its structure without any memory for weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(unet_config)


def make_config(
    unet,
    *,
    expression_embed_dim: int,
    expression_layers: str | list[str] | None = None,
    identity_dim: int = 512,
    expression_tokens: int = 16,
    image_encoder: dict | None = None,
    face_backend: str = "none",
    base_model: str | None = None,
) -> EmojiDiffConfig:
    """The config of a new adapter for ``unet`` (which may live on the meta device)."""
    sig = UNetSignature.of(unet)
    if identity_dim < 1 or expression_tokens < 1:
        raise AdapterError("identity dim and expression token count must be positive")
    hidden = 1280 if sig.family == "sdxl" else max(64, sig.cross_attention_dim)
    return EmojiDiffConfig(
        base_family=sig.family,
        cross_attention_dim=sig.cross_attention_dim,
        attention_blocks=sig.attention_blocks,
        hidden_sizes=sig.hidden_sizes,
        expression_layers=parse_layer_spec(expression_layers, sig.attention_blocks),
        identity_dim=identity_dim,
        identity_tokens=IDENTITY_TOKENS,
        expression_tokens=expression_tokens,
        expression_embed_dim=expression_embed_dim,
        expression_hidden_dim=hidden,
        expression_heads=max(1, hidden // 64),
        image_encoder=image_encoder or encoder_reference(None),
        face_backend=face_backend,
        base_model=base_model,
    )


def init_adapter(
    base: str | object,
    out: str | Path,
    *,
    image_encoder: str | None = None,
    image_encoder_subfolder: str | None = None,
    expression_layers: str | list[str] | None = None,
    identity_dim: int = 512,
    expression_tokens: int = 16,
    face_backend: str = "none",
    seed: int = 0,
) -> EmojiDiffConfig:
    """Write an untrained adapter for ``base`` (a model id/folder, or an already loaded UNet) into ``out``."""
    from diffusers import UNet2DConditionModel

    out = Path(out)
    ref = encoder_reference(image_encoder, image_encoder_subfolder)
    enc_cfg = read_encoder_config(ref)  # fail early, before loading the UNet
    if isinstance(base, (str, Path)):
        read_unet_config(str(base))
        unet = UNet2DConditionModel.from_pretrained(resolve_base(base), subfolder="unet")
        base_name = str(base)
    else:
        unet, base_name = base, None
    cfg = make_config(
        unet,
        expression_embed_dim=enc_cfg.hidden_size,
        expression_layers=expression_layers,
        identity_dim=identity_dim,
        expression_tokens=expression_tokens,
        image_encoder=ref,
        face_backend=face_backend,
        base_model=base_name,
    )
    if base_name is not None:
        cfg.base_digest = base_digest(base_name)
    out.mkdir(parents=True, exist_ok=True)
    cfg.image_encoder = copy_encoder_into(ref, out)
    id_sd, exp_sd = init_branch_weights(unet, cfg, seed=seed)
    save_branch_weights(out, id_sd, exp_sd)
    cfg.save(out)
    return cfg


def load_adapter_into(pipe, adapter: str | Path, base_name: str = "the base pipeline"):
    """Load an adapter folder into a diffusers SD/SDXL pipeline through diffusers' own ``load_ip_adapter``.

    Checks compatibility first (one clear error naming both models, before any tensor is read). Returns
    ``(config, image_encoder)``; the encoder is registered on the pipeline so ``.to()`` and offloading move it.
    """
    adapter_dir = resolve_adapter(adapter)
    cfg = EmojiDiffConfig.load(adapter_dir)
    cfg.check_compatible(pipe.unet, str(adapter), base_name)
    check_weight_files(adapter_dir, cfg)
    encoder = load_image_encoder(cfg, adapter_dir, dtype=pipe.unet.dtype).to(pipe.unet.device)
    if hasattr(pipe, "image_encoder"):
        pipe.register_modules(image_encoder=encoder)
    pipe.load_ip_adapter(
        str(adapter_dir),
        subfolder="",
        weight_name=[IDENTITY_WEIGHTS, EXPRESSION_WEIGHTS],
        image_encoder_folder=None,
        local_files_only=True,
    )
    return cfg, encoder


def copy_adapter(src: str | Path, dst: str | Path, dtype=None, note: dict | None = None) -> Path:
    """Copy an adapter folder (config, both weight files, image encoder), optionally casting the weights to ``dtype``
    (shipped adapters are stored in float16: half the size; loading casts them to the pipeline's dtype) and adding
    ``note`` (how it was made) to ``emojidiff.json``."""
    import shutil

    from safetensors.torch import load_file

    src, dst = resolve_adapter(src), Path(dst)
    cfg = EmojiDiffConfig.load(src)
    check_weight_files(src, cfg)
    dst.mkdir(parents=True, exist_ok=True)
    save_branch_weights(dst, load_file(str(src / IDENTITY_WEIGHTS)), load_file(str(src / EXPRESSION_WEIGHTS)), dtype)
    if (src / "image_encoder").is_dir() and src.resolve() != dst.resolve():
        shutil.rmtree(dst / "image_encoder", ignore_errors=True)
        shutil.copytree(src / "image_encoder", dst / "image_encoder")
    if note:
        cfg.training = {**(cfg.training or {}), **note}
    cfg.save(dst)
    return dst


def describe_adapter(adapter: str | Path) -> dict:
    cfg = EmojiDiffConfig.load(resolve_adapter(adapter))
    return json.loads(cfg.to_json())


__all__ = [
    "BUNDLED_ADAPTERS",
    "base_digest",
    "copy_adapter",
    "init_adapter",
    "load_adapter_into",
    "make_config",
    "meta_unet",
    "read_unet_config",
    "resolve_base",
    "BUNDLED_BASES",
    "resolve_adapter",
]
