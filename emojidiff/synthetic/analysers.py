"""The synthetic world's face analysers behind the :class:`~emojidiff.faces.base.FaceAnalyzer` protocol.

Two independently trained sets ship with the package (see MODEL_CARD.md): ``train`` (backend ``synthetic``, for
training losses) and ``eval`` (backend ``synthetic-eval``, another architecture, seed and identity split, for
scoring only). Besides the PIL-based protocol methods, :class:`SyntheticAnalysers` exposes differentiable torch
entry points (``identity``, ``expression``, ``ratios``, ``presence``, ``face``) on ``(B, 3, H, W)`` tensors in
[0, 1], for losses such as ICA's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelMissingError
from ..faces.base import Face
from .base_model import ANALYSERS_DIR, ellipse_mask, masked_face_crop
from .factors import EXPRESSION_NAMES
from .nets import FaceNet, IdentityNet, saved_parts_arch
from .render import RATIO_NAMES

#: Presence score above which ``detect`` reports a face.
PRESENCE_THRESHOLD = 0.5


def _load(net: torch.nn.Module, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    net.load_state_dict(sd)
    return net.eval().requires_grad_(False)


def analyser_folder(kind: str, root: str | Path | None = None) -> Path:
    """Where a set's weights are: ``root`` if given, else the shipped set of that kind."""
    return Path(root) if root is not None else ANALYSERS_DIR / kind


class SyntheticAnalysers(torch.nn.Module):
    """Frozen identity and face networks of one set; differentiable with respect to the input images."""

    def __init__(self, kind: str = "train", root: str | Path | None = None):
        super().__init__()
        folder = analyser_folder(kind, root)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ModelMissingError(
                f"the synthetic '{kind}' analysers are missing from '{folder}': run `emojidiff world pretrain "
                "--stages analysers --out DIR` and copy DIR/analysers into emojidiff/synthetic/weights/analysers"
            )
        self.kind = kind
        self.config = json.loads(cfg_path.read_text())
        self.identity_net = _load(
            IdentityNet(self.config["identity_arch"], self.config["identity_dim"]), folder / "identity.safetensors"
        )
        self.face_net = _load(
            FaceNet(
                self.config["face_arch"],
                self.config.get("face_parts", False),
                saved_parts_arch(self.config),
            ),
            folder / "face.safetensors",
        )
        self.eval()

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 512) L2-normalised identity embeddings."""
        return self.identity_net(x)

    def face(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """presence (B,), box (B, 4) and landmarks (B, 5, 2) as image fractions, expression (B, 13), ratios (B, 6)."""
        return self.face_net(x)

    def expression(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 13) expression factors in their natural ranges (order: ``EXPRESSION_NAMES``)."""
        return self.face_net(x)["expression"]

    def ratios(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 6) landmark ratios, the LMS analogue (order: ``RATIO_NAMES``)."""
        return self.face_net(x)["ratios"]

    def presence(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) probability that the image holds a face of this world."""
        return self.face_net(x)["presence"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


class SyntheticFaceAnalyzer:
    """FaceAnalyzer for images of the synthetic world (one face per image, roughly frontal)."""

    identity_dim = 512

    def __init__(self, kind: str = "train", root: str | Path | None = None):
        self.kind = kind
        self.name = "synthetic" if kind == "train" else f"synthetic-{kind}"
        self._root = root
        self._nets: SyntheticAnalysers | None = None

    @property
    def fingerprint(self) -> str:
        """A hash of the weight files: changes whenever the analysers are retrained (keys cached encodings)."""
        folder = analyser_folder(self.kind, self._root)
        h = hashlib.sha256()
        for name in ("identity.safetensors", "face.safetensors"):
            if (folder / name).is_file():
                h.update((folder / name).read_bytes())
        return h.hexdigest()[:16]

    @property
    def nets(self) -> SyntheticAnalysers:
        if self._nets is None:
            self._nets = SyntheticAnalysers(self.kind, self._root)
        return self._nets

    @torch.no_grad()
    def detect(self, image: Image.Image) -> list[Face]:
        w, h = image.size
        out = self.nets.face(pil_to_tensor(image))
        score = float(out["presence"][0])
        if score < PRESENCE_THRESHOLD:
            return []
        x0, y0, x1, y1 = out["box"][0].tolist()
        box = (x0 * w, y0 * h, x1 * w, y1 * h)
        lmk = out["landmarks"][0].numpy() * np.array([w, h], np.float32)
        extra = {
            "expression": dict(zip(EXPRESSION_NAMES, out["expression"][0].tolist(), strict=True)),
            "ratios": dict(zip(RATIO_NAMES, out["ratios"][0].tolist(), strict=True)),
        }
        return [Face(box=box, score=score, landmarks=lmk, extra=extra)]

    def face_mask(self, image: Image.Image, face: Face) -> np.ndarray:
        w, h = image.size
        return ellipse_mask(h, w, face.box)

    def expression_crop(self, image: Image.Image, face: Face) -> Image.Image:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        crop = masked_face_crop(arr, face.box, out_size=max(64, min(image.size)))
        return Image.fromarray((crop * 255 + 0.5).astype(np.uint8))

    @torch.no_grad()
    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        return self.nets.identity(pil_to_tensor(image))[0].numpy().astype(np.float32)

    @torch.no_grad()
    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        """The 13 expression factors plus the landmark ratios (``ratio_eye_l``, ``ratio_mouth_open``, ...)."""
        if "expression" not in face.extra:
            out = self.nets.face(pil_to_tensor(image))
            expr = dict(zip(EXPRESSION_NAMES, out["expression"][0].tolist(), strict=True))
            ratios = dict(zip(RATIO_NAMES, out["ratios"][0].tolist(), strict=True))
        else:
            expr, ratios = face.extra["expression"], face.extra["ratios"]
        return {**{k: float(v) for k, v in expr.items()}, **{f"ratio_{k}": float(v) for k, v in ratios.items()}}
