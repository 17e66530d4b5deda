"""The two branch weight files, in the layout stock diffusers' ``load_ip_adapter`` reads.

Each file holds ``image_proj.*`` (the projection, in the original IP-Adapter key naming that diffusers converts
on load) and ``ip_adapter.<k>.to_k_ip.weight`` / ``to_v_ip.weight`` for every cross-attention layer, numbered
``k = 1, 3, 5, …`` in diffusers' processor order.

- identity: IP-Adapter-FaceID projection (embedding -> MLP -> 4 tokens -> LayerNorm);
- expression: IP-Adapter-Plus resampler over the image encoder's patch features.

diffusers can load these but has no writer, and its projection classes use other key names than the files;
the renaming below is the exact inverse of diffusers' ``_convert_ip_adapter_image_proj_to_diffusers`` (the
tests check the round trip). That inverse is all we write by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, IPAdapterPlusImageProjection
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import AdapterError
from .config import EXPRESSION_WEIGHTS, IDENTITY_WEIGHTS, EmojiDiffConfig
from .layers import block_key, cross_attention_processors

RESAMPLER_DEPTH = 4  # diffusers' loader converts exactly 4 resampler layers
RESAMPLER_DIM_HEAD = 64  # and infers heads as to_q rows // 64


def build_identity_projection(cfg: EmojiDiffConfig) -> IPAdapterFaceIDImageProjection:
    return IPAdapterFaceIDImageProjection(
        image_embed_dim=cfg.identity_dim,
        cross_attention_dim=cfg.cross_attention_dim,
        mult=cfg.identity_mult,
        num_tokens=cfg.identity_tokens,
    )


def build_expression_projection(cfg: EmojiDiffConfig) -> IPAdapterPlusImageProjection:
    return IPAdapterPlusImageProjection(
        embed_dims=cfg.expression_embed_dim,
        output_dims=cfg.cross_attention_dim,
        hidden_dims=cfg.expression_hidden_dim,
        depth=RESAMPLER_DEPTH,
        dim_head=RESAMPLER_DIM_HEAD,
        heads=cfg.expression_heads,
        num_queries=cfg.expression_tokens,
    )


def faceid_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``IPAdapterFaceIDImageProjection`` keys -> IP-Adapter-FaceID file keys."""
    return {k.replace("ff.net.0.proj", "proj.0").replace("ff.net.2", "proj.2"): v for k, v in sd.items()}


_PLUS_RULES = [
    (re.compile(r"^layers\.(\d+)\.ln0\.(.*)$"), r"layers.\1.0.norm1.\2"),
    (re.compile(r"^layers\.(\d+)\.ln1\.(.*)$"), r"layers.\1.0.norm2.\2"),
    (re.compile(r"^layers\.(\d+)\.attn\.to_q\.(.*)$"), r"layers.\1.0.to_q.\2"),
    (re.compile(r"^layers\.(\d+)\.attn\.to_out\.0\.(.*)$"), r"layers.\1.0.to_out.\2"),
    (re.compile(r"^layers\.(\d+)\.ff\.0\.(.*)$"), r"layers.\1.1.0.\2"),
    (re.compile(r"^layers\.(\d+)\.ff\.1\.net\.0\.proj\.(.*)$"), r"layers.\1.1.1.\2"),
    (re.compile(r"^layers\.(\d+)\.ff\.1\.net\.2\.(.*)$"), r"layers.\1.1.3.\2"),
]


def plus_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``IPAdapterPlusImageProjection`` keys -> IP-Adapter-Plus (Resampler) file keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"^layers\.(\d+)\.attn\.to_k\.weight$", k)
        if m:
            i = m.group(1)
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat([v, sd[f"layers.{i}.attn.to_v.weight"]], dim=0)
            continue
        if re.match(r"^layers\.\d+\.attn\.to_v\.weight$", k):
            continue
        for pat, rep in _PLUS_RULES:
            if pat.match(k):
                k = pat.sub(rep, k)
                break
        out[k] = v
    return out


def _file_dict(image_proj: dict, ip_layers: dict) -> dict[str, torch.Tensor]:
    flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
    flat.update({f"ip_adapter.{k}": v for k, v in ip_layers.items()})
    return {k: v.detach().to("cpu").contiguous() for k, v in flat.items()}


@torch.no_grad()
def init_branch_weights(
    unet, cfg: EmojiDiffConfig, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Untrained weights for both branches: the starting point of training.

    Projections are randomly initialised (seeded). As in IP-Adapter, each layer's ``to_k_ip``/``to_v_ip`` start as
    copies of the text cross-attention's ``to_k``/``to_v``; expression layers outside the layer map are zero, so the
    template cannot reach them even if a user forgets the per-block scales.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        id_proj = build_identity_projection(cfg)
        exp_proj = build_expression_projection(cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    id_layers: dict[str, torch.Tensor] = {}
    exp_layers: dict[str, torch.Tensor] = {}
    modules = dict(unet.named_modules())
    for i, name in enumerate(cross_attention_processors(unet)):
        key_id = 2 * i + 1
        attn = modules[name[: -len(".processor")]]
        k, v = attn.to_k.weight.float(), attn.to_v.weight.float()
        id_layers[f"{key_id}.to_k_ip.weight"] = k.clone()
        id_layers[f"{key_id}.to_v_ip.weight"] = v.clone()
        inside = block_key(name) in cfg.expression_layers
        exp_layers[f"{key_id}.to_k_ip.weight"] = k.clone() if inside else torch.zeros_like(k)
        exp_layers[f"{key_id}.to_v_ip.weight"] = v.clone() if inside else torch.zeros_like(v)
    id_sd = _file_dict(faceid_to_original(id_proj.state_dict()), id_layers)
    exp_sd = _file_dict(plus_to_original(exp_proj.state_dict()), exp_layers)
    return id_sd, exp_sd


def branch_weights_from_unet(unet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read both branches back out of a UNet they were loaded into (after training, for saving)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    proj = getattr(unet, "encoder_hid_proj", None)
    if proj is None or len(getattr(proj, "image_projection_layers", [])) != 2:
        raise AdapterError("this UNet has no EmojiDiff adapter loaded (expected two IP-Adapter branches)")
    id_proj, exp_proj = proj.image_projection_layers
    layers: list[dict[str, torch.Tensor]] = [{}, {}]
    procs = unet.attn_processors
    for i, name in enumerate(cross_attention_processors(unet)):
        p = procs[name]
        if not isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
            raise AdapterError(f"cross-attention layer {name} has no IP-Adapter processor")
        for b in range(2):
            layers[b][f"{2 * i + 1}.to_k_ip.weight"] = p.to_k_ip[b].weight
            layers[b][f"{2 * i + 1}.to_v_ip.weight"] = p.to_v_ip[b].weight
    return (
        _file_dict(faceid_to_original(id_proj.state_dict()), layers[0]),
        _file_dict(plus_to_original(exp_proj.state_dict()), layers[1]),
    )


def save_branch_weights(directory: str | Path, id_sd: dict, exp_sd: dict, dtype: torch.dtype | None = None) -> None:
    meta = {"format": "pt"}  # one key: safetensors orders metadata arbitrarily, and files should be byte-stable
    for name, sd in ((IDENTITY_WEIGHTS, id_sd), (EXPRESSION_WEIGHTS, exp_sd)):
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
        tmp = Path(directory, name + ".tmp")
        save_file(sd, str(tmp), metadata=meta)
        tmp.replace(Path(directory, name))  # atomic: never a half-written weight file


def check_weight_files(directory: str | Path, cfg: EmojiDiffConfig) -> None:
    """Check both files exist and their shapes agree with the config, reading headers only (no tensors)."""
    n_layers = len(cfg.hidden_sizes)
    for name, dim in ((IDENTITY_WEIGHTS, cfg.cross_attention_dim), (EXPRESSION_WEIGHTS, cfg.cross_attention_dim)):
        path = Path(directory, name)
        if not path.is_file():
            raise AdapterError(f"adapter '{directory}' is missing {name}")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                ks = sorted(k for k in keys if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight"))
                if len(ks) != n_layers:
                    raise AdapterError(
                        f"adapter file '{path}' has {len(ks)} cross-attention layers but its config says {n_layers}"
                    )
                shape = f.get_slice(ks[0]).get_shape() if ks else None
        except AdapterError:
            raise
        except Exception as e:  # safetensors raises several types for damaged files
            raise AdapterError(f"adapter file '{path}' is not a readable safetensors file ({e})") from None
        if shape is not None and shape[1] != dim:
            raise AdapterError(
                f"adapter file '{path}' projects from dimension {shape[1]}, but its config says cross-attention "
                f"dim {dim}"
            )
