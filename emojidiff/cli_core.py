"""Core commands: ``init-adapter`` and ``generate``."""

from __future__ import annotations

from pathlib import Path

import click

from .cli import main, user_errors


@main.command("init-adapter")
@click.option("--base", required=True, help="Base model: a diffusers SD1.5/SDXL-family hub id or local folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Adapter folder to write.")
@click.option(
    "--image-encoder",
    default=None,
    help="CLIPVisionModelWithProjection for the expression branch: a local folder (copied into the adapter) or a "
    "hub id. Default: the base's own image_encoder/ folder when it is local and has one (the bundled `synthetic` "
    "base does), else h94/IP-Adapter models/image_encoder (CLIP ViT-H/14, as IP-Adapter Plus).",
)
@click.option("--image-encoder-subfolder", default=None, help="Subfolder of --image-encoder holding the model.")
@click.option(
    "--expression-layers",
    default="all",
    show_default=True,
    help="Cross-attention blocks that get the expression branch, comma-separated: all, none, down, mid, up, a block "
    "(up.block_0) or one layer (up.block_0.1). Layers outside this map never see the template.",
)
@click.option("--identity-dim", default=512, show_default=True, help="Identity embedding size (ArcFace: 512).")
@click.option("--expression-tokens", default=16, show_default=True, help="Number of expression tokens.")
@click.option(
    "--face-backend", default="none", show_default=True, help="Face backend recorded as the adapter's default."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
@user_errors
def init_adapter_cmd(
    base,
    out,
    image_encoder,
    image_encoder_subfolder,
    expression_layers,
    identity_dim,
    expression_tokens,
    face_backend,
    seed,
) -> None:
    """Write an untrained E-Adapter for BASE: the starting point of training.

    The folder holds emojidiff.json, ip_adapter_identity.safetensors, ip_adapter_expression.safetensors and, when
    --image-encoder is a local folder, a copy of it in image_encoder/.
    """
    from .adapter import init_adapter, resolve_base
    from .faces import get_face_analyzer

    get_face_analyzer(face_backend)  # unknown names fail here, not at generation time
    own_encoder = Path(resolve_base(base)) / "image_encoder"
    if image_encoder is None and (own_encoder / "config.json").is_file():
        image_encoder = str(own_encoder)
    cfg = init_adapter(
        base,
        out,
        image_encoder=image_encoder,
        image_encoder_subfolder=image_encoder_subfolder,
        expression_layers=expression_layers,
        identity_dim=identity_dim,
        expression_tokens=expression_tokens,
        face_backend=face_backend,
        seed=seed,
    )
    layers = ", ".join(cfg.expression_layers) or "none"
    click.echo(
        f"wrote {out}: {cfg.base_family} adapter, identity {cfg.identity_dim}-d -> {cfg.identity_tokens} tokens on "
        f"{len(cfg.hidden_sizes)} layers, expression {cfg.expression_tokens} tokens on "
        f"{len(cfg.expression_layers)}/{len(cfg.attention_blocks)} blocks ({layers})"
    )


def output_paths(out: str, n: int) -> list[Path]:
    """``out.png`` for one image; ``out_0.png … out_{n-1}.png`` for several."""
    p = Path(out)
    if n == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{i}{p.suffix or '.png'}") for i in range(n)]


#: bundled adapters `generate` falls back to, best first
DEFAULT_ADAPTERS = ("synthetic-ica", "synthetic-idi")


def default_adapter() -> str:
    """The first bundled adapter of DEFAULT_ADAPTERS that is installed."""
    from .adapter import resolve_adapter
    from .errors import AdapterError

    for name in DEFAULT_ADAPTERS:
        try:
            resolve_adapter(name)  # raises when the bundle is not installed
            return name
        except AdapterError:
            continue
    raise AdapterError(f"no --adapter given and no bundled adapter ({', '.join(DEFAULT_ADAPTERS)}) is installed")


@main.command("generate")
@click.option(
    "--identity",
    "identities",
    multiple=True,
    required=True,
    help="Identity image, or .npy embedding of the adapter's dimension. Repeat for several photos of the "
    "same person (embeddings are averaged and renormalised).",
)
@click.option("--expression", required=True, help="Expression template image (any person, any style).")
@click.option("--out", required=True, help="Output PNG. With --num-images N > 1: OUT_0.png … OUT_{N-1}.png.")
@click.option("--base", default=None, help="Base model (hub id or folder). Default: the base recorded in the adapter.")
@click.option(
    "--adapter",
    default=None,
    help="Adapter folder or bundled adapter name. Default: the best bundled one installed (synthetic-ica, else "
    "synthetic-idi), on the bundled synthetic base: no download.",
)
@click.option(
    "--prompt",
    default=None,
    help="Text prompt. Default: 'a portrait photo of a person' ('a portrait of a person' on the synthetic base, "
    "whose vocabulary has no 'photo').",
)
@click.option("--negative-prompt", default=None)
@click.option("--id-scale", default=1.0, show_default=True, help="Strength of the identity branch.")
@click.option("--exp-scale", default=1.0, show_default=True, help="Strength of the expression branch.")
@click.option("--steps", default=30, show_default=True, help="Denoising steps.")
@click.option("--guidance", default=5.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", default=0, show_default=True, help="Same arguments and seed give byte-identical PNGs.")
@click.option("--num-images", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--height", default=None, type=int, help="Default: the base model's native size.")
@click.option("--width", default=None, type=int)
@click.option(
    "--face-backend", default=None, help="Face backend (default: the adapter's). `none`: whole image is the face."
)
@click.option("--face-index", default=None, type=int, help="Which face to use when an image has several (0 = best).")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="Weights dtype (default: float16 on cuda, float32 on cpu).",
)
@user_errors
def generate_cmd(
    identities,
    expression,
    out,
    base,
    adapter,
    prompt,
    negative_prompt,
    id_scale,
    exp_scale,
    steps,
    guidance,
    seed,
    num_images,
    height,
    width,
    face_backend,
    face_index,
    device,
    dtype,
) -> None:
    """Generate a portrait of the --identity person wearing the --expression template's expression."""
    import torch

    from .adapter import EmojiDiffConfig, resolve_adapter
    from .encode import FaceEncoder
    from .errors import FaceBackendError, InputError
    from .faces import get_face_analyzer
    from .io import is_embedding_path
    from .pipeline import EmojiDiffPipeline

    # Every input is checked (files read, faces found, embeddings encoded) before any model loads: a bad input fails
    # in a second, not after the base model has loaded. The results feed the pipeline directly.
    adapter = adapter or default_adapter()
    cfg = EmojiDiffConfig.load(resolve_adapter(adapter))
    if prompt is None:
        prompt = "a portrait of a person" if cfg.base_model == "synthetic" else "a portrait photo of a person"
    analyzer = get_face_analyzer(face_backend or cfg.face_backend)
    for item in identities:
        if not is_embedding_path(item) and analyzer.identity_dim is None:
            raise FaceBackendError(
                f"identity image '{item}' needs a face recogniser, and face backend '{analyzer.name}' has none: "
                "pass a .npy embedding, or choose a --face-backend with a recogniser"
            )
    faces = FaceEncoder(analyzer, cfg.identity_dim)
    identity = faces.identity(list(identities), face_index)
    crop = faces.crop(expression, face_index)
    for flag, value in (("--steps", steps), ("--height", height), ("--width", width)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be positive, got {value}")
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None and value % 8:
            raise InputError(f"{flag} must be a multiple of 8 (the VAE's downsampling), got {value}")
    paths = output_paths(out, num_images)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float16 if device.startswith("cuda") else torch.float32)

    pipe = EmojiDiffPipeline.from_pretrained(base, adapter=adapter, face_backend=analyzer, torch_dtype=torch_dtype)
    pipe.to(device)
    images = pipe(
        prompt=prompt,
        identity=identity,
        expression=crop,
        template_is_crop=True,
        negative_prompt=negative_prompt,
        id_scale=id_scale,
        exp_scale=exp_scale,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
        num_images=num_images,
        height=height,
        width=width,
        face_index=face_index,
    ).images
    for img, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        img.save(tmp, format="PNG")
        tmp.replace(path)  # atomic: an interrupted run never leaves a half-written PNG
        click.echo(str(path))
