"""EmojiDiffPipeline on tiny SD1.5- and SDXL-shaped pipelines."""

import numpy as np
import pytest
import torch

from emojidiff import EmojiDiffPipeline
from emojidiff.adapter import EXPRESSION_WEIGHTS, IDENTITY_WEIGHTS
from emojidiff.adapter.image_encoder import image_processor
from emojidiff.testing import random_embedding, random_image

KW = dict(num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=5.0)


def _stock_embeds(adapter_dir, emb, template, do_cfg=True):
    """What a plain-diffusers user computes by hand (the README snippet): no EmojiDiff code involved."""
    from transformers import CLIPVisionModelWithProjection

    enc = CLIPVisionModelWithProjection.from_pretrained(f"{adapter_dir}/image_encoder")
    px = image_processor(enc.config.image_size)(images=template, return_tensors="pt").pixel_values
    with torch.no_grad():
        feats = enc(px, output_hidden_states=True).hidden_states[-2]
        null = enc(torch.zeros_like(px), output_hidden_states=True).hidden_states[-2]
    idv = torch.from_numpy(emb / np.linalg.norm(emb))[None, None]
    if not do_cfg:
        return [idv, feats[:, None]]
    return [torch.cat([torch.zeros_like(idv), idv]), torch.cat([null, feats])[:, None]]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_stock_diffusers_gives_the_same_image(family, request):
    from diffusers import AutoPipelineForText2Image

    base = request.getfixturevalue(f"{family}_base")
    adapter = request.getfixturevalue(f"{family}_adapter")
    emb, template = random_embedding(0), random_image(1)

    ours = EmojiDiffPipeline.from_pretrained(base, adapter=adapter)
    a = ours("a portrait", identity=emb, expression=template, id_scale=0.8, exp_scale=1.3, seed=7, **KW).images

    stock = AutoPipelineForText2Image.from_pretrained(base)
    stock.load_ip_adapter(
        adapter, subfolder="", weight_name=[IDENTITY_WEIGHTS, EXPRESSION_WEIGHTS], image_encoder_folder=None
    )
    stock.set_ip_adapter_scale([0.8, {"up": {"block_0": [0.0, 1.3, 0.0]}, "mid": 1.3}])
    b = stock(
        "a portrait",
        ip_adapter_image_embeds=_stock_embeds(adapter, emb, template),
        generator=torch.Generator().manual_seed(7),
        **KW,
    ).images
    assert a.shape == (1, 64, 64, 3)
    # identical up to float rounding of the embedding normalisation (far below one 8-bit level)
    assert np.abs(a - b).max() < 1e-4
    # ... and the branches matter: without the template the image changes
    c = ours("a portrait", identity=emb, expression=None, seed=7, **KW).images
    assert np.abs(a - c).max() > 1e-3


def _attn2_modules(unet):
    return {n: m for n, m in unet.named_modules() if n.endswith("attn2")}


def test_layers_outside_the_map_are_untouched_by_the_template(sd_pipe):
    """Call every cross-attention processor on the same inputs with two different templates."""
    from emojidiff.adapter.layers import block_key

    unet = sd_pipe.unet
    sd_pipe.set_scales(1.0, 1.0)
    emb = torch.from_numpy(sd_pipe.encode_identity(random_embedding(0)))[None, None]
    feats = [sd_pipe.encode_expression(random_image(s))[None, None] for s in (1, 2)]
    tokens = [unet.encoder_hid_proj([emb, f]) for f in feats]
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    changed = {}
    for name, attn in _attn2_modules(unet).items():
        x = torch.randn(1, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outs = [attn(x, encoder_hidden_states=(text, t)) for t in tokens]
        changed[block_key(name + ".processor")] = not torch.equal(outs[0], outs[1])
    assert changed == {
        "down.block_1.0": False,
        "down.block_1.1": False,
        "up.block_0.0": False,
        "up.block_0.1": True,
        "up.block_0.2": False,
        "mid": True,
    }


def test_unet_activations_before_the_map_are_identical(sd_base, models_dir, encoder_dir, make_adapter):
    """End to end: with the map on the last layer executed, every earlier cross-attention output is bit-identical.

    Only the first UNet call is compared: later steps see latents the template changed through the mapped layer.
    """
    adapter = make_adapter(sd_base, str(models_dir / "adapter_last"), encoder_dir, "up.block_0.2")
    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    records: list[dict] = [{}, {}]
    for run, seed in enumerate((1, 2)):
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, n=n, r=run: records[r].setdefault(n, out.clone()))
            for n, m in _attn2_modules(pipe.unet).items()
        ]
        pipe("a portrait", identity=random_embedding(0), expression=random_image(seed), seed=0, **KW)
        for h in hooks:
            h.remove()
    for name in records[0]:
        same = torch.equal(records[0][name], records[1][name])
        assert same == ("up_blocks.0.attentions.2" not in name), name


def test_identity_embeddings_are_averaged_and_renormalised(sd_pipe):
    a, b = random_embedding(3), random_embedding(4)
    got = sd_pipe.encode_identity([a, b])
    want = a / np.linalg.norm(a) + b / np.linalg.norm(b)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd_pipe.encode_identity([b, a]), got, atol=1e-6)
    np.testing.assert_allclose(sd_pipe.encode_identity(a), a / np.linalg.norm(a), atol=1e-6)
    np.testing.assert_allclose(sd_pipe.encode_identity(np.stack([a, b])), got, atol=1e-6)


def test_identity_from_npy_files(sd_pipe, files):
    np.testing.assert_allclose(
        sd_pipe.encode_identity(files["embedding"]), sd_pipe.encode_identity(random_embedding(0))
    )


def test_same_seed_same_image_other_seed_other_image(sd_pipe):
    args = dict(identity=random_embedding(0), expression=random_image(1), **KW)
    a = sd_pipe("a portrait", seed=3, **args).images
    b = sd_pipe("a portrait", seed=3, **args).images
    c = sd_pipe("a portrait", seed=4, **args).images
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scales_change_the_image(sd_pipe):
    args = dict(identity=random_embedding(0), expression=random_image(1), seed=3, **KW)
    base = sd_pipe("a portrait", **args).images
    assert np.abs(sd_pipe("a portrait", id_scale=0.0, **{**args}).images - base).max() > 1e-4
    assert np.abs(sd_pipe("a portrait", exp_scale=0.0, **args).images - base).max() > 1e-4


def test_template_encoding_is_cached(sd_pipe, monkeypatch):
    template = random_image(11)
    first = sd_pipe.encode_expression(template)
    calls = []
    monkeypatch.setattr(sd_pipe, "_features", lambda crop: calls.append(1))
    again = sd_pipe.encode_expression(template.copy())  # same pixels, another object: still cached
    assert calls == [] and torch.equal(first, again)


def test_several_prompts_share_identity_and_expression(sd_pipe):
    args = dict(identity=random_embedding(0), expression=random_image(1), seed=0, **KW)
    out = sd_pipe(["a portrait", "a sketch"], num_images=2, **args)
    assert out.images.shape == (4, 64, 64, 3)


def test_num_images_and_no_cfg(sd_pipe):
    out = sd_pipe("a portrait", identity=random_embedding(0), expression=random_image(1), seed=0, num_images=3, **KW)
    assert out.images.shape == (3, 64, 64, 3)
    kw = {**KW, "guidance_scale": 1.0}
    out = sd_pipe("a portrait", identity=random_embedding(0), expression=random_image(1), seed=0, **kw)
    assert out.images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "LCMScheduler"]
)
def test_any_diffusers_scheduler(sd_pipe, scheduler):
    import diffusers

    original = sd_pipe.scheduler
    sd_pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        out = sd_pipe("a portrait", identity=random_embedding(0), expression=random_image(1), seed=0, **KW)
    finally:
        sd_pipe.scheduler = original
    assert np.isfinite(out.images).all() and out.images.shape == (1, 64, 64, 3)


def test_lora_loaded_through_diffusers_still_works_with_the_adapter(sd_base, sd_adapter, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # make a LoRA on a copy of the base, save it the diffusers way
    donor = StableDiffusionPipeline.from_pretrained(sd_base)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor.unet))

    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=sd_adapter)
    pipe.set_progress_bar_config(disable=True)
    args = dict(identity=random_embedding(0), expression=random_image(1), seed=0, **KW)
    before = pipe("a portrait", **args).images
    pipe.load_lora_weights(tmp_path, adapter_name="style")
    after = pipe("a portrait", **args).images
    assert np.abs(before - after).max() > 1e-4


def test_from_pipe_attaches_to_an_existing_pipeline(sd_base, sd_adapter):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_base)
    ours = EmojiDiffPipeline.from_pipe(pipe, sd_adapter)
    assert ours.pipe is pipe and ours.unet is pipe.unet
    out = ours("a portrait", identity=random_embedding(0), expression=random_image(1), seed=0, **KW)
    assert out.images.shape == (1, 64, 64, 3)


def test_branch_projections_run_once_per_generation(sd_pipe):
    """diffusers reruns the projections at every step; ours are cached for the call (same image, less work)."""
    calls = []
    layers = sd_pipe.unet.encoder_hid_proj.image_projection_layers
    hook = layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        kw = {**KW, "num_inference_steps": 4}
        sd_pipe("a portrait", identity=random_embedding(0), expression=random_image(1), seed=0, **kw)
        assert len(calls) == 1
        sd_pipe("a portrait", identity=random_embedding(0), expression=random_image(2), seed=0, **kw)
        assert len(calls) == 2  # a new call, new embeddings: recomputed
    finally:
        hook.remove()
    assert sd_pipe.unet.encoder_hid_proj._key is None  # nothing held between calls
