"""Cost of one ICA optimisation step against one stage-1 step (time and peak memory), on CPU or GPU.

One :class:`~emojidiff.ica.trainer.ICATrainer` is built on a world (random weights except in ``synthetic``) and its
modes are toggled between steps, in the same process on the same weights, alternating so that machine load hits every
mode alike:

* ``stage1``: the ICA weights λ_id = λ_exp = λ_align = 0, which is exactly a stage-1 step (see tests/test_ica.py);
* ``ica``: diffusion loss on its own pass + identity-only pass + one-step pass through the VAE decoder;
* ``ica-shared``: the diffusion loss on the one-step pass (one UNet pass fewer);
* ``ica-taesd`` / ``ica-shared-taesd``: the same with a TAESD-sized ``AutoencoderTiny`` decoding x̂0.

Worlds: ``tiny`` (the test models, 64 px), ``sd15`` (the real SD1.5 UNet and VAE architectures with random
weights; a 2-layer 768-wide text encoder and a tiny image encoder, since both only encode once per step without
gradients in every mode; face models: an IResNet-50 recogniser and an IResNet-18 68-point landmark regressor on
112 px resizes, random weights) and ``synthetic`` (the shipped synthetic world as configs/synthetic/ica.yaml trains
it: bundled base, ``synthetic-idi`` as the starting adapter, face backend and ICA face models ``synthetic``, 64 px,
batch 32, round-0 triplets of 32 people rendered on the fly; its TAESD-shaped decoder, random weights, has two
upsampling stages and 8 latent channels to match the world's 4x VAE). Memory: the activations autograd saves for
the backward pass (distinct tensors, parameters excluded; device-independent), and the peak allocation (CUDA) or the
peak resident set size sampled every 2 ms (CPU; process-wide and never falling, since freed memory stays with the
allocator, so on a CPU only the first mode's figure is its own; ``tracemalloc`` cannot see torch's allocator at all).

    OMP_NUM_THREADS=2 python bench/ica_step.py --world tiny --repeats 5
    OMP_NUM_THREADS=2 python bench/ica_step.py --world sd15 --resolution 256 --repeats 2 \
        --json bench/results/ica_step_sd15.json
    OMP_NUM_THREADS=1 python bench/ica_step.py --world synthetic --repeats 5 \
        --json bench/results/ica_step_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("stage1", "ica", "ica-shared", "ica-taesd", "ica-shared-taesd")


class BenchFaceModels:
    """IResNet-50 identity + IResNet-18 68-point landmark ratios on 112 px resizes (random weights); for the tiny
    world, random linear maps of 4x4-pooled pixels (as the test stubs), so the tiny UNet is not swamped."""

    name = "bench-iresnet"
    needs_points = False

    def __init__(self, small: bool):
        from emojidiff.faces.iresnet import IResNet
        from emojidiff.ica.face_models import ibug68_ratios

        torch.manual_seed(0)
        if small:
            self.size = 4
            self.id_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16)).requires_grad_(False)
            self.lm_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 136)).requires_grad_(False)
        else:
            self.size = 112
            self.id_net = IResNet((3, 4, 14, 3), num_features=512).eval().requires_grad_(False)
            self.lm_net = IResNet((2, 2, 2, 2), num_features=136).eval().requires_grad_(False)
        self._ratios = ibug68_ratios

    def _in(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 4:
            return F.adaptive_avg_pool2d(images.float(), 4)
        return F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)

    def identity(self, images, points5=None):
        return F.normalize(self.id_net(self._in(images)), dim=-1)

    def expression(self, images, points5=None):
        return self._ratios(self.lm_net(self._in(images)).reshape(-1, 68, 2))


def build_world(kind: str, root: Path, resolution: int, n: int) -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from emojidiff.adapter import init_adapter
    from emojidiff.data import Triplet, write_manifest
    from emojidiff.testing import (
        SD15_UNET_CONFIG,
        _scheduler,
        _text_config,
        random_image,
        tiny_image_encoder,
        tiny_sd_pipeline,
        tiny_tokenizer,
    )

    torch.manual_seed(0)
    if kind == "synthetic":  # the shipped world; the first 8 of write_round0's people are validation only
        from emojidiff.adapter import resolve_adapter, resolve_base
        from emojidiff.synthetic.pairs import write_round0

        write_round0(root / "data", n_people=max(40, 8 + -(-n // 2)), per_person=2)
        AutoencoderTiny(encoder_block_out_channels=(64, 64, 64), decoder_block_out_channels=(64, 64, 64),
                        num_encoder_blocks=(1, 3, 3), num_decoder_blocks=(3, 3, 1),
                        latent_channels=8).save_pretrained(root / "taesd")  # fmt: skip
        return {"base": resolve_base("synthetic"), "adapter": str(resolve_adapter("synthetic-idi")),
                "manifest": str(root / "data" / "triplets.jsonl"), "taesd": str(root / "taesd")}  # fmt: skip
    if kind == "tiny":
        pipe, id_dim = tiny_sd_pipeline(), 16
    else:
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
        )  # fmt: skip
        tok = tiny_tokenizer()
        tcfg = _text_config(tok, projection_dim=768, hidden_size=768)
        tcfg.num_hidden_layers, tcfg.num_attention_heads, tcfg.intermediate_size = 2, 12, 3072
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(tcfg), tokenizer=tok, unet=unet,
                                       scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                       image_encoder=None, requires_safety_checker=False)  # fmt: skip
        id_dim = 512
    pipe.save_pretrained(root / "base")
    del pipe
    tiny_image_encoder().save_pretrained(root / "encoder")
    # TAESD's layout; for the tiny world's 2x VAE, only one upsampling stage so that it decodes at the same size
    small = dict(encoder_block_out_channels=(64, 64), decoder_block_out_channels=(64, 64), num_encoder_blocks=(1, 3),
                 num_decoder_blocks=(3, 1))  # fmt: skip
    AutoencoderTiny(**(small if kind == "tiny" else {})).save_pretrained(root / "taesd")
    init_adapter(str(root / "base"), root / "adapter", image_encoder=str(root / "encoder"), identity_dim=id_dim)
    triplets = []
    for i in range(n):
        random_image(100 + i, resolution).save(root / f"target{i}.png")
        random_image(200 + i, 64).save(root / f"template{i}.png")
        np.save(root / f"id{i}.npy", np.random.RandomState(i).randn(id_dim).astype(np.float32))
        triplets.append(Triplet(str(root / f"template{i}.png"), [str(root / f"id{i}.npy")],
                                str(root / f"target{i}.png"), "a portrait photo"))  # fmt: skip
    write_manifest(root / "train.jsonl", triplets)
    return {"base": str(root / "base"), "adapter": str(root / "adapter"), "manifest": str(root / "train.jsonl"),
            "taesd": str(root / "taesd")}  # fmt: skip


class PeakRSS:
    """Peak resident set size (bytes) while the block runs, sampled by a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.page = interval, os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


class SavedForBackward:
    """Bytes of the distinct tensors autograd saves for the backward pass during the block (activations; parameters
    excluded). Deterministic and allocator-independent; inside a gradient-checkpointed region only what the checkpoint
    keeps is seen, so it shows what checkpointing saves. The recomputation's transient memory is not included."""

    def __enter__(self):
        self.bytes, self._seen = 0, set()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            st = t.untyped_storage()
            if st.data_ptr() not in self._seen:
                self._seen.add(st.data_ptr())
                self.bytes += st.nbytes()
        return t

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def set_mode(tr, mode: str, taesd) -> None:
    s = tr.cfg.ica
    ica = mode != "stage1"
    s.lambda_id, s.lambda_exp, s.lambda_align = (1.0, 0.5, 0.1) if ica else (0.0, 0.0, 0.0)
    s.share_diffusion_pass = "shared" in mode
    tr.tiny_decoder = taesd if "taesd" in mode else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=("tiny", "sd15", "synthetic"), default="tiny")
    ap.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny, synthetic), 256 (sd15)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 2 (tiny), 1 (sd15), 32 (synthetic)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--no-gradient-checkpointing", action="store_true", help="default: on for sd15, off otherwise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--flops", action="store_true", help="count FLOPs of one step per mode (forward, backward and "
                    "checkpoint recomputation; torch.utils.flop_counter) instead of timing")  # fmt: skip
    args = ap.parse_args()

    from accelerate.utils import set_seed

    from emojidiff.data.dataset import collate
    from emojidiff.ica import ICAConfig
    from emojidiff.ica.trainer import ICATrainer
    from emojidiff.train.loop import step_generator

    set_seed(0)
    tiny, synth = args.world == "tiny", args.world == "synthetic"
    res = args.resolution or (64 if tiny or synth else 256)
    bs = args.batch_size or (2 if tiny else 32 if synth else 1)
    gc = args.world == "sd15" and not args.no_gradient_checkpointing
    root = Path(tempfile.mkdtemp(prefix="ica-bench-"))
    t0 = time.perf_counter()
    world = build_world(args.world, root, res, max(2, bs))
    cfg = ICAConfig(
        base=world["base"], adapter=world["adapter"], train_manifest=world["manifest"], output_dir=str(root / "run"),
        resolution=res, batch_size=bs, report_to="none", validation_steps=0, gradient_checkpointing=gc,
        drop_text=0, drop_identity=0, drop_expression=0, drop_all=0, train_branches=["identity", "expression"],
        face_backend="synthetic" if synth else None,
        ica={"face_models": {"name": "synthetic" if synth else "bench"}, "lambda_id": 1.0, "lambda_exp": 0.5,
             "lambda_align": 0.1, "decoder": world["taesd"], "checkpoint_decode": gc,
             **({"ani_target_sim": 0.7} if synth else {})},
    )  # fmt: skip
    tr = ICATrainer(cfg, face_models=None if synth else BenchFaceModels(small=tiny))
    taesd = tr.tiny_decoder
    setup_s = time.perf_counter() - t0
    dev = tr.accelerator.device
    raw = collate([tr.train_set[i] for i in range(bs)])
    tr.unet.train()

    def one_step(mode: str, k: int) -> tuple[float, int, int, int]:
        set_mode(tr, mode, taesd)
        gen = step_generator(0, k, 0, 0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            t = time.perf_counter()
            batch = tr.make_batch(raw, gen)
            with SavedForBackward() as saved:
                loss, _ = tr.compute_loss(batch, gen)
            tr.accelerator.backward(loss)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        if dev.type == "cuda":
            return dt, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_allocated(), saved.bytes
        return dt, mem.peak, mem.peak - mem.start, saved.bytes

    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        flops = {}
        for m in args.modes:
            with FlopCounterMode(display=False) as fc:
                one_step(m, 0)
            flops[m] = fc.get_total_flops()
        base_f = flops.get("stage1")
        out = {"world": args.world, "resolution": res, "batch_size": bs, "gradient_checkpointing": gc,
               "flops": {m: {"tflop": round(f / 1e12, 4), "ratio_vs_stage1": round(f / base_f, 3) if base_f else None}
                         for m, f in flops.items()}}  # fmt: skip
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return
    for m in args.modes:  # warm-up
        one_step(m, 0)
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    peaks: dict[str, list[int]] = {m: [] for m in args.modes}
    incs: dict[str, list[int]] = {m: [] for m in args.modes}
    saved_b: dict[str, list[int]] = {m: [] for m in args.modes}
    for r in range(args.repeats):
        order = args.modes if r % 2 == 0 else list(reversed(args.modes))
        for m in order:
            dt, peak, inc, sv = one_step(m, r + 1)
            saved_b[m].append(sv)
            times[m].append(dt)
            peaks[m].append(peak)
            incs[m].append(inc)
    base_t = statistics.median(times["stage1"]) if "stage1" in times else None
    rows = {}
    for m in args.modes:
        med = statistics.median(times[m])
        rows[m] = {
            "step_s_median": round(med, 4),
            "step_s_min": round(min(times[m]), 4),
            "step_s_all": [round(x, 4) for x in times[m]],
            "ratio_vs_stage1": round(med / base_t, 2) if base_t else None,
            "ratio_of_minima": round(min(times[m]) / min(times["stage1"]), 2) if base_t else None,
            "peak_mem_mb": round(max(peaks[m]) / 2**20, 1),
            "step_mem_increase_mb": round(max(incs[m]) / 2**20, 1),
            "saved_for_backward_mb": round(max(saved_b[m]) / 2**20, 1),
        }
    out = {
        "world": args.world, "resolution": res, "batch_size": bs, "gradient_checkpointing": gc,
        "device": str(dev), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": platform.processor(), "setup_s": round(setup_s, 1), "repeats": args.repeats, "modes": rows,
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    print(
        f"\n| mode | step (s, median of {args.repeats}) | × stage 1 | saved for backward (MiB) | peak RSS/CUDA (MiB) |"
    )
    print("|---|---|---|---|---|")
    for m, r in rows.items():
        cells = (m, r["step_s_median"], r["ratio_vs_stage1"], r["saved_for_backward_mb"], r["peak_mem_mb"])
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    from emojidiff.ica import register_face_models

    register_face_models("bench", lambda: None)  # built in main(); the name only has to exist
    main()
