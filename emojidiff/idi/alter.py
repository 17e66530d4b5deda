"""Identity alteration: make G' from G so that only identity B remains, keeping G's expression.

Two kinds of backend:

- ``diffusion`` (built in): diffusion re-identification. G is noised part-way (img2img at strength s, i.e. inverted
  to timestep ~ s·T with noise) and denoised with identity B while the expression branch is fed G itself. The
  strength adapts per sample (:func:`adaptive_strength`): strengths are tried in increasing order until the
  identity is B's (and not A's) with the expression kept.
- face swappers: anything implementing :class:`FaceSwapper`, registered by name with :func:`register_face_swapper`
  and chosen with ``alteration: NAME`` in the IDI config. ``inswapper`` (insightface's ``inswapper_128.onnx``) is
  registered here; its model is never downloaded: a missing file or package is a one-line error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..errors import FaceBackendError, ModelMissingError
from .filters import Scores, expression_reasons, filter_reasons, identity_reasons


@dataclass
class Attempt:
    strength: float | None
    image: Image.Image
    scores: Scores
    reasons: list[str]

    def record(self) -> dict:
        return {"strength": self.strength, **self.scores.to_dict(), "reasons": list(self.reasons)}


@dataclass
class Alteration:
    """The chosen G' and every attempt that led to it."""

    image: Image.Image
    scores: Scores
    strength: float | None
    attempts: list[Attempt] = field(default_factory=list)


def adaptive_strength(
    strengths: list[float], render: Callable[[float], Image.Image], score: Callable[[Image.Image], Scores], cfg
) -> Alteration:
    """Try ``render(s)`` for increasing ``s`` until the result passes the filters of ``cfg``.

    Stops at the first strength whose image passes every filter. It also stops, early, at the first strength where
    the identity is already B's but the expression is lost: more noise only loses more of it. When no strength
    passes, the attempt with the fewest failed tests is returned (the lowest strength among equals), and the
    filters will reject it.
    """
    attempts: list[Attempt] = []
    for s in strengths:
        img = render(s)
        sc = score(img)
        reasons = filter_reasons(sc, cfg)
        attempts.append(Attempt(s, img, sc, reasons))
        if not reasons:
            break
        if "nan_score" not in reasons and not identity_reasons(sc, cfg) and expression_reasons(sc, cfg):
            break
    best = min(attempts, key=lambda a: len(a.reasons))  # min keeps the first (lowest strength) among ties
    return Alteration(best.image, best.scores, best.strength, attempts)


# ---------------------------------------------------------------------------------------------- diffusion re-ID
class DiffusionReID:
    """Built-in re-identification with the model being iterated (shares the UNet and the loaded adapter)."""

    name = "diffusion"

    def __init__(self, pipe, cfg):
        from diffusers import AutoPipelineForImage2Image

        self.pipe, self.cfg = pipe, cfg
        self.i2i = AutoPipelineForImage2Image.from_pipe(pipe.pipe)
        self.i2i.set_progress_bar_config(disable=True)

    def render(self, g: Image.Image, identity: np.ndarray, prompt: str, strength: float, seed: int) -> Image.Image:
        """Noise G to ``strength`` and denoise with ``identity`` while the expression branch sees G itself."""
        if strength <= 0:
            return g
        cfg, pipe = self.cfg, self.pipe
        steps = max(cfg.reid_steps or cfg.num_inference_steps, math.ceil(1.0 / strength))
        id_scale = cfg.id_scale if cfg.reid_id_scale is None else cfg.reid_id_scale
        exp_scale = cfg.exp_scale if cfg.reid_exp_scale is None else cfg.reid_exp_scale
        pipe.set_scales(id_scale, exp_scale)
        do_cfg = cfg.guidance_scale > 1 and pipe.pipe.unet.config.get("time_cond_proj_dim") is None
        embeds = pipe.ip_adapter_embeds(identity, pipe.encode_expression(g), do_cfg)
        out = self.i2i(
            prompt=prompt,
            negative_prompt=cfg.negative_prompt,
            image=g,
            strength=float(strength),
            ip_adapter_image_embeds=embeds,
            num_inference_steps=steps,
            guidance_scale=cfg.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
        )
        return out.images[0]

    def alter(self, g, *, identity_image: str, identity: np.ndarray, prompt: str, seed: int, score) -> Alteration:
        render = lambda s: self.render(g, identity, prompt, s, seed)  # noqa: E731
        return adaptive_strength(list(self.cfg.reid_strengths), render, score, self.cfg)


# ---------------------------------------------------------------------------------------------- face swappers
@runtime_checkable
class FaceSwapper(Protocol):
    """An external face swapper: puts the identity of the face in ``source`` onto the face in ``image``."""

    name: str

    def swap(self, image: Image.Image, source: Image.Image) -> Image.Image: ...


_SWAPPERS: dict[str, Callable[[], FaceSwapper]] = {}


def register_face_swapper(name: str, factory: Callable[[], FaceSwapper]) -> None:
    """Make a swapper available as ``alteration: NAME`` (the factory runs when a run chooses it)."""
    if name == "diffusion":
        raise ValueError("'diffusion' is the built-in re-identification backend's name")
    _SWAPPERS[name] = factory


def available_alterations() -> list[str]:
    return ["diffusion", *sorted(_SWAPPERS)]


def get_face_swapper(name: str) -> FaceSwapper:
    if name not in _SWAPPERS:
        raise FaceBackendError(
            f"unknown identity alteration '{name}': available are {', '.join(available_alterations())}"
        )
    return _SWAPPERS[name]()


class SwapAlteration:
    """Adapts a :class:`FaceSwapper` to the alteration interface (one attempt, no strength)."""

    def __init__(self, swapper: FaceSwapper):
        self.swapper = swapper
        self.name = swapper.name

    def alter(self, g, *, identity_image: str, identity: np.ndarray, prompt: str, seed: int, score) -> Alteration:
        from ..io import load_image

        img = self.swapper.swap(g, load_image(identity_image, "identity image")).convert("RGB")
        sc = score(img)
        return Alteration(img, sc, None, [Attempt(None, img, sc, [])])


INSWAPPER_ENV = "EMOJIDIFF_INSWAPPER_ONNX"


class InSwapper:
    """insightface's ``inswapper_128.onnx`` (non-commercial licence), with insightface's ``buffalo_l`` detector.

    The model file is looked for in ``$EMOJIDIFF_INSWAPPER_ONNX``, then ``<models dir>/inswapper_128.onnx``.
    """

    name = "inswapper"

    def __init__(self):
        from ..faces.models import models_dir

        env = os.environ.get(INSWAPPER_ENV)
        candidates = [Path(env).expanduser()] if env else []
        candidates.append(models_dir() / "inswapper_128.onnx")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ModelMissingError(
                f"face swapper 'inswapper' needs inswapper_128.onnx (looked in: {', '.join(map(str, candidates))}); "
                f"put the file there or set ${INSWAPPER_ENV} (its licence is non-commercial), or use "
                f"alteration: diffusion"
            )
        try:
            import insightface
            from insightface.app import FaceAnalysis
        except ImportError:
            raise FaceBackendError(
                "face swapper 'inswapper' needs the insightface package: pip install insightface"
            ) from None
        self.model = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
        self.app = FaceAnalysis(name="buffalo_l", root=str(path.parent), providers=["CPUExecutionProvider"])
        self.app.prepare(ctx_id=-1)

    def _face(self, bgr: np.ndarray, what: str):
        from ..errors import NoFaceError

        faces = self.app.get(bgr)
        if not faces:
            raise NoFaceError(f"inswapper found no face in {what}")
        return max(faces, key=lambda f: float(f.det_score))

    def swap(self, image: Image.Image, source: Image.Image) -> Image.Image:
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
        src = np.asarray(source.convert("RGB"))[:, :, ::-1].copy()
        out = self.model.get(bgr, self._face(bgr, "the generated image"), self._face(src, "the identity image"),
                             paste_back=True)  # fmt: skip
        return Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]))


register_face_swapper("inswapper", InSwapper)


def make_alteration(name: str, pipe, cfg):
    """The alteration backend ``name`` for a run (fails early, with one line, when its model is absent)."""
    if name == "diffusion":
        return DiffusionReID(pipe, cfg)
    return SwapAlteration(get_face_swapper(name))
