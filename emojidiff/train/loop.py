"""The shared training loop (stage 1, IDI rounds; ICA adds losses on top of the same machinery).

Runs under Hugging Face Accelerate: one process here, many GPUs or nodes with ``accelerate launch``. Only the adapter's
branch projections train; the base UNet, VAE, text encoder(s), image encoder and face models stay frozen.

Randomness is keyed by (seed, optimisation step, micro-step, process): which samples a step sees, its noise, timesteps
and condition dropout. A run resumed from a checkpoint therefore continues exactly as the uninterrupted run would have,
without depending on RNG-state snapshots or data-loader internals.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..adapter.config import EmojiDiffConfig
from ..adapter.core import base_digest
from ..adapter.layers import block_key, cross_attention_processors
from ..adapter.weights import branch_weights_from_unet, save_branch_weights
from ..data.dataset import TripletDataset, collate
from ..data.manifest import read_manifest
from ..errors import InputError
from .config import TrainConfig

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "training_state.json"


def multi_cpu() -> bool:
    """True when launched as several processes (torchrun / accelerate launch) on a machine without CUDA.

    Accelerate only joins CPU processes into one process group when asked (``cpu=True``); without it each process
    silently trains alone as "rank 0 of 1", duplicating the same run.
    """
    import os

    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1009 + micro * 101 + rank) % (2**63))


class StepSampler(torch.utils.data.Sampler):
    """Index stream ``perm_epoch(seed)[i mod N]`` starting at a given sample position, sharded by process rank."""

    def __init__(self, n: int, seed: int, start: int, rank: int, world: int):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self):
        i = self.start * self.world + self.rank
        while True:
            epoch, pos = divmod(i, self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield int(perm[pos])
            i += self.world

    def __len__(self) -> int:  # infinite stream; length is only a hint
        return self.n


def trainable_parameters(unet, branches: list[str], expression_layers: list[str]) -> dict[str, torch.nn.Parameter]:
    """Names -> parameters of the branch projections that train; everything else is frozen.

    Expression layers outside the layer map stay frozen: the template never reaches them.
    """
    unet.requires_grad_(False)
    params: dict[str, torch.nn.Parameter] = {}
    index = {"identity": 0, "expression": 1}
    for b in branches:
        i = index[b]
        for n, p in unet.encoder_hid_proj.image_projection_layers[i].named_parameters():
            params[f"encoder_hid_proj.image_projection_layers.{i}.{n}"] = p
        modules = dict(unet.named_modules())
        for name in cross_attention_processors(unet):
            if b == "expression" and block_key(name) not in expression_layers:
                continue
            proc = modules[name[: -len(".processor")]].processor
            params[f"{name}.to_k_ip.{i}.weight"] = proc.to_k_ip[i].weight
            params[f"{name}.to_v_ip.{i}.weight"] = proc.to_v_ip[i].weight
    for p in params.values():
        p.requires_grad_(True)
    return params


@dataclass
class Batch:
    latents: torch.Tensor
    text: torch.Tensor
    added: dict
    identity: torch.Tensor
    expression: torch.Tensor


class Trainer:
    """Stage-1 training of the E-Adapter; subclasses add losses (see the ICA stage)."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from ..pipeline import EmojiDiffPipeline

        self.cfg = cfg
        out = Path(cfg.output_dir)
        log_with = None if cfg.report_to == "none" else cfg.report_to
        if log_with == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                log_with = None
        self.accelerator = Accelerator(
            cpu=multi_cpu(),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        )
        acc = self.accelerator
        self.pipe = EmojiDiffPipeline.from_pretrained(cfg.base, adapter=cfg.adapter, face_backend=cfg.face_backend)
        self.pipe.set_progress_bar_config(disable=True)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        pipe = self.pipe
        for m in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.image_encoder):
            if m is not None:
                m.requires_grad_(False).to(acc.device, self.weight_dtype)
        self.unet = pipe.unet.to(acc.device, self.weight_dtype)
        self.adapter_cfg: EmojiDiffConfig = pipe.config
        self.adapter_cfg.base_digest = base_digest(cfg.base)  # exported adapters name the base they trained on
        self.params = trainable_parameters(self.unet, cfg.train_branches, self.adapter_cfg.expression_layers)
        # train as we generate: identity on every layer, expression only on the expression-layer map
        self.pipe.set_scales(1.0, 1.0)
        for p in self.params.values():  # frozen weights in the mixed-precision dtype, trained ones in float32
            p.data = p.data.float()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.sdxl = self.adapter_cfg.base_family == "sdxl"

        cache = Path(cfg.cache_dir or out / "cache")
        with acc.main_process_first():
            self.train_set = TripletDataset(
                read_manifest(cfg.train_manifest), pipe, cfg.resolution, cache, show_progress=acc.is_local_main_process
            )
        self.val = read_manifest(cfg.val_manifest)[: cfg.num_validation] if cfg.val_manifest else []

        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            "constant_with_warmup", self.optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes
        )
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(self.unet, self.optimizer, self.lr_scheduler)
        self.global_step = 0

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_text(self, prompts: list[str]):
        pipe, dev = self.pipe, self.accelerator.device
        if self.sdxl:
            emb, _, pooled, _ = pipe.encode_prompt(prompts, device=dev, num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)  # fmt: skip
            res = self.cfg.resolution
            ids = torch.tensor([[res, res, 0, 0, res, res]], device=dev, dtype=emb.dtype).repeat(len(prompts), 1)
            return emb, {"text_embeds": pooled, "time_ids": ids}
        emb, _ = pipe.encode_prompt(prompts, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return emb, {}

    @torch.no_grad()
    def make_batch(self, raw: dict, gen: torch.Generator) -> Batch:
        cfg, dev, dt = self.cfg, self.accelerator.device, self.weight_dtype
        b = raw["pixels"].shape[0]
        u = torch.rand(b, 4, generator=gen)
        drop_all = u[:, 3] < cfg.drop_all
        drop_text = (u[:, 0] < cfg.drop_text) | drop_all
        drop_id = (u[:, 1] < cfg.drop_identity) | drop_all
        drop_exp = (u[:, 2] < cfg.drop_expression) | drop_all
        if cfg.train_branches == ["identity"]:
            drop_exp[:] = True  # identity-only reconstruction: the template is never shown
        prompts = ["" if d else p for p, d in zip(raw["prompt"], drop_text.tolist(), strict=True)]
        text, added = self.encode_text(prompts)
        vae = self.pipe.vae
        px = raw["pixels"].to(dev, dt)
        dist = vae.encode(px).latent_dist
        noise = torch.randn(dist.mean.shape, generator=gen).to(dev, dist.mean.dtype)
        latents = (dist.mean + dist.std * noise) * vae.config.scaling_factor
        ident = raw["identity"].clone()
        ident[drop_id] = 0.0
        exp = raw["expression"].clone()
        exp[drop_exp] = self.pipe.null_expression().float().cpu()
        return Batch(latents, text, added, ident[:, None].to(dev, dt), exp[:, None].to(dev, dt))

    def diffusion_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        latents = batch.latents
        noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        t = t.to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        added = {**batch.added, "image_embeds": [batch.identity, batch.expression]}
        pred = self.unet(noisy, t, encoder_hidden_states=batch.text, added_cond_kwargs=added).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float())
        return loss, {"loss_diffusion": loss.detach().item()}

    def compute_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Stage 1: the diffusion loss alone. ICA overrides this."""
        return self.diffusion_loss(batch, gen)

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        """JSON-able state a subclass keeps across resumes (e.g. ICA's adaptive timestep range). Stage 1: none."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    def checkpoint_dir(self, step: int) -> Path:
        return Path(self.cfg.output_dir) / f"checkpoint-{step}"

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        d = self.checkpoint_dir(self.global_step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({n: p.detach().float().cpu().contiguous() for n, p in self.params.items()},
                      str(tmp / TRAINABLE_FILE))  # fmt: skip
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()},
                       tmp / "optimizer.pt")  # fmt: skip
            state = {"global_step": self.global_step, "config": self.cfg.to_dict(), "extra": self.extra_state()}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            self.export_adapter(tmp / "adapter")
            shutil.rmtree(d, ignore_errors=True)
            tmp.replace(d)  # atomic: a checkpoint folder is complete or absent
            self._rotate()
        acc.wait_for_everyone()
        return d

    def _rotate(self) -> None:
        limit = self.cfg.checkpoints_total_limit
        if not limit:
            return
        found = sorted(Path(self.cfg.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in [p for p in found if not p.name.endswith(".tmp")][:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        found = [p for p in Path(self.cfg.output_dir).glob("checkpoint-*") if (p / STATE_FILE).is_file()]
        return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if path.name == "latest" or str(path) == "latest":
            found = self.latest_checkpoint()
            if found is None:
                self.accelerator.print("no checkpoint to resume from: starting from step 0")
                return
            path = found
        if not (path / STATE_FILE).is_file():
            raise InputError(f"checkpoint '{path}' is not a complete checkpoint folder (no {STATE_FILE})")
        state = load_file(str(path / TRAINABLE_FILE))
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n].to(p.dtype))
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)  # a file this loop wrote
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
        state = json.loads((path / STATE_FILE).read_text())
        self.global_step = state["global_step"]
        self.load_extra_state(state.get("extra") or {})
        self.accelerator.print(f"resumed from {path} at step {self.global_step}")

    def export_adapter(self, out: str | Path) -> None:
        """Write the current weights as an adapter folder (config and image encoder copied from the start adapter)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        unet = self.accelerator.unwrap_model(self.unet)
        id_sd, exp_sd = branch_weights_from_unet(unet)
        save_branch_weights(out, id_sd, exp_sd)
        src = self.pipe.adapter_path
        enc = src / self.adapter_cfg.image_encoder.get("path", "")
        if (
            self.adapter_cfg.image_encoder.get("path") == "image_encoder"
            and enc.is_dir()
            and not (out / "image_encoder").exists()
        ):
            shutil.copytree(enc, out / "image_encoder")
        self.adapter_cfg.save(out)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        if not self.val or not self.accelerator.is_main_process:
            return None
        from PIL import Image

        images = []
        for t in self.val:
            out = self.pipe(t.prompt, identity=t.identity, expression=t.template, seed=self.cfg.seed,
                            num_inference_steps=self.cfg.validation_inference_steps,
                            height=self.cfg.resolution, width=self.cfg.resolution)  # fmt: skip
            images.append(out.images[0])
        r = self.cfg.resolution
        grid = Image.new("RGB", (r * len(images), r))
        for i, im in enumerate(images):
            grid.paste(im.resize((r, r)), (i * r, 0))
        path = Path(self.cfg.output_dir) / "validation" / f"step-{self.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.writer.add_image("validation", np.asarray(grid), self.global_step, dataformats="HWC")
        return path

    # ------------------------------------------------------------------ loop
    def train(self, resume: str | None = None, end_training: bool = True) -> Path:
        """Train to ``max_steps`` (from ``resume``: ``latest`` or a checkpoint folder); returns the adapter folder.

        ``end_training=False`` finishes the trackers but keeps the process group alive, for callers (IDI rounds) that
        go on synchronising processes afterwards.
        """
        cfg, acc = self.cfg, self.accelerator
        if resume:
            self.load_checkpoint(resume)
        acc.init_trackers("emojidiff", config={k: str(v) for k, v in cfg.to_dict().items()})
        micro_per_step = cfg.gradient_accumulation_steps
        start_sample = self.global_step * micro_per_step * cfg.batch_size
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=StepSampler(len(self.train_set), cfg.seed, start_sample, acc.process_index, acc.num_processes),
            collate_fn=collate,
            num_workers=cfg.num_workers,
        )
        batches = iter(loader)
        bar = tqdm(
            total=cfg.max_steps, initial=self.global_step, desc="training", disable=not acc.is_local_main_process
        )
        self.unet.train()
        logs: dict = {}
        while self.global_step < cfg.max_steps:
            for micro in range(micro_per_step):
                gen = step_generator(cfg.seed, self.global_step, micro, acc.process_index)
                batch = self.make_batch(next(batches), gen)
                with acc.accumulate(self.unet):
                    loss, logs = self.compute_loss(batch, gen)
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"loss became {loss.item()} at step {self.global_step}")
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad()
            self.global_step += 1
            bar.update(1)
            logs["lr"] = self.lr_scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{logs.get('loss_diffusion', 0):.4f}")
            acc.log(logs, step=self.global_step)
            if self.global_step % cfg.checkpointing_steps == 0 or self.global_step == cfg.max_steps:
                self.save_checkpoint()
            if cfg.validation_steps and self.global_step % cfg.validation_steps == 0:
                self.validate()
        bar.close()
        final = Path(cfg.output_dir) / "adapter"
        if acc.is_main_process:
            self.export_adapter(final)
        if end_training:
            acc.end_training()
        else:
            for tracker in acc.trackers:
                tracker.finish()
        return final
