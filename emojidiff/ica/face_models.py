"""Differentiable face models for ICA's losses: a small protocol, a registry by name, and the real-world adapters.

ICA needs two frozen, differentiable measurements of a generated face, with gradients flowing back to the pixels:

* ``identity(images) -> (B, D)``: L2-normalised identity embeddings (a face recogniser);
* ``expression(images) -> (B, K)``: an expression vector whose L1 distance says how different two expressions are.

Images are ``(B, 3, H, W)`` tensors in [-1, 1] (what the VAE decodes to). Real photos are not aligned, so a model may
ask for five landmark points per image (``needs_points = True``; eye centres, nose tip, mouth corners, in pixels of the
given image): the ICA dataset then detects them once per file with the pipeline's face backend and passes them in.

Built-in names (:func:`get_face_models`):

* ``arcface-landmarks`` (real photos): identity from the arcface_torch IResNet (:class:`TorchArcFaceRecognizer`,
  user-supplied checkpoint) on a differentiable ArcFace alignment; expression from a differentiable 68-point
  landmark regressor (a user-supplied TorchScript file, e.g. an exported FAN/PIPNet/SPIGA-style model) turned into
  normalised amplitude ratios (eye openings, mouth opening/width, mouth-corner lift, brow raises, brow gap). Why this
  measure: it is differentiable, identity-light (every ratio is divided by the inter-ocular distance or the eye width)
  and carries no appearance, so matching it cannot pull the template's identity into the output — which a feature
  distance (e.g. CLIP features of the template crop) would. It is *not* an evaluation measure: the evaluation scores
  MediaPipe's 52 blendshapes (Exp) and FaceMesh landmark ratios (LMS) with another landmark model and topology. It is
  still geometry, so LMS is not fully independent of what this loss optimises; Exp is the cleaner check.
* ``synthetic`` (synthetic world): the world's *training* analysers (``emojidiff.synthetic.analysers``); the
  evaluation set is refused.

Other worlds or models register a factory with :func:`register_face_models`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..errors import InputError, ModelMissingError


@runtime_checkable
class DifferentiableFaceModels(Protocol):
    """The two frozen measurements ICA's losses need. Parameters must not require gradients."""

    #: recorded in logs and in the ICA encoding cache key
    name: str
    #: whether :meth:`identity` / :meth:`expression` need five landmark points per image
    needs_points: bool

    def identity(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit vectors; differentiable with respect to ``images``."""
        ...

    def expression(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, K) expression vector; differentiable with respect to ``images``."""
        ...


FaceModelsFactory = Callable[..., DifferentiableFaceModels]
_FACTORIES: dict[str, FaceModelsFactory] = {}


def register_face_models(name: str, factory: FaceModelsFactory, overwrite: bool = False) -> None:
    """Make ``factory(**options)`` available as ICA face models under ``name``."""
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"ICA face models '{name}' are already registered")
    _FACTORIES[name] = factory


def available_face_models() -> list[str]:
    return sorted(_FACTORIES)


def get_face_models(name: str, **options: Any) -> DifferentiableFaceModels:
    """Build the face models registered under ``name`` with ``options`` (from the ``ica.face_models`` config)."""
    if name not in _FACTORIES:
        raise InputError(f"unknown ICA face models '{name}': known are {', '.join(available_face_models())}")
    try:
        models = _FACTORIES[name](**options)
    except TypeError as e:
        raise InputError(f"ICA face models '{name}' do not take these options ({e})") from None
    if not isinstance(models, DifferentiableFaceModels):
        raise InputError(f"ICA face models '{name}' do not provide identity() and expression()")
    return models


# --- real photos --------------------------------------------------------------------------------------------------

#: 68-point iBUG indices
_EYE_L, _EYE_R = (36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)
_BROW_L, _BROW_R = (17, 18, 19, 20, 21), (22, 23, 24, 25, 26)
#: the ratios :func:`ibug68_ratios` returns, in order
IBUG_RATIO_KEYS = (
    "eye_open_left", "eye_open_right", "mouth_open", "mouth_width", "mouth_corner_lift",
    "brow_raise_left", "brow_raise_right", "brow_gap",
)  # fmt: skip


def ibug68_ratios(lm: torch.Tensor) -> torch.Tensor:
    """(B, 68, 2) landmarks (any unit, image y down) -> (B, 8) expression ratios (order ``IBUG_RATIO_KEYS``).

    Measured in the face's own frame (roll removed), lengths divided by the inter-ocular distance (eye openings by the
    eye width), so they do not depend on image scale, position or in-plane rotation.
    """
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise InputError(f"the landmark model must give (B, 68, 2) points, got {tuple(lm.shape)}")
    eye_l, eye_r = lm[:, list(_EYE_L)].mean(1), lm[:, list(_EYE_R)].mean(1)
    axis = eye_r - eye_l
    iod = axis.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    ax = axis / iod
    ay = torch.stack([-ax[:, 1], ax[:, 0]], dim=-1)
    rel = lm - ((eye_l + eye_r) / 2)[:, None]
    f = torch.stack([(rel * ax[:, None]).sum(-1), (rel * ay[:, None]).sum(-1)], dim=-1) / iod[:, None]

    def d(a: int, b: int) -> torch.Tensor:
        return (f[:, a] - f[:, b]).norm(dim=-1)

    def eye_open(c0: int, c1: int, u: tuple[int, int], lo: tuple[int, int]) -> torch.Tensor:
        return (d(u[0], lo[1]) + d(u[1], lo[0])) / 2 / d(c0, c1).clamp_min(1e-6)

    lip_mid_y = (f[:, 62, 1] + f[:, 66, 1]) / 2
    corners_y = (f[:, 48, 1] + f[:, 54, 1]) / 2
    return torch.stack(
        [
            eye_open(36, 39, (37, 38), (40, 41)),
            eye_open(42, 45, (43, 44), (46, 47)),
            d(62, 66),
            d(48, 54),
            lip_mid_y - corners_y,
            f[:, list(_EYE_L), 1].mean(1) - f[:, list(_BROW_L), 1].mean(1),
            f[:, list(_EYE_R), 1].mean(1) - f[:, list(_BROW_R), 1].mean(1),
            d(21, 22),
        ],
        dim=-1,
    )


class ArcFaceLandmarkModels:
    """Real photos: IResNet ArcFace identity + landmark-ratio expression, both on differentiable aligned crops."""

    needs_points = True

    def __init__(
        self,
        recognizer: str,
        landmarks: str | torch.nn.Module,
        landmark_input_size: int = 256,
        landmark_input_range: str = "0,1",
        device: str = "cpu",
    ):
        from ..faces.recognizers import TorchArcFaceRecognizer

        self.recognizer = TorchArcFaceRecognizer(recognizer, device=device)
        if isinstance(landmarks, torch.nn.Module):
            self.landmark_net = landmarks
        else:
            try:
                self.landmark_net = torch.jit.load(str(landmarks), map_location=device)
            except (RuntimeError, ValueError, OSError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ModelMissingError(f"landmark model '{landmarks}' could not be loaded ({first[:160]})") from None
        self.landmark_net.eval()
        for p in self.landmark_net.parameters():
            p.requires_grad_(False)
        if landmark_input_range not in ("0,1", "-1,1", "imagenet"):
            raise InputError(f"landmark_input_range must be 0,1, -1,1 or imagenet, got {landmark_input_range!r}")
        self.size, self.range = int(landmark_input_size), landmark_input_range
        self.name = f"{self.recognizer.name}+landmarks68"

    def identity(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        from ..faces.recognizers import warp_to_arcface_tensor

        if points5 is None:
            raise InputError("the ArcFace identity model needs five landmark points per image")
        return self.recognizer.embed_tensor(warp_to_arcface_tensor(images.float(), points5))

    def expression(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        from ..faces.recognizers import warp_to_arcface_tensor

        if points5 is None:
            raise InputError("the landmark expression model needs five landmark points per image")
        crop = warp_to_arcface_tensor(images.float(), points5, size=self.size)
        if self.range == "0,1":
            crop = (crop + 1) / 2
        elif self.range == "imagenet":
            mean = torch.tensor([0.485, 0.456, 0.406], device=crop.device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], device=crop.device).view(1, 3, 1, 1)
            crop = ((crop + 1) / 2 - mean) / std
        out = self.landmark_net(crop)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return ibug68_ratios(out.reshape(out.shape[0], 68, 2).float())


# --- synthetic world ----------------------------------------------------------------------------------------------


class SyntheticFaceModels:
    """The synthetic world's training analysers (inputs in [0, 1] there; converted here)."""

    needs_points = False

    def __init__(self, kind: str = "train", root: str | None = None):
        if kind != "train":
            raise InputError("ICA must use the synthetic *training* analysers (kind: train), never the evaluation set")
        from ..synthetic.analysers import SyntheticAnalysers

        self.nets = SyntheticAnalysers(kind, root)
        self.name = f"synthetic-{kind}"

    def identity(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.nets.identity((images.float() + 1) / 2), dim=-1)

    def expression(self, images: torch.Tensor, points5: torch.Tensor | None = None) -> torch.Tensor:
        return self.nets.expression((images.float() + 1) / 2)


register_face_models("arcface-landmarks", ArcFaceLandmarkModels)
register_face_models("synthetic", SyntheticFaceModels)
