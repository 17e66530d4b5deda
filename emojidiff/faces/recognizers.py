"""Identity recognisers behind one small interface, so a backend can pair any detector with any recogniser.

* :class:`DlibRecognizer` — dlib's 128-d ResNet descriptor (``dlib-bin`` + ``face_recognition_models``); works
  offline; the default *evaluation* recogniser.
* :class:`OnnxArcFaceRecognizer` — InsightFace ArcFace ONNX models (``buffalo_l/w600k_r50.onnx``,
  ``antelopev2/glintr100.onnx``; user-supplied, non-commercial) through onnxruntime.
* :class:`TorchArcFaceRecognizer` — the arcface_torch IResNet in PyTorch (user-supplied checkpoint), differentiable
  (:meth:`TorchArcFaceRecognizer.embed_tensor`), for identity losses.

All return L2-normalised float32 vectors. ``same_person_cosine`` is the cosine similarity (of normalised
embeddings) above which two faces are treated as the same person, used to flag identity photos that disagree.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import FaceBackendError, ModelMissingError
from . import models
from .base import Face
from .geometry import ARCFACE_SIZE, align_arcface, five_points


@runtime_checkable
class Recognizer(Protocol):
    name: str
    dim: int
    same_person_cosine: float

    def embed(self, image: Image.Image, face: Face) -> np.ndarray: ...


def face_points5(face: Face) -> np.ndarray:
    """The 5 alignment points of a face: from dense landmarks, or from what the detector gave."""
    if face.landmarks is not None and len(face.landmarks) >= 468:
        return five_points(face.landmarks)
    if "points5" in face.extra:
        return np.asarray(face.extra["points5"], dtype=np.float64)
    if face.landmarks is not None and len(face.landmarks) == 5:
        return np.asarray(face.landmarks, dtype=np.float64)
    raise FaceBackendError("this face has no landmarks to align it with (the backend gave only a box)")


def identity_points5(face: Face) -> np.ndarray:
    """The 5 points for the ArcFace alignment: the detector's own keypoints where it gave them (SCRFD's ``kps5``,
    what InsightFace's recognisers were trained on), else :func:`face_points5`."""
    if "kps5" in face.extra:
        return np.asarray(face.extra["kps5"], dtype=np.float64)
    return face_points5(face)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise FaceBackendError("the recogniser returned an all-zero or non-finite embedding")
    return v / n


# --- dlib -----------------------------------------------------------------------------------------------------


class DlibRecognizer:
    """dlib's ``dlib_face_recognition_resnet_model_v1`` (128-d) on dlib's own 150x150 face chip."""

    name = "dlib-resnet-v1"
    dim = 128
    # dlib's documented threshold is a Euclidean distance of 0.6 between raw descriptors (norm ≈ 1.4 here),
    # about 0.91 cosine; same person typically > 0.95, different people 0.80–0.90.
    same_person_cosine = 0.92

    def __init__(self, jitter: int = 0):
        try:
            import dlib
        except ImportError:
            raise FaceBackendError(
                "the dlib recogniser needs the 'dlib' module: pip install dlib-bin (see the faces extra)"
            ) from None
        self._dlib = dlib
        sp = models.require("dlib-shape-predictor-5", "the dlib recogniser")
        rec = models.require("dlib-face-recognition", "the dlib recogniser")
        self._sp = dlib.shape_predictor(str(sp))
        self._rec = dlib.face_recognition_model_v1(str(rec))
        self._jitter = int(jitter)
        self._lock = threading.Lock()

    def chip(self, image: Image.Image, face: Face) -> np.ndarray:
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        rect = self._dlib.rectangle(x0, y0, x1, y1)
        with self._lock:
            shape = self._sp(arr, rect)
            return np.asarray(self._dlib.get_face_chip(arr, shape, size=150, padding=0.25))

    def embed(self, image: Image.Image, face: Face) -> np.ndarray:
        chip = np.ascontiguousarray(self.chip(image, face))
        with self._lock:
            desc = self._rec.compute_face_descriptor(chip, self._jitter)
        return _normalise(np.asarray(desc))


# --- InsightFace ONNX -----------------------------------------------------------------------------------------

#: recognition model inside each known InsightFace pack
KNOWN_ONNX = {"buffalo_l": "w600k_r50.onnx", "antelopev2": "glintr100.onnx", "buffalo_s": "w600k_mbf.onnx"}


def find_onnx_recognizer(path: str | os.PathLike) -> Path:
    """The recognition .onnx in an InsightFace model folder (or the file itself)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if p.name in KNOWN_ONNX and (p / KNOWN_ONNX[p.name]).is_file():
            return p / KNOWN_ONNX[p.name]
        for fname in KNOWN_ONNX.values():
            if (p / fname).is_file():
                return p / fname
        cands = sorted(p.glob("*.onnx"))
        for c in cands:  # the recogniser is the model with a 112x112 input
            try:
                import onnxruntime as ort

                shape = ort.InferenceSession(str(c), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
            except Exception:  # noqa: BLE001
                continue
            if list(shape[2:]) == [ARCFACE_SIZE, ARCFACE_SIZE]:
                return c
    raise ModelMissingError(f"no ArcFace recognition .onnx (112x112 input) found in '{p}'")


class OnnxArcFaceRecognizer:
    """An InsightFace ArcFace ONNX model: input (N, 3, 112, 112) RGB, output (N, D)."""

    same_person_cosine = 0.30  # ArcFace: same person typically > 0.4, different people < 0.2

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise FaceBackendError(
                "the InsightFace recogniser needs onnxruntime: pip install onnxruntime (see the faces extra)"
            ) from None
        self.path = find_onnx_recognizer(path)
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelMissingError(f"ArcFace model '{self.path}' could not be loaded ({first[:160]})") from None
        inp = self._sess.get_inputs()[0]
        if len(inp.shape) != 4 or list(inp.shape[2:]) != [ARCFACE_SIZE, ARCFACE_SIZE]:
            raise ModelMissingError(f"ArcFace model '{self.path}' takes input {inp.shape}, not (N, 3, 112, 112)")
        self._input = inp.name
        out = self._sess.get_outputs()[0]
        dim = out.shape[-1]
        if not isinstance(dim, int):  # symbolic: run once to find it
            dim = self._run(np.zeros((1, 3, ARCFACE_SIZE, ARCFACE_SIZE), np.float32)).shape[-1]
        self.dim = int(dim)
        # InsightFace's rule: models whose graph starts with Sub/Mul normalise inside; the others take (x-127.5)/127.5
        self.input_mean, self.input_std = (0.0, 1.0) if self._normalises_inside() else (127.5, 127.5)
        self.name = name or f"insightface-{self.path.parent.name}-{self.path.stem}"
        self._lock = threading.Lock()

    def _normalises_inside(self) -> bool:
        try:
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
        except Exception:  # noqa: BLE001 - onnx missing or unreadable: assume the usual ArcFace export
            return False
        ops = [n.op_type for n in graph.node[:8]]
        return "Sub" in ops and "Mul" in ops

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._sess.run(None, {self._input: batch})[0])

    def preprocess(self, aligned: Image.Image) -> np.ndarray:
        arr = np.asarray(aligned.convert("RGB"), dtype=np.float32)
        arr = (arr - self.input_mean) / self.input_std
        return arr.transpose(2, 0, 1)[None].astype(np.float32)

    def embed_aligned(self, aligned: Image.Image) -> np.ndarray:
        with self._lock:
            return _normalise(self._run(self.preprocess(aligned))[0])

    def embed(self, image: Image.Image, face: Face) -> np.ndarray:
        return self.embed_aligned(align_arcface(image, identity_points5(face)))


# --- arcface_torch IResNet ------------------------------------------------------------------------------------


def find_torch_checkpoint(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for pattern in ("*.safetensors", "*.pth", "*.pt"):
            found = sorted(p.glob(pattern))
            if found:
                return found[0]
    raise ModelMissingError(f"no ArcFace checkpoint (.safetensors or .pth) found in '{p}'")


class TorchArcFaceRecognizer:
    """arcface_torch IResNet in PyTorch. :meth:`embed_tensor` keeps gradients for identity losses."""

    same_person_cosine = 0.30

    def __init__(self, path: str | os.PathLike, name: str | None = None, device: str = "cpu"):
        import torch

        from .iresnet import load_iresnet

        self.path = find_torch_checkpoint(path)
        self.net = load_iresnet(self.path).to(device)
        for prm in self.net.parameters():
            prm.requires_grad_(False)
        self.dim = int(self.net.features.num_features)
        depth = sum(self.net.layers_cfg) * 2 + 2
        self.name = name or f"arcface-torch-r{depth}"
        self._torch = torch
        self.device = device

    def embed_tensor(self, aligned: torch.Tensor) -> torch.Tensor:  # noqa: F821
        """(N, 3, 112, 112) RGB in [-1, 1], aligned to the ArcFace template → (N, D) unit vectors (differentiable)."""
        feats = self.net(aligned.to(self.device, dtype=next(self.net.parameters()).dtype))
        return self._torch.nn.functional.normalize(feats, dim=-1)

    def embed_aligned(self, aligned: Image.Image) -> np.ndarray:
        t = self._torch.from_numpy(np.asarray(aligned.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        with self._torch.no_grad():
            out = self.embed_tensor(t.permute(2, 0, 1)[None])
        return _normalise(out[0].cpu().numpy())

    def embed(self, image: Image.Image, face: Face) -> np.ndarray:
        return self.embed_aligned(align_arcface(image, identity_points5(face)))


def warp_to_arcface_tensor(images, points5, size: int = ARCFACE_SIZE):
    """Differentiable ArcFace alignment of a batch: images (N, 3, H, W) in any range, points5 (N, 5, 2) pixels.

    Returns (N, 3, size, size) sampled with ``grid_sample`` (gradients flow to ``images``), for identity losses on
    generated images.
    """
    import torch
    import torch.nn.functional as F

    from .geometry import ARCFACE_TEMPLATE, similarity_transform

    n, _, h, w = images.shape
    thetas = []
    for pts in np.asarray(points5 if not torch.is_tensor(points5) else points5.detach().cpu().numpy()):
        m = similarity_transform(pts, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
        inv = np.linalg.inv(m)  # crop → image, continuous coordinates (pixel i spans [i, i + 1))
        # grid_sample (align_corners=False) normalises a continuous coordinate c of a side L as u = 2c / L - 1
        to_norm_img = np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
        from_norm_crop = np.array([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]])
        theta = to_norm_img @ inv @ from_norm_crop
        thetas.append(theta[:2])
    theta = torch.as_tensor(np.stack(thetas), dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta, (n, images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
