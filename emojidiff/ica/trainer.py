"""Stage 2, ID-enhanced Contrast Alignment (ICA), as a subclass of the shared training loop.

Per micro-step, on top of the stage-1 batch (same data order, condition dropout, noise and checkpoints):

1. diffusion loss: the stage-1 loss on its own UNet pass at a uniform timestep (or, with
   ``ica.share_diffusion_pass``, on pass 3 below);
2. ANI: the target latent is noised to ``t`` from the adaptive range (:mod:`emojidiff.ica.ani`);
3. if ``lambda_align > 0``: a no-grad UNet pass with the expression branch off (identity only), recording the
   identity branch's attention output at the aligned layers;
4. a UNet pass with identity + expression on the same noisy latent (with gradients), recording the same, giving the
   one-step prediction x̂0; decode(x̂0) goes through the differentiable face models (VAE decode and face models
   gradient-checkpointed when ``checkpoint_decode``);
5. ``L = λ_diff·L_diff + λ_id·(1 − cos(FR(decode(x̂0)), FR(reference))) + λ_exp·|Expr(decode(x̂0)) − Expr(template)|₁
   + λ_align·L_align``.

The identity loss covers samples whose identity condition was not dropped, the expression loss those whose template
was not dropped, the alignment those with both. The reference embedding is the face models' identity of the
triplet's identity reference image(s) (averaged and renormalised); where the references are embeddings (``.npy``)
rather than images, it is the identity of the triplet's target, which shows the reference person by construction.
With ``λ_id = λ_exp = λ_align = 0`` and ``λ_diff = 1`` a step is exactly a stage-1 step.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.dataset import EncodingCache, TripletDataset, target_pixels
from ..errors import InputError
from ..io import is_embedding_path
from ..train.loop import Batch, Trainer
from .align import IdentityAttentionCapture, alignment_loss, expression_branch_off
from .ani import ANIController
from .config import ICAConfig
from .face_models import DifferentiableFaceModels, get_face_models


@dataclass
class ICABatch(Batch):
    id_ref: torch.Tensor | None = None  # (B, D) reference identity (face models' embedding)
    exp_ref: torch.Tensor | None = None  # (B, K) template expression (face models' measure)
    points5: torch.Tensor | None = None  # (B, 5, 2) target landmarks, for face models that need them
    has_identity: torch.Tensor | None = None  # (B,) identity condition kept
    has_expression: torch.Tensor | None = None  # (B,) template condition kept
    same_identity: torch.Tensor | None = None  # (B, B) same person


def _pil(px: torch.Tensor):
    from PIL import Image

    arr = ((px.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


class ICADataset(torch.utils.data.Dataset):
    """A :class:`TripletDataset` plus, per triplet, the face models' reference identity and template expression
    (computed once, cached on disk by file content and face-model name), the target's five landmark points where the
    face models need them, and an identity key (manifest ``identity_id``/``person`` if present, else the reference
    files) that marks same-person pairs as non-negatives in the contrast term."""

    def __init__(
        self,
        base: TripletDataset,
        models: DifferentiableFaceModels,
        face_analyzer,
        resolution: int,
        cache_dir,
        device: torch.device | str = "cpu",
        show_progress: bool = True,
    ):
        from tqdm.auto import tqdm

        self.base, self.models, self.fa = base, models, face_analyzer
        self.resolution, self.device = resolution, device
        tag = hashlib.sha256(f"{models.name}|{resolution}".encode()).hexdigest()[:16]
        cache = EncodingCache(cache_dir, tag)
        self.id_ref: list[torch.Tensor] = []
        self.exp_ref: list[torch.Tensor] = []
        self.points: list[torch.Tensor | None] = []
        self.keys: list[str] = []
        for t in tqdm(base.triplets, desc="ICA references", disable=not show_progress):
            refs = [p for p in t.identity if not is_embedding_path(p)] or [t.target]
            embs = torch.stack([cache.get("ica-identity", p, lambda p=p: self._identity(p)) for p in refs])
            self.id_ref.append(F.normalize(F.normalize(embs, dim=-1).mean(0), dim=0))
            self.exp_ref.append(cache.get("ica-expression", t.template, lambda t=t: self._expression(t.template)))
            self.points.append(cache.get("ica-points5", t.target, lambda t=t: self._points(t.target))
                               if models.needs_points else None)  # fmt: skip
            self.keys.append(str(t.meta.get("identity_id", t.meta.get("person", "|".join(sorted(t.identity))))))

    def _pixels(self, path: str) -> torch.Tensor:
        return target_pixels(path, self.resolution)

    def _points(self, path: str) -> torch.Tensor:
        from ..faces import recognizers
        from ..faces.base import select_face

        face = select_face(self.fa.detect(_pil(self._pixels(path))), f"'{path}'")
        # the detector's own 5 keypoints where the faces stack offers them (what ArcFace models were trained on)
        points = getattr(recognizers, "identity_points5", recognizers.face_points5)
        return torch.as_tensor(points(face), dtype=torch.float32)

    @torch.no_grad()
    def _run(self, fn, path: str) -> torch.Tensor:
        px = self._pixels(path)[None].to(self.device)
        pts = self._points(path)[None] if self.models.needs_points else None
        return fn(px, pts)[0].float().cpu()

    def _identity(self, path: str) -> torch.Tensor:
        return self._run(self.models.identity, path)

    def _expression(self, path: str) -> torch.Tensor:
        return self._run(self.models.expression, path)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["id_ref"], item["exp_ref"], item["identity_key"] = self.id_ref[i], self.exp_ref[i], self.keys[i]
        if self.points[i] is not None:
            item["points5"] = self.points[i]
        return item


class ICATrainer(Trainer):
    """The shared :class:`Trainer` with ICA's losses (see the module docstring)."""

    cfg: ICAConfig

    def __init__(self, cfg: ICAConfig, face_models: DifferentiableFaceModels | None = None):
        super().__init__(cfg)
        s = cfg.ica
        s.validate("config", self.noise_scheduler.config.num_train_timesteps)
        self.ani = ANIController.from_settings(s)
        self.face_models: DifferentiableFaceModels | None = None
        self.capture: IdentityAttentionCapture | None = None
        self.checkpoint_decode = cfg.gradient_checkpointing if s.checkpoint_decode is None else s.checkpoint_decode
        acc = self.accelerator
        if s.lambda_id or s.lambda_exp:
            if face_models is None:
                opts = {k: v for k, v in s.face_models.items() if k != "name"}
                face_models = get_face_models(s.face_models["name"], **opts)
            self.face_models = face_models
            with acc.main_process_first():
                self.train_set = ICADataset(self.train_set, face_models, self.pipe.face_analyzer, cfg.resolution,
                                            self.train_set_cache_dir(), acc.device,
                                            show_progress=acc.is_local_main_process)  # fmt: skip
        if s.lambda_align:
            self.capture = IdentityAttentionCapture(acc.unwrap_model(self.unet), s.align_layers)
        self._null = self.pipe.null_expression().float().cpu()
        self.tiny_decoder = None
        if s.decoder != "vae" and self.face_models is not None:
            from diffusers import AutoencoderTiny

            try:
                self.tiny_decoder = AutoencoderTiny.from_pretrained(s.decoder)
            except Exception as e:  # noqa: BLE001
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise InputError(f"ica.decoder '{s.decoder}' is not a diffusers AutoencoderTiny ({first})") from None
            self.tiny_decoder.requires_grad_(False).to(acc.device, self.weight_dtype)
            tc, vc = self.tiny_decoder.config, self.pipe.vae.config
            up = tc.upsampling_scaling_factor ** (len(tc.decoder_block_out_channels) - 1)
            down = 2 ** (len(vc.block_out_channels) - 1)
            if up != down:
                raise InputError(
                    f"ica.decoder '{s.decoder}' upsamples latents {up}x, but the base VAE's factor is {down}x"
                )

    def train_set_cache_dir(self) -> Path:
        return Path(self.cfg.cache_dir or Path(self.cfg.output_dir) / "cache")

    # ------------------------------------------------------------------ state kept across resumes
    def extra_state(self) -> dict:
        return {"ani": self.ani.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "ani" in state:
            self.ani.load_state_dict(state["ani"])

    # ------------------------------------------------------------------ batch
    @torch.no_grad()
    def make_batch(self, raw: dict, gen: torch.Generator) -> Batch:
        batch = super().make_batch(raw, gen)  # same randomness as stage 1; nothing below draws from gen
        if not self.cfg.ica.extra_losses:
            return batch
        dev, dt = self.accelerator.device, self.weight_dtype
        has_id = batch.identity.flatten(1).abs().sum(1) > 0
        null = self._null.to(dev, dt)
        has_exp = ~(batch.expression[:, 0] == null).flatten(1).all(1)
        keys = raw.get("identity_key") or [str(i) for i in range(len(has_id))]
        same = torch.tensor([[a == b for b in keys] for a in keys], device=dev)
        pts = raw.get("points5")
        return ICABatch(
            batch.latents, batch.text, batch.added, batch.identity, batch.expression,
            id_ref=raw["id_ref"].to(dev) if "id_ref" in raw else None,
            exp_ref=raw["exp_ref"].to(dev) if "exp_ref" in raw else None,
            points5=None if pts is None else pts.to(dev), has_identity=has_id, has_expression=has_exp,
            same_identity=same,
        )  # fmt: skip

    # ------------------------------------------------------------------ losses
    def _x0(self, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac = self.noise_scheduler.alphas_cumprod.to(noisy.device)[t].float().view(-1, 1, 1, 1)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return ac.sqrt() * noisy.float() - (1 - ac).sqrt() * pred.float()
        return (noisy.float() - (1 - ac).sqrt() * pred.float()) / ac.sqrt()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (x̂0, scaled) -> images in about [-1, 1], differentiable."""
        if self.tiny_decoder is not None:  # TAESD decodes the scaled latents as they are (its scaling factor is 1)
            tiny = self.tiny_decoder
            return tiny.decode((latents / tiny.config.scaling_factor).to(tiny.dtype)).sample.float()
        vae = self.pipe.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()

    def measure(self, x0: torch.Tensor, points5: torch.Tensor | None, want_exp: bool):
        """Identity (B, D) and expression (B, K) (or None) of decode(x̂0); checkpointed when ``checkpoint_decode``."""
        fm = self.face_models
        assert fm is not None

        def fn(z: torch.Tensor):
            img = self.decode(z)
            ident = fm.identity(img, points5)
            return (ident, fm.expression(img, points5)) if want_exp else (ident,)

        out = checkpoint(fn, x0, use_reentrant=False) if self.checkpoint_decode and torch.is_grad_enabled() else fn(x0)
        return out[0], (out[1] if want_exp else None)

    def compute_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        s, dev = self.cfg.ica, batch.latents.device
        if not s.extra_losses:  # plain stage 1 (scaled)
            loss, logs = self.diffusion_loss(batch, gen)
            return (loss if s.lambda_diffusion == 1 else s.lambda_diffusion * loss), logs
        assert isinstance(batch, ICABatch)
        logs: dict = {}
        total = torch.zeros((), device=dev)
        if not s.share_diffusion_pass:
            ld, logs = self.diffusion_loss(batch, gen)
            total = total + s.lambda_diffusion * ld
        latents = batch.latents
        n = latents.shape[0]
        t = self.ani.sample(n, gen).to(dev)
        noise = torch.randn(latents.shape, generator=gen).to(dev, latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        added = {**batch.added, "image_embeds": [batch.identity, batch.expression]}
        unet = self.unet
        id_only: dict = {}
        if self.capture is not None:
            with torch.no_grad(), expression_branch_off(self.accelerator.unwrap_model(unet)), \
                    self.capture.recording() as id_only:  # fmt: skip
                unet(noisy, t, encoder_hidden_states=batch.text, added_cond_kwargs=added)
        rec = self.capture.recording() if self.capture is not None else nullcontext({})
        with rec as with_exp:
            pred = unet(noisy, t, encoder_hidden_states=batch.text, added_cond_kwargs=added).sample
        if s.share_diffusion_pass:
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
            ld = F.mse_loss(pred.float(), target.float())
            logs["loss_diffusion"] = ld.item()
            total = total + s.lambda_diffusion * ld
        has_id, has_exp = batch.has_identity, batch.has_expression
        if self.face_models is not None:
            x0 = self._x0(noisy, pred, t)
            emb, expv = self.measure(x0, batch.points5, want_exp=bool(s.lambda_exp))
            sim = (emb.float() * batch.id_ref.float()).sum(-1)
            l_id = (1 - sim)[has_id].mean() if has_id.any() else torch.zeros((), device=dev)
            total = total + s.lambda_id * l_id
            logs["loss_id"] = l_id.item()
            if expv is not None:
                err = (expv.float() - batch.exp_ref.float()).abs().mean(-1)
                l_exp = err[has_exp].mean() if has_exp.any() else torch.zeros((), device=dev)
                total = total + s.lambda_exp * l_exp
                logs["loss_exp"] = l_exp.item()
            # ANI: the mean similarity over samples with an identity, summed over processes so every rank agrees
            stats = torch.stack([sim.detach()[has_id].sum(), has_id.sum().float()]).to(dev)
            stats = self.accelerator.reduce(stats, "sum") if self.accelerator.num_processes > 1 else stats
            mean_sim = float(stats[0] / stats[1]) if float(stats[1]) > 0 else math.nan
            self.ani.update(mean_sim)
            logs["sim_x0"] = mean_sim
        if self.capture is not None:
            la, alogs = alignment_loss(with_exp, id_only, has_id & has_exp, batch.same_identity,
                                       s.align_temperature, s.align_contrast_weight)  # fmt: skip
            total = total + s.lambda_align * la
            logs.update(alogs, loss_align=la.item())
        logs["ani_t_hi"] = self.ani.state.t_hi
        logs["loss"] = total.item()
        if not total.requires_grad:
            raise InputError("ICA: no loss term has a gradient (all weights zero with nothing to train?)")
        return total, logs


def run_ica(cfg: ICAConfig, resume: str | None = None, face_models: DifferentiableFaceModels | None = None):
    """Train and return the final adapter folder."""
    return ICATrainer(cfg, face_models=face_models).train(resume=resume)
