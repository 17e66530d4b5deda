"""The ``none`` backend: no face model at all.

The whole image is the face crop and the face region; identity must be given as a precomputed embedding.
Useful for emoji-like templates that are already tightly cropped, and for tests.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import FaceBackendError
from .base import Face


class NoneFaceAnalyzer:
    name = "none"
    identity_dim = None

    def detect(self, image: Image.Image) -> list[Face]:
        w, h = image.size
        return [Face(box=(0.0, 0.0, float(w), float(h)), score=1.0)]

    def face_mask(self, image: Image.Image, face: Face) -> np.ndarray:
        w, h = image.size
        return np.ones((h, w), dtype=np.float32)

    def expression_crop(self, image: Image.Image, face: Face) -> Image.Image:
        return image.convert("RGB")

    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        raise FaceBackendError(
            "the 'none' face backend cannot compute identity embeddings from images: pass the identity as a .npy "
            "embedding, or choose a face backend with a recogniser (--face-backend)"
        )

    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        raise FaceBackendError("the 'none' face backend cannot measure expressions: choose another face backend")
