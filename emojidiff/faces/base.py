"""The FaceAnalyzer protocol: everything the adapter needs to know about faces in an image.

A backend turns an RGB image into faces (box, score, landmarks), an aligned and masked crop for the
expression branch, an identity embedding for the identity branch, and expression measurements for
metrics and losses. Backends are chosen by name (see :mod:`emojidiff.faces.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import InputError, NoFaceError


@dataclass
class Face:
    """One detected face. Coordinates are in pixels of the analysed image."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float = 1.0
    landmarks: np.ndarray | None = None  # (K, 2) x, y in pixels, or None
    extra: dict = field(default_factory=dict)  # backend-specific data (e.g. 3-D landmarks)

    @property
    def size(self) -> float:
        x0, y0, x1, y1 = self.box
        return float(min(x1 - x0, y1 - y0))


@runtime_checkable
class FaceAnalyzer(Protocol):
    """What a face backend provides. All images are RGB ``PIL.Image``s."""

    #: the name the backend is registered under (recorded in adapter configs)
    name: str
    #: dimension of :meth:`identity_embedding`, or None if the backend has no recogniser
    identity_dim: int | None

    def detect(self, image: Image.Image) -> list[Face]:
        """All faces found, best first (highest score)."""
        ...

    def face_mask(self, image: Image.Image, face: Face) -> np.ndarray:
        """Float mask in [0, 1], shape (H, W) of ``image``: 1 on the face region (no hair, neck, background)."""
        ...

    def expression_crop(self, image: Image.Image, face: Face) -> Image.Image:
        """Aligned square crop of the face with everything outside the face region masked out.

        This is what the expression branch's image encoder sees.
        """
        ...

    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        """L2-normalised identity embedding, shape ``(identity_dim,)``."""
        ...

    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        """Named expression measurements (e.g. eye and mouth openings), for metrics and losses."""
        ...


def select_face(faces: list[Face], what: str, face_index: int | None = None) -> Face:
    """Pick the face to use: the best one by default, or ``faces[face_index]``.

    Raises a one-line :class:`NoFaceError` when there is none (or the index is out of range).
    """
    if not faces:
        raise NoFaceError(f"no face found in {what}")
    if face_index is None:
        return faces[0]
    if not 0 <= face_index < len(faces):
        raise InputError(
            f"face index {face_index} is out of range for {what}: {len(faces)} face(s) found "
            f"(indices 0..{len(faces) - 1})"
        )
    return faces[face_index]


def normalize_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Average several identity embeddings ``(n, d)`` and renormalise to unit length, giving ``(d,)``."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim == 1:
        emb = emb[None]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    mean = emb.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:
        raise InputError("the identity embeddings cancel out when averaged (they point in opposite directions)")
    return (mean / norm).astype(np.float32)
