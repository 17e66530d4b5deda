"""Per-step cost of the E-Adapter at real SD1.5 / SDXL sizes (random weights, CPU or GPU).

Times one UNet call (batch 2, as with classifier-free guidance) with and without the adapter, in the same process
on the same UNet, alternating the two so that machine load hits both alike; reports medians and the overhead ratio.
Also times the one-off encodings (template through CLIP ViT-H + resampler, identity through its projection) and
the same calls served from the pipeline's cache.

    OMP_NUM_THREADS=1 python bench/adapter_overhead.py --family sd15 sdxl --repeats 5 --json bench/results/overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from emojidiff.testing import SD15_UNET_CONFIG as SD15_UNET  # noqa: E402
from emojidiff.testing import SDXL_UNET_CONFIG as SDXL_UNET  # noqa: E402

VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
             image_size=224, projection_dim=1024, hidden_act="gelu")  # fmt: skip
FAMILIES = {"sd15": (SD15_UNET, 512), "sdxl": (SDXL_UNET, 768)}


def _timed(fn, device) -> float:
    """Seconds one call takes: wall time on a GPU; on a CPU, the process's CPU time.

    CPU time is what a step costs; wall time on a shared machine also counts the time other processes held the cores,
    which is noise here (2 shared cores). Wall times are kept too, in ``_WALL``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    _WALL.append(wall)
    return wall if device.type == "cuda" else cpu


_WALL: list[float] = []


def adapter_param_count(processors, hid_proj: torch.nn.Module) -> int:
    """Parameters of the adapter's attention processors and projection, each counted once.

    Counted on the modules themselves: the UNet holds the adapter's processors only while they are installed, and the
    timing loop ends with either variant installed depending on the parity of ``repeats`` (counting through
    ``unet.named_parameters()`` gave 33.6 M instead of 71.9 M for SD1.5 after 20 repeats)."""
    params = {id(p): p for m in (*processors, hid_proj) if isinstance(m, torch.nn.Module) for p in m.parameters()}
    return sum(p.numel() for p in params.values())


@torch.no_grad()
def bench_family(family: str, repeats: int, device, dtype, resolution: int | None, cached: bool = False) -> dict:
    """``cached``: the projections are computed once and reused, as in EmojiDiffPipeline's later steps."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from emojidiff.adapter import make_config
    from emojidiff.adapter.weights import init_branch_weights

    unet_cfg, default_res = FAMILIES[family]
    res = resolution or default_res
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**unet_cfg).to(device, dtype).eval()
    build_s = time.perf_counter() - t0
    plain = {name: AttnProcessor2_0() for name in unet.attn_processors}
    unet.set_attn_processor(dict(plain))

    cfg = make_config(unet, expression_embed_dim=VIT_H["hidden_size"], expression_layers="all")
    id_sd, exp_sd = init_branch_weights(unet, cfg)
    parts = ("image_proj", "ip_adapter")
    split = [{p: {k[len(p) + 1 :]: v for k, v in sd.items() if k.startswith(p + ".")} for p in parts}
             for sd in (id_sd, exp_sd)]  # fmt: skip
    unet._load_ip_adapter_weights(split)
    unet.to(device, dtype)
    if cached:
        from emojidiff.adapter.step_cache import install_step_cache

        install_step_cache(unet)
    with_adapter = unet.attn_processors
    hid_proj = unet.encoder_hid_proj

    def use(adapter: bool):
        # the resampler's own attention layers count as UNet processors while it is attached: attach it first
        unet.encoder_hid_proj = hid_proj if adapter else None
        unet.config.encoder_hid_dim_type = "ip_image_proj" if adapter else None
        unet.set_attn_processor(dict(with_adapter if adapter else plain))  # diffusers consumes the dict

    lat = res // 8
    sample = torch.randn(2, 4, lat, lat, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet_cfg["cross_attention_dim"], device=device, dtype=dtype)
    added = {}
    if family == "sdxl":
        added = {"text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * 2, device=device, dtype=dtype)}  # fmt: skip
    ip = [torch.randn(2, 1, cfg.identity_dim, device=device, dtype=dtype),
          torch.randn(2, 1, 257, cfg.expression_embed_dim, device=device, dtype=dtype)]  # fmt: skip

    def step(adapter: bool):
        kw = dict(added, image_embeds=ip) if adapter else added
        unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=kw)

    times: dict[bool, list[float]] = {False: [], True: []}
    walls: dict[bool, list[float]] = {False: [], True: []}
    for flag in (False, True):  # warm-up, not recorded
        use(flag)
        _timed(lambda f=flag: step(f), device)
    for r in range(repeats):
        for flag in (False, True) if r % 2 == 0 else (True, False):
            use(flag)
            times[flag].append(_timed(lambda f=flag: step(f), device))
            walls[flag].append(_WALL[-1])
    base, ours = statistics.median(times[False]), statistics.median(times[True])
    n_adapter = adapter_param_count(with_adapter.values(), hid_proj)
    return {
        "family": family,
        "resolution": res,
        "build_s": round(build_s, 2),
        "clock": "wall" if device.type == "cuda" else "process CPU time",
        "projections_cached": cached,
        "step_s_without": [round(t, 4) for t in times[False]],
        "step_s_with": [round(t, 4) for t in times[True]],
        "wall_s_without": [round(t, 4) for t in walls[False]],
        "wall_s_with": [round(t, 4) for t in walls[True]],
        "median_without_s": round(base, 4),
        "median_with_s": round(ours, 4),
        "overhead_pct": round(100 * (ours / base - 1), 2),
        # each repeat times both variants back to back: the median of those pairs' ratios resists load swings
        "paired_overhead_pct": round(
            100 * (statistics.median(w / o for o, w in zip(times[False], times[True], strict=True)) - 1), 2
        ),
        "adapter_params": n_adapter,
        "expression_layers": len(cfg.expression_layers),
    }


@torch.no_grad()
def count_flops(family: str, resolution: int | None, exp_layers: str = "all") -> dict:
    """Exact FLOPs of one UNet call (batch 2) with and without the adapter, counted on the meta device.

    Unlike timings on a shared CPU, this is deterministic: it is the compute the adapter adds, whatever the machine.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection
    from torch.utils.flop_counter import FlopCounterMode

    from emojidiff.adapter import layer_scale_dict, make_config
    from emojidiff.adapter.layers import cross_attention_processors
    from emojidiff.adapter.weights import build_expression_projection, build_identity_projection

    unet_cfg, default_res = FAMILIES[family]
    res = resolution or default_res
    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel(**unet_cfg).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    cfg = make_config(unet, expression_embed_dim=VIT_H["hidden_size"], expression_layers=exp_layers)
    lat, d = res // 8, unet_cfg["cross_attention_dim"]
    sample, text = torch.randn(2, 4, lat, lat, device=meta), torch.randn(2, 77, d, device=meta)
    added = {}
    if family == "sdxl":
        added = {"text_embeds": torch.randn(2, 1280, device=meta), "time_ids": torch.randn(2, 6, device=meta)}

    def flops(**extra) -> int:
        with FlopCounterMode(display=False) as fc:
            unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs={**added, **extra})
        return fc.get_total_flops()

    base = flops()
    sizes = dict(zip(cross_attention_processors(unet), cfg.hidden_sizes, strict=True))
    with meta:
        procs = {n: IPAdapterAttnProcessor2_0(sizes[n], d, num_tokens=(4, cfg.expression_tokens), scale=[1.0, 1.0])
                 if n in sizes else AttnProcessor2_0() for n in unet.attn_processors}  # fmt: skip
        proj = MultiIPAdapterImageProjection([build_identity_projection(cfg), build_expression_projection(cfg)])
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = proj, "ip_image_proj"
    # the expression-layer map as diffusers applies it: per-block scales, 0 outside the map (those layers skip it)
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    exp_scales = _maybe_expand_lora_scales(unet, [layer_scale_dict(cfg.expression_layers, cfg.attention_blocks, 1.0)],
                                           default_scale=0.0)[0]  # fmt: skip
    for n in sizes:
        procs_scale = [1.0, next((s for k, s in exp_scales.items() if n.startswith(k)), 0.0)]
        unet.attn_processors[n].scale = procs_scale
    ip = [
        torch.randn(2, 1, cfg.identity_dim, device=meta),
        torch.randn(2, 1, 257, cfg.expression_embed_dim, device=meta),
    ]
    ours = flops(image_embeds=ip)
    # EmojiDiffPipeline computes the projections once per generation: count a later step of the same generation
    from emojidiff.adapter.step_cache import install_step_cache

    install_step_cache(unet)
    flops(image_embeds=ip)
    later = flops(image_embeds=ip)
    return {"family": family, "resolution": res, "expression_layers": exp_layers, "tflops_without": base / 1e12,
            "tflops_with": ours / 1e12, "flops_overhead_pct": round(100 * (ours / base - 1), 3),
            "tflops_with_cached_projection": later / 1e12,
            "flops_overhead_cached_pct": round(100 * (later / base - 1), 3)}  # fmt: skip


@torch.no_grad()
def bench_encodings(device, dtype, repeats: int) -> dict:
    """One-off cost of encoding a template (ViT-H/14 patch features + resampler) and an identity embedding."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from emojidiff.adapter import EmojiDiffConfig
    from emojidiff.adapter.weights import build_expression_projection, build_identity_projection

    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)).to(device, dtype).eval()
    cfg = EmojiDiffConfig("sd15", 768, [], [], [], expression_embed_dim=1280)
    exp_proj = build_expression_projection(cfg).to(device, dtype)
    id_proj = build_identity_projection(cfg).to(device, dtype)
    px = torch.randn(1, 3, 224, 224, device=device, dtype=dtype)
    emb = torch.randn(1, 512, device=device, dtype=dtype)
    enc_t, proj_t, id_t = [], [], []
    for _ in range(repeats):
        enc_t.append(_timed(lambda: enc(px, output_hidden_states=True), device))
        feats = enc(px, output_hidden_states=True).hidden_states[-2]
        proj_t.append(_timed(lambda f=feats: exp_proj(f), device))
        id_t.append(_timed(lambda: id_proj(emb), device))
    return {
        "template_image_encoder_s": round(statistics.median(enc_t), 4),
        "template_resampler_s": round(statistics.median(proj_t), 5),
        "identity_projection_s": round(statistics.median(id_t), 6),
    }


def bench_cache(repeats: int) -> dict:
    """Cached vs uncached template encoding through EmojiDiffPipeline (tiny models: measures the cache itself)."""
    import tempfile

    from emojidiff import EmojiDiffPipeline
    from emojidiff.adapter import init_adapter
    from emojidiff.testing import random_image, tiny_image_encoder, tiny_sd_pipeline

    with tempfile.TemporaryDirectory() as d:
        tiny_sd_pipeline().save_pretrained(f"{d}/base")
        tiny_image_encoder().save_pretrained(f"{d}/enc")
        init_adapter(f"{d}/base", f"{d}/ad", image_encoder=f"{d}/enc", identity_dim=16)
        pipe = EmojiDiffPipeline.from_pretrained(f"{d}/base", adapter=f"{d}/ad")
        first, again = [], []
        for i in range(repeats):
            img = random_image(100 + i, 256)
            first.append(_timed(lambda im=img: pipe.encode_expression(im), torch.device("cpu")))
            again.append(_timed(lambda im=img: pipe.encode_expression(im), torch.device("cpu")))
    return {"tiny_template_first_s": round(statistics.median(first), 5),
            "tiny_template_cached_s": round(statistics.median(again), 6)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", nargs="+", default=["sd15", "sdxl"], choices=sorted(FAMILIES))
    ap.add_argument("--repeats", type=int, default=5, help="timed UNet calls per variant (after one warm-up each)")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 for sd15, 768 for sdxl)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs (seconds, exact) and skip the timings")
    ap.add_argument("--skip-encodings", action="store_true")
    ap.add_argument("--cached", action="store_true", help="time later steps (projections cached, as in the pipeline)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype),
        "torch": torch.__version__,
        "flops": [],
        "results": [],
    }
    for fam in args.family:
        for layers in ("all", "none"):
            r = count_flops(fam, args.resolution, layers)
            out["flops"].append(r)
            print(f"{fam} {r['resolution']}px, expression layers {layers}: {r['tflops_without']:.3f} -> "
                  f"{r['tflops_with']:.3f} TFLOP per step ({r['flops_overhead_pct']:+.2f}%; "
                  f"{r['flops_overhead_cached_pct']:+.2f}% with projections cached)", flush=True)  # fmt: skip
    if not args.flops_only:
        for fam in args.family:
            r = bench_family(fam, args.repeats, device, dtype, args.resolution, cached=args.cached)
            out["results"].append(r)
            print(f"{fam} {r['resolution']}px: {r['median_without_s']:.3f}s -> {r['median_with_s']:.3f}s per step "
                  f"({r['overhead_pct']:+.2f}%; paired {r['paired_overhead_pct']:+.2f}%; {r['clock']}), "
                  f"adapter {r['adapter_params'] / 1e6:.1f}M params", flush=True)  # fmt: skip
        if not args.skip_encodings:
            out["encodings"] = bench_encodings(device, dtype, args.repeats)
            out["cache"] = bench_cache(args.repeats)
            print(json.dumps({**out["encodings"], **out["cache"]}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
