"""``emojidiff world pretrain``: every model of the synthetic world, stage by stage, resumable.

Stages (each writes under ``OUT`` and is recorded in ``OUT/state.json`` when done, so ``--resume`` skips it):

1. ``analysers`` — the training and evaluation face analysers (identity, face/expression) and the evaluation
   style classifier;
2. ``data`` — renders and captions for the base model (cached as .npy);
3. ``vae`` — the AutoencoderKL (64 px <-> 16x16x8, trained on 32 px crops), then the latent scaling factor;
   ``decoder`` — its decoder alone fine-tuned on whole images with a low-frequency colour loss (the encoder, so
   every latent, is unchanged): crop training leaves pale tints (sketch backgrounds) a shade off;
4. ``clip`` — CLIP text + vision towers trained contrastively on (render, caption) and (masked face crop,
   expression caption) pairs, then split into the pipeline's ``CLIPTextModel`` and a frozen
   ``CLIPVisionModelWithProjection`` image encoder;
5. ``unet`` — the UNet, v-prediction on a zero-terminal-SNR schedule with min-SNR weighting and 10 % caption
   dropout (for guidance),
   checkpointed every ``ckpt_every`` steps (``--resume`` continues from the last one);
6. ``assemble`` — a ``StableDiffusionPipeline`` saved with ``save_pretrained`` in ``OUT/base``.

The analysers share nothing with the other stages, so by default (``parallel``) they train in a second process while
this one runs the rest, one torch thread each on two cores; ``state.json`` keeps both processes' stages.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from .base_model import (
    IMAGE_SIZE,
    clip_pixels,
    make_scheduler,
    make_unet,
    make_vae,
    masked_face_crop,
    text_config,
    vision_config,
)
from .dataset import TRAIN_IDS, sample_portraits
from .factors import (
    CAPTIONED_STYLE_FIELDS,
    NAMED_DISTANCE,
    caption,
    expression_caption,
    style_swapped,
    template_distance,
)
from .nets import EXPR_HI, EXPR_LO, OUT_EXPR
from .pretrain_stages import STAGES
from .render import face_geometry, render_array
from .tokenizer import world_tokenizer


@dataclass
class PretrainConfig:
    seed: int = 0
    n_images: int = 24_000
    analyser_identity_steps: int = 2000
    analyser_face_steps: int = 2500
    #: the evaluation style classifier (``style.train_style``): 2000 steps, the shipped judge's recipe (glasses read
    #: right on 99 % of held-out renders; 400-600 steps: ~86 %; BENCHMARKS.md, "Face analysers"). The whole run
    #: took 46 min with 600 on a fast day and 77 min with 2000 on a slow one (MODEL_CARD.md)
    style_steps: int = 2000
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    decoder_steps: int = 400
    decoder_lr: float = 2e-4
    clip_steps: int = 800
    clip_batch: int = 128
    #: share of each CLIP batch's whole renders that also meet hard-negative captions: theirs with one style word
    #: changed ('round glasses' -> 'square glasses'), one for each captioned style field, scored against the image
    #: with the batch's captions (NegCLIP, Yuksekgonul et al. 2023). In-batch negatives alone almost never differ in
    #: one word, and the text encoder learned to barely tell 'round' from 'square' glasses, which no base then drew
    #: apart (BENCHMARKS.md, "Which words do the bases miss?")
    clip_hard_negatives: float = 0.0
    #: 2500 drew malformed faces at guidance 4 (92.5 % passed the face test); 3500 from nothing: 98.5 %, and the
    #: whole run still took 46 min on 2 cores (BENCHMARKS.md, "Base model"; MODEL_CARD.md)
    unet_steps: int = 3500
    unet_batch: int = 64
    unet_lr: float = 6e-4
    ckpt_every: int = 250
    caption_dropout: float = 0.1
    #: extra weight of the diffusion loss around the eyes and the mouth (0: none). Expressions are a few pixels of
    #: a 64-px portrait; with a uniform loss the UNet learns hair, skin and background first and draws one average
    #: mouth and pair of eyes whatever the caption says (BENCHMARKS.md, "Base model": expression words)
    part_weight: float = 0.0
    #: weight of an expression loss on the UNet's clean-image estimate (0: none): each step, ``expression_batch``
    #: of the batch's predicted x0 are decoded and read by the training analysers, and the L1 distance of their
    #: expression reading to the render's true factors (range-normalised, weighted by the signal fraction alpha-bar
    #: of the step's noise level) is added to the diffusion loss. The diffusion loss alone never made a base draw
    #: the captioned expression; weight 1 for 2500 steps did not either (BENCHMARKS.md, "Can the base draw
    #: expressions?")
    expression_weight: float = 0.0
    expression_batch: int = 16
    #: the analysers that read the expressions ("" = this run's own, OUT/analysers/train); never the evaluation set
    expression_analysers: str = ""
    #: share of the template-drawn renders whose caption is, at each UNet step, only their expression ('a smiling
    #: person'); when > 0, renders far from every template (drawn uniformly) also lose the expression word from
    #: their captions, where the nearest template's word is only loosely right. 0: the data stage's captions as
    #: they are. In a full caption the expression is one word of ~15 and a base trained on those alone ignores it;
    #: 0.5 (with part_weight 4, 7000 steps) drew smile and frown from words (BENCHMARKS.md, "Session 10")
    expression_captions: float = 0.0
    #: share of each UNet batch drawn from the renders wearing glasses (0: uniform draws, where 30 % wear them).
    #: Round against square glasses is a few pixels per lens; the bases draw whichever shape the starting noise
    #: favours (BENCHMARKS.md, "Which words do the bases miss?"), and this shows the UNet more of them
    glasses_share: float = 0.0
    #: cross-attention at the 16x16 latent level too (``base_model.make_unet``); twice the time per UNet step
    unet_attention_at_full_res: bool = False
    #: v-prediction on a zero-terminal-SNR schedule (``base_model.make_scheduler``); False is the plain
    #: epsilon / scaled-linear schedule of Stable Diffusion 1.5, which leaves background colours unfollowed.
    zero_snr: bool = True
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    @classmethod
    def from_run(cls, out: str | Path) -> PretrainConfig:
        """The config a run was made with (``OUT/config.json``); keys of other versions are ignored."""
        saved = json.loads((Path(out) / "config.json").read_text())
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    @classmethod
    def quick(cls) -> PretrainConfig:
        """A few steps of everything on a few images: checks the whole path in about a minute."""
        return cls(
            n_images=64,
            analyser_identity_steps=2,
            analyser_face_steps=2,
            style_steps=2,
            vae_steps=2,
            vae_batch=4,
            decoder_steps=2,
            clip_steps=2,
            clip_batch=8,
            unet_steps=3,
            unet_batch=4,
            ckpt_every=2,
        )


class _State:
    def __init__(self, out: Path):
        self.path = out / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"done": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def finish(self, stage: str, info: dict) -> None:
        # Re-read first: two `world pretrain` processes may share OUT (say the analysers beside the base stages,
        # one per core), and each must keep the stages the other has finished meanwhile.
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
        done = {**self.data["done"], stage: info}
        self.data["done"] = {s: done[s] for s in STAGES if s in done}  # in stage order, whichever finished first
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _lr(opt, step: int, total: int, base: float, warmup: int = 100) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))))
    for g in opt.param_groups:
        g["lr"] = lr


def pretrain(out: str | Path, cfg: PretrainConfig, resume: bool = False, log=print, parallel: bool = False) -> dict:
    """Run (or resume) the stages of ``cfg.stages``; returns the state (per-stage info).

    ``parallel`` trains the analysers in a second process (one torch thread) while this one runs the other stages
    with one thread fewer: they share nothing, and on two cores this is what keeps the default run near an hour.
    """
    out = Path(out)
    if out.exists() and not resume and (out / "state.json").exists():
        from ..errors import InputError

        raise InputError(f"'{out}' already holds a pretraining run: pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    state = _State(out)
    stages = [s for s in STAGES if s in cfg.stages]
    side = None
    if parallel and "analysers" in stages and len(stages) > 1 and not state.done("analysers"):
        side = _start_side_analysers(out, cfg, log)
        stages.remove("analysers")
    threads = torch.get_num_threads()
    global _SIDE
    if side is not None:
        torch.set_num_threads(max(1, threads - 1))
        _SIDE = _Side(side, threads, log)
    try:
        _run_stages(out, cfg, state, stages, log)
    except BaseException:
        if side is not None and side.is_alive():
            log("[analysers] stopping the analyser process (sets already saved are kept for --resume)")
            side.terminate()
            side.join()
        raise
    finally:
        _SIDE = None
        torch.set_num_threads(threads)
    if side is not None:
        if side.is_alive():
            log("[analysers] waiting for the analyser process")
        side.join()
        if side.exitcode != 0:
            from ..errors import EmojiDiffError

            raise EmojiDiffError(
                f"the analysers process failed (exit code {side.exitcode}); the other stages are done: "
                f"rerun with --resume --stages analysers --out {out}"
            )
    return _State(out).data


def _run_stages(out: Path, cfg: PretrainConfig, state: _State, stages: list[str], log) -> None:
    ran = False
    for stage in stages:
        if stage == "assemble" and ran:
            log("[assemble] assembling the base again from the stages just run")
        elif stage == "unet" and _unet_extended(state, cfg):
            log(f"[{stage}] continuing to {cfg.unet_steps} UNet steps (was {state.data['done']['unet']['steps']})")
        elif state.done(stage):
            log(f"[{stage}] already done, skipped")
            continue
        t0 = time.time()
        info = globals()[f"_stage_{stage}"](out, cfg, log) or {}
        ran = True
        info["seconds"] = round(time.time() - t0, 1)
        state.finish(stage, info)
        log(f"[{stage}] done in {info['seconds']:.0f}s")


class _Side:
    """The analysers' process beside this one, and the torch thread this one lent it."""

    def __init__(self, proc, threads: int, log):
        self.proc, self.threads, self.log, self.returned = proc, threads, log, False

    def poll(self) -> None:
        """Between training steps: once the analysers' process has ended, take its thread back."""
        if not self.returned and self.proc.exitcode is not None:
            torch.set_num_threads(self.threads)
            self.returned = True
            self.log(f"[analysers] process ended (exit code {self.proc.exitcode}); back to {self.threads} threads")


_SIDE: _Side | None = None


def _side_poll() -> None:
    if _SIDE is not None:
        _SIDE.poll()


def _start_side_analysers(out: Path, cfg: PretrainConfig, log):
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(
        target=_side_analysers, args=(str(out), asdict(cfg), os.getpid()), name="emojidiff-analysers"
    )
    proc.start()
    log(f"[analysers] training in a second process (pid {proc.pid}), one thread")
    return proc


def _side_analysers(out: str, cfg: dict, parent: int) -> None:
    """The spawned process: the analysers stage alone, recorded in the shared ``state.json``."""
    import sys

    torch.set_num_threads(1)
    threading.Thread(target=watch_parent, args=(parent, lambda: os._exit(1)), daemon=True).start()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    _run_stages(Path(out), PretrainConfig(**cfg), _State(Path(out)), ["analysers"], log)


def watch_parent(parent: int, on_orphan: Callable[[], object], interval: float = 2.0) -> None:
    """Call ``on_orphan`` once this process's parent is no longer ``parent`` (it died and the process was
    re-parented). The main process stops the analysers' process itself when it fails or is interrupted, but a
    SIGTERM or SIGKILL (``kill``, a job scheduler, ``timeout``) ends it with no chance to, and the analysers' process
    would train on alone for half an hour. multiprocessing has no "die with the parent" option; hence this loop."""
    while os.getppid() == parent:
        time.sleep(interval)
    on_orphan()


def _unet_extended(state: _State, cfg: PretrainConfig) -> bool:
    """``--resume --unet-steps N`` with N above a finished UNet's step count continues it from its last
    checkpoint."""
    unet = state.data["done"].get("unet")
    return unet is not None and "unet" in cfg.stages and cfg.unet_steps > int(unet.get("steps", 0))


# ---------------------------------------------------------------------------------------------------- stages


def _stage_analysers(out: Path, cfg: PretrainConfig, log) -> dict:
    from .style import train_style
    from .train_analysers import AnalyserTrainConfig, train_and_save

    info = {}
    for kind in ("train", "eval"):
        if (out / "analysers" / kind / "config.json").is_file():
            log(f"[analysers] {kind} set exists, kept")
            continue
        acfg = AnalyserTrainConfig(
            kind=kind, identity_steps=cfg.analyser_identity_steps, face_steps=cfg.analyser_face_steps
        )
        if cfg.analyser_identity_steps < 50:  # quick mode: tiny batches and evaluations
            acfg.p_ids, acfg.k_per_id, acfg.face_batch, acfg.eval_people, acfg.eval_face_n = 4, 2, 8, 10, 40
        info[kind] = train_and_save(out / "analysers", acfg, log)["heldout_identity"]
    info["style"] = train_style(out / "analysers" / "eval", cfg.style_steps, log)
    return info


def _data_paths(out: Path) -> tuple[Path, Path, Path]:
    return out / "data_images.npy", out / "data_crops.npy", out / "data_captions.json"


def _stage_data(out: Path, cfg: PretrainConfig, log) -> dict:
    portraits = sample_portraits(cfg.n_images, cfg.seed + 1000, TRAIN_IDS)
    images = np.zeros((len(portraits), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    crops = np.zeros_like(images)
    captions, crop_captions = [], []
    for k in tqdm(range(0, len(portraits), 256), desc="render", leave=False):
        batch = portraits[k : k + 256]
        arr = render_array(batch, IMAGE_SIZE)
        images[k : k + len(batch)] = (arr * 255 + 0.5).astype(np.uint8)
        for j, (p, a) in enumerate(zip(batch, arr, strict=True)):
            crops[k + j] = (masked_face_crop(a, face_geometry(p, IMAGE_SIZE)["box"]) * 255 + 0.5).astype(np.uint8)
            captions.append(p.caption())
            crop_captions.append(_crop_caption(p))
    pi, pc, pt = _data_paths(out)
    np.save(pi, images)
    np.save(pc, crops)
    pt.write_text(json.dumps({"captions": captions, "crop_captions": crop_captions}))
    return {"n_images": len(portraits), "seed": cfg.seed + 1000}


def _crop_caption(p) -> str:
    return f"{expression_caption(p.expression)} with {p.identity.eye_colour} eyes"


def _load_data(out: Path):
    pi, pc, pt = _data_paths(out)
    caps = json.loads(pt.read_text())
    return np.load(pi, mmap_mode="r"), np.load(pc, mmap_mode="r"), caps["captions"], caps["crop_captions"]


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0


def _stage_vae(out: Path, cfg: PretrainConfig, log) -> dict:
    images, _, _, _ = _load_data(out)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    from diffusers import AutoencoderKL

    ckpts = _checkpoints(out, "vae")
    start = 0
    if ckpts:
        vae = AutoencoderKL.from_pretrained(ckpts[-1]).train()
        start = int(ckpts[-1].name.split("-")[1])
        rng = np.random.default_rng(cfg.seed + start)
        log(f"[vae] resuming from {ckpts[-1].name}")
    else:
        vae = make_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    bar = tqdm(range(start, cfg.vae_steps), desc="vae", initial=start, total=cfg.vae_steps, mininterval=5)
    c = cfg.vae_crop
    for step in bar:
        _side_poll()
        _lr(opt, step, cfg.vae_steps, cfg.vae_lr, warmup=50)
        x = _to_unit(images[np.sort(rng.choice(len(images), cfg.vae_batch, replace=False))])
        if c < IMAGE_SIZE:  # the VAE is fully convolutional: random 4-aligned crops train it 4x cheaper
            oy, ox = (rng.integers(0, (IMAGE_SIZE - c) // 4 + 1, size=2) * 4).tolist()
            x = x[:, :, oy : oy + c, ox : ox + c]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log(f"[vae] step {step}/{cfg.vae_steps} loss {loss.item():.4f}")
        _checkpoint(out, "vae", vae, step + 1, cfg)
    vae.eval()
    with torch.no_grad():
        idx = rng.choice(len(images), min(512, len(images)), replace=False)
        x = _to_unit(images[np.sort(idx)])
        lat = torch.cat([vae.encode(x[k : k + 64]).latent_dist.mean for k in range(0, len(x), 64)])
        rec = torch.cat([vae.decode(lat[k : k + 64]).sample for k in range(0, len(x), 64)])
        mae = (rec.clamp(-1, 1) - x).abs().mean().item() / 2.0
    scaling = float(1.0 / lat.std().clamp(min=1e-3))
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out / "vae")
    log(f"[vae] reconstruction MAE {mae:.4f} (of 1), scaling factor {scaling:.4f}")
    return {"reconstruction_mae": mae, "scaling_factor": scaling, "steps": cfg.vae_steps, "batch": cfg.vae_batch}


def _stage_decoder(out: Path, cfg: PretrainConfig, log) -> dict:
    from diffusers import AutoencoderKL

    images, _, _, _ = _load_data(out)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    latents = _encode_latents(out, images, vae.eval())  # cached for the UNet stage too: the encoder stays as is
    rng = np.random.default_rng(cfg.seed + 5)
    check = np.sort(rng.choice(len(images), min(512, len(images)), replace=False))

    def mae() -> float:
        with torch.no_grad():
            rec = torch.cat([_decode(vae, latents[check[k : k + 64]]) for k in range(0, len(check), 64)])
        return (rec.clamp(-1, 1) - _to_unit(images[check])).abs().mean().item() / 2.0

    before = mae()
    vae.requires_grad_(False).train()
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    for step in tqdm(range(cfg.decoder_steps), desc="decoder", mininterval=5):
        _side_poll()
        _lr(opt, step, cfg.decoder_steps, cfg.decoder_lr, warmup=20)
        idx = np.sort(rng.choice(len(images), cfg.vae_batch, replace=False))
        x = _to_unit(images[idx])
        rec = _decode(vae, latents[idx])
        low = F.mse_loss(F.avg_pool2d(rec, 8), F.avg_pool2d(x, 8))  # the colour of each 8x8 patch
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 10.0 * low
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"[decoder] step {step}/{cfg.decoder_steps} loss {loss.item():.4f}")
    vae.eval()
    after = mae()
    vae.save_pretrained(out / "vae")
    log(f"[decoder] reconstruction MAE {before:.4f} -> {after:.4f} (of 1)")
    return {"steps": cfg.decoder_steps, "batch": cfg.vae_batch, "mae_before": before, "mae_after": after}


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.config.scaling_factor).sample


def _stage_clip(out: Path, cfg: PretrainConfig, log) -> dict:
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    images, crops, captions, crop_captions = _load_data(out)
    tok = world_tokenizer()
    tok.save_pretrained(out / "tokenizer")
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    ccfg = CLIPConfig(
        text_config=text_config(tok).to_dict(), vision_config=vision_config().to_dict(), projection_dim=64
    )
    model = CLIPModel(ccfg).train()
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    crop_ids = tok(
        crop_captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    portraits = _run_portraits(out, cfg, captions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    half = cfg.clip_batch // 2
    n_hard = round(half * cfg.clip_hard_negatives)
    bar = tqdm(range(cfg.clip_steps), desc="clip", mininterval=5)
    for step in bar:
        _side_poll()
        _lr(opt, step, cfg.clip_steps, 1e-3, warmup=50)
        a = np.sort(rng.choice(len(images), half, replace=False))
        b = np.sort(rng.choice(len(images), cfg.clip_batch - half, replace=False))
        pix = torch.cat([clip_pixels(images[a] / 255.0), clip_pixels(crops[b] / 255.0)])
        inp = torch.cat([ids.input_ids[a], crop_ids.input_ids[b]])
        mask = torch.cat([ids.attention_mask[a], crop_ids.attention_mask[b]])
        if n_hard:
            hard = tok(
                [_swapped_caption(portraits[i], name, rng) for i in a[:n_hard] for name in CAPTIONED_STYLE_FIELDS],
                padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt",
            )  # fmt: skip
            inp, mask = torch.cat([inp, hard.input_ids]), torch.cat([mask, hard.attention_mask])
        outp = model(input_ids=inp, attention_mask=mask, pixel_values=pix)
        loss = _contrastive_loss(outp.logits_per_image)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log(f"[clip] step {step}/{cfg.clip_steps} loss {loss.item():.3f}")
    sd = model.state_dict()
    text = CLIPTextModel(text_config(tok))
    _load_from_prefixed(text, sd, "text_model.")
    vision = CLIPVisionModelWithProjection(vision_config())
    _load_from_prefixed(vision, sd, "vision_model.")
    text.eval().save_pretrained(out / "text_encoder")
    vision.eval().save_pretrained(out / "image_encoder")
    # retrieval accuracy on held-in pairs as a sanity figure
    with torch.no_grad():
        model.eval()
        a = np.sort(rng.choice(len(images), min(256, len(images)), replace=False))
        o = model(
            input_ids=ids.input_ids[a],
            attention_mask=ids.attention_mask[a],
            pixel_values=clip_pixels(images[a] / 255.0),
        )
        top1 = (o.logits_per_image.argmax(1) == torch.arange(len(a))).float().mean().item()
        swaps = _style_swap_accuracy(model, tok, images, portraits, rng)
    log(f"[clip] image->caption top-1 among {len(a)}: {top1:.3f}; own caption over one style word changed: {swaps}")
    return {
        "steps": cfg.clip_steps,
        "batch": cfg.clip_batch,
        "hard_negatives": cfg.clip_hard_negatives,
        "retrieval_top1": top1,
        "style_swap_accuracy": swaps,
        "final_loss": loss.item(),
    }


def _contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss for N images against N matching texts followed by any extra (hard-negative) texts,
    which count as wrong answers for every image and are not themselves matched to an image."""
    n = logits_per_image.shape[0]
    target = torch.arange(n)
    return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image[:, :n].T, target)) / 2


def _swapped_caption(p, name: str, rng: np.random.Generator) -> str:
    """``p``'s caption with the captioned style field ``name`` changed (:func:`style_swapped`)."""
    return caption(p.identity, p.expression, style_swapped(p.style, name, rng))


@torch.no_grad()
def _style_swap_accuracy(model, tok, images, portraits, rng: np.random.Generator, n: int = 256) -> dict[str, float]:
    """Per captioned style field, how often a render's own caption scores above the same caption with that field
    changed (chance 0.5); ``glasses_shape``: the same on renders wearing glasses (changed to the other shape)."""
    idx = np.sort(rng.choice(len(images), min(n, len(images)), replace=False))
    pix = clip_pixels(images[idx] / 255.0)

    def score(texts: list[str], rows: list[int] | None = None) -> torch.Tensor:
        """cosine of each image (of ``rows``) to its text, as CLIP's forward computes the embeddings"""
        t = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        o = model(input_ids=t.input_ids, attention_mask=t.attention_mask, pixel_values=pix[rows or slice(None)])
        return (o.image_embeds * o.text_embeds).sum(-1)

    own = score([portraits[i].caption() for i in idx])
    out = {}
    for name in CAPTIONED_STYLE_FIELDS:
        other = score([_swapped_caption(portraits[i], name, rng) for i in idx])
        out[name] = round(float((own > other).float().mean()), 3)
    worn = [k for k, i in enumerate(idx) if portraits[i].style.glasses != "none"]
    if worn:
        other = [_swapped_caption(portraits[idx[k]], "glasses", rng) for k in worn]  # the other shape
        out["glasses_shape"] = round(float((own[worn] > score(other, worn)).float().mean()), 3)
    return out


def _load_from_prefixed(model, sd: dict, prefix: str) -> None:
    """Load a tower of a ``CLIPModel`` state dict into a standalone model, whichever key layout the installed
    transformers uses (with or without the ``text_model.``/``vision_model.`` prefix)."""
    target = model.state_dict().keys()
    picked = {}
    for k in target:
        for cand in (k, prefix + k, k.replace("vision_model.", prefix), prefix + k.split(".", 1)[-1]):
            if cand in sd and sd[cand].shape == model.state_dict()[k].shape:
                picked[k] = sd[cand]
                break
    missing = [k for k in target if k not in picked]
    if missing:
        raise RuntimeError(f"could not map CLIP weights for {missing[:3]}")
    model.load_state_dict(picked, strict=True)


def _encode_latents(out: Path, images, vae) -> torch.Tensor:
    path = out / "data_latents.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    lat = []
    with torch.no_grad():
        for k in tqdm(range(0, len(images), 128), desc="encode latents", leave=False):
            lat.append(vae.encode(_to_unit(images[k : k + 128])).latent_dist.mean * vae.config.scaling_factor)
    lat = torch.cat(lat)
    np.save(path, lat.numpy())
    return lat


def _checkpoints(out: Path, what: str = "unet") -> list[Path]:
    return sorted((out / "checkpoints").glob(f"{what}-*"), key=lambda p: int(p.name.split("-")[1]))


def _checkpoint(out: Path, what: str, model, done: int, cfg: PretrainConfig) -> None:
    """Every ``ckpt_every`` steps (and at the end): save ``model`` and keep the last two checkpoints."""
    total = cfg.vae_steps if what == "vae" else cfg.unet_steps
    if done % cfg.ckpt_every and done != total:
        return
    model.save_pretrained(out / "checkpoints" / f"{what}-{done}")
    for old in _checkpoints(out, what)[:-2]:
        shutil.rmtree(old)


def _stage_unet(out: Path, cfg: PretrainConfig, log) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    images, _, captions, _ = _load_data(out)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text = CLIPTextModel.from_pretrained(out / "text_encoder").eval().requires_grad_(False)
    latents = _encode_latents(out, images, vae)
    needs_portraits = cfg.part_weight > 0 or cfg.expression_weight > 0 or cfg.expression_captions > 0
    portraits = _run_portraits(out, cfg, captions) if needs_portraits else None
    parts = part_weight_maps(portraits, latents.shape[-1], cfg.part_weight) if cfg.part_weight > 0 else None
    reader = _ExpressionLoss(out, cfg, vae, portraits) if cfg.expression_weight > 0 else None
    del vae
    captions_for = _UNetCaptions(tok, captions, portraits if cfg.expression_captions > 0 else None, cfg, log)
    noise_sched = DDPMScheduler.from_config(make_scheduler(cfg.zero_snr).config)
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    alphas = noise_sched.alphas_cumprod
    start = 0
    ckpts = _checkpoints(out, "unet")
    if ckpts:
        unet = UNet2DConditionModel.from_pretrained(ckpts[-1])
        start = int(ckpts[-1].name.split("-")[1])
        log(f"[unet] resuming from {ckpts[-1].name}")
    else:
        torch.manual_seed(cfg.seed + 2)
        unet = make_unet(cfg.unet_attention_at_full_res)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 3 + start)
    rng = np.random.default_rng(cfg.seed + 3 + start)
    wearing = np.array([i for i, c in enumerate(captions) if " glasses" in c], dtype=np.int64)
    losses: list[float] = []
    expr_losses: list[float] = []
    bar = tqdm(range(start, cfg.unet_steps), desc="unet", initial=start, total=cfg.unet_steps, mininterval=5)
    t0 = time.time()
    for step in bar:
        _side_poll()
        _lr(opt, step, cfg.unet_steps, cfg.unet_lr, warmup=100)
        idx = torch.from_numpy(unet_batch_indices(rng, len(latents), cfg.unet_batch, wearing, cfg.glasses_share))
        z0 = latents[idx]
        inp, drop = captions_for(idx, gen)
        with torch.no_grad():
            cond = text(inp).last_hidden_state
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        pred = unet(zt, t, cond).sample
        snr = alphas[t] / (1 - alphas[t])
        if v_pred:  # min-SNR-5 for v (Hang et al. 2023), floored at 1 so the zero-SNR end still trains
            target, w = noise_sched.get_velocity(z0, noise, t), snr.clamp(min=1.0, max=5.0) / (snr + 1)
        else:
            target, w = noise, torch.clamp(snr, max=5.0) / snr
        err = F.mse_loss(pred, target, reduction="none")
        if parts is not None:
            err = err * parts[idx]
        loss = (err.mean(dim=(1, 2, 3)) * w).mean()
        if reader is not None:
            k = min(cfg.expression_batch, len(idx))
            ab = alphas[t[:k]].view(-1, 1, 1, 1)
            if v_pred:
                x0 = ab.sqrt() * zt[:k] - (1 - ab).sqrt() * pred[:k]
            else:  # epsilon: the estimate explodes as alpha-bar -> 0, where the loss's weight vanishes anyway
                x0 = (zt[:k] - (1 - ab).sqrt() * pred[:k]) / ab.sqrt().clamp(min=0.05)
            expr_loss = (reader(x0, idx[:k]) * ab.flatten() * (~drop[:k]).float()).mean()
            loss = loss + cfg.expression_weight * expr_loss
            expr_losses.append(expr_loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
        if step % 100 == 0:
            extra = f" expression {np.mean(expr_losses[-100:]):.4f}" if expr_losses else ""
            mean = np.mean(losses[-100:])
            log(f"[unet] step {step}/{cfg.unet_steps} loss {mean:.4f}{extra} ({time.time() - t0:.0f}s)")
        _checkpoint(out, "unet", unet, step + 1, cfg)
    unet.eval().save_pretrained(out / "unet")
    return {
        "steps": cfg.unet_steps,
        "batch": cfg.unet_batch,
        "prediction_type": noise_sched.config.prediction_type,
        "part_weight": cfg.part_weight,
        "glasses_share": cfg.glasses_share,
        "expression_weight": cfg.expression_weight,
        "expression_captions": cfg.expression_captions,
        "final_loss": float(np.mean(losses[-100:] or [0])),
        **({"final_expression_loss": float(np.mean(expr_losses[-100:]))} if expr_losses else {}),
    }


def unet_batch_indices(
    rng: np.random.Generator, n: int, batch: int, wearing: np.ndarray, glasses_share: float
) -> np.ndarray:
    """``batch`` distinct render indices of ``n``: uniform draws, or with ``glasses_share`` > 0 that share of the
    batch (rounded, at most all of ``wearing``) drawn from the renders with glasses and the rest from the others.
    The uniform path draws exactly as before the option existed, so default runs stay byte-identical."""
    if glasses_share <= 0:
        return rng.choice(n, batch, replace=False)
    k = min(round(glasses_share * batch), len(wearing))
    others = np.setdiff1d(np.arange(n), wearing, assume_unique=True)
    return np.concatenate([rng.choice(wearing, k, replace=False), rng.choice(others, batch - k, replace=False)])


class _UNetCaptions:
    """The caption token ids of a UNet batch: each render's data-stage caption; with ``expression_captions`` > 0,
    renders near a named template captioned by their expression alone that share of the time and the others
    without an expression word; then ``caption_dropout`` of the batch emptied (for guidance)."""

    def __init__(self, tok, captions: list[str], portraits: list | None, cfg: PretrainConfig, log=print):
        def tokens(texts: list[str]) -> torch.Tensor:
            kw = {"padding": "max_length", "max_length": tok.model_max_length, "truncation": True}
            return tok(texts, return_tensors="pt", **kw).input_ids

        self.cfg, self.named = cfg, None
        if portraits is not None:
            self.named = torch.tensor([template_distance(p.expression) < NAMED_DISTANCE for p in portraits])
            pairs = zip(portraits, self.named.tolist(), strict=True)
            captions = [caption(p.identity, p.expression, p.style, n) for p, n in pairs]
            self.short = tokens([expression_caption(p.expression) for p in portraits])
            log(f"[unet] expression captions: {int(self.named.sum())} of {len(portraits)} renders named by them")
        self.ids = tokens(captions)
        self.empty = tokens([""])

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, which rows were dropped to the empty caption)"""
        inp = self.ids[idx].clone()
        if self.named is not None:
            short = self.named[idx] & (torch.rand(len(idx), generator=gen) < self.cfg.expression_captions)
            inp[short] = self.short[idx][short]
        drop = torch.rand(len(idx), generator=gen) < self.cfg.caption_dropout
        inp[drop] = self.empty
        return inp, drop


def _run_portraits(out: Path, cfg: PretrainConfig, captions: list[str]) -> list:
    """The run's training portraits (exact factors), drawn again as the data stage drew them (checked by caption)."""
    portraits = sample_portraits(cfg.n_images, cfg.seed + 1000, TRAIN_IDS)
    if len(portraits) != len(captions) or any(p.caption() != c for p, c in zip(portraits[:64], captions, strict=False)):
        raise RuntimeError(f"the data in {out} was not drawn with this run's seed and size; rerun its data stage")
    return portraits


class _ExpressionLoss:
    """Per image, how far the training analysers' expression reading of a decoded clean-latent estimate is from the
    render's true factors: mean L1 over the factors, each scaled to [-1, 1] (the analysers' raw output scale).
    Differentiable in the latents; the VAE and the analysers are frozen."""

    def __init__(self, out: Path, cfg: PretrainConfig, vae, portraits: list):
        from .analysers import SyntheticAnalysers

        root = Path(cfg.expression_analysers) if cfg.expression_analysers else out / "analysers" / "train"
        self.analysers = SyntheticAnalysers("train", root)
        if self.analysers.config.get("kind", "train") == "eval":
            raise InputError(f"{root} holds evaluation analysers: an expression loss must use the training set")
        self.vae = vae.eval().requires_grad_(False)
        truth = torch.from_numpy(np.stack([p.expression.to_vector() for p in portraits]))
        self.targets = (truth - EXPR_LO) / (EXPR_HI - EXPR_LO) * 2.0 - 1.0

    def __call__(self, latents: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        images = (_decode(self.vae, latents).clamp(-1, 1) + 1) / 2
        raw = self.analysers.face_net.raw(images)[:, OUT_EXPR]
        return (raw - self.targets[idx]).abs().mean(dim=1)


def part_weight_maps(portraits, size: int, weight: float) -> torch.Tensor:
    """Per portrait, a (1, size, size) loss weight at latent resolution: 1 plus ``weight`` times Gaussian bumps on
    both eyes (brows included) and the mouth, from the renders' exact landmarks; mean 1 per image, so a loss keeps its
    scale."""
    lmk = np.stack([face_geometry(p, IMAGE_SIZE)["landmarks"] for p in portraits]) * (size / IMAGE_SIZE)
    d = np.linalg.norm(lmk[:, 1] - lmk[:, 0], axis=1)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy, xx = yy[None], xx[None]

    def bump(cx, cy, sx, sy):
        return np.exp(-0.5 * (((xx - cx[:, None, None]) / sx) ** 2 + ((yy - cy[:, None, None]) / sy) ** 2))

    mouth = (lmk[:, 3] + lmk[:, 4]) / 2
    m = np.maximum.reduce([
        bump(lmk[:, 0, 0], lmk[:, 0, 1] - 0.1 * d[:, 0, 0], 0.25 * d, 0.3 * d),
        bump(lmk[:, 1, 0], lmk[:, 1, 1] - 0.1 * d[:, 0, 0], 0.25 * d, 0.3 * d),
        bump(mouth[:, 0], mouth[:, 1], 0.45 * d, 0.3 * d),
    ])  # fmt: skip
    w = 1.0 + weight * m
    w = w / w.mean(axis=(1, 2), keepdims=True)
    return torch.from_numpy(w.astype(np.float32)).unsqueeze(1)


def _stage_assemble(out: Path, cfg: PretrainConfig, log) -> dict:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(out / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(out / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(out / "unet"),
        scheduler=make_scheduler(cfg.zero_snr),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(out / "image_encoder"),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "base")
    size = sum(f.stat().st_size for f in (out / "base").rglob("*") if f.is_file())
    log(f"[assemble] base pipeline in {out / 'base'} ({size / 1e6:.1f} MB)")
    return {"path": str(out / "base"), "bytes": size}
