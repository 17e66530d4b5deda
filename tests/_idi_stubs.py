"""A small deterministic face analyser for IDI and probe tests (no face model: pixel statistics only).

- the face is the central square (half the image side); ``face_mask`` is 1 there;
- identity: colour means over a 4x4 grid of the whole image, centred and projected to 16-d by a fixed random
  matrix, L2-normalised (so images of similar colour layout are "the same person");
- expression: mean grey level (in [0, 1]) of two strips of the face, ``eyes`` (top quarter) and ``mouth`` (bottom
  quarter). The expression crop greys those strips out, so the branch input does not depend on them;
- an all-black image has no face.

``expression_gain`` scales the expression readings: a stub world where a small pixel change in those strips is a
large expression change (the probe tests use it to make a block expression-sensitive).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from emojidiff.faces.base import Face

ID_DIM = 16
_PROJ = np.random.RandomState(1234).randn(48, ID_DIM)


def face_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return w // 4, h // 4, w - w // 4, h - h // 4


def strips(size: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    x0, y0, x1, y1 = face_box(size)
    q = max(1, (y1 - y0) // 4)
    return {"eyes": (x0, y0, x1, y0 + q), "mouth": (x0, y1 - q, x1, y1)}


class StatsAnalyzer:
    name = "stats-stub"
    identity_dim = ID_DIM

    def __init__(self, expression_gain: float = 1.0):
        self.expression_gain = expression_gain

    def detect(self, image: Image.Image) -> list[Face]:
        if np.asarray(image.convert("L")).max() < 3:
            return []
        return [Face(box=tuple(float(v) for v in face_box(image.size)))]

    def face_mask(self, image: Image.Image, face: Face) -> np.ndarray:
        w, h = image.size
        m = np.zeros((h, w), dtype=np.float32)
        x0, y0, x1, y1 = (int(v) for v in face.box)
        m[y0:y1, x0:x1] = 1.0
        return m

    def expression_crop(self, image: Image.Image, face: Face) -> Image.Image:
        arr = np.asarray(image.convert("RGB")).copy()
        for x0, y0, x1, y1 in strips(image.size).values():
            arr[y0:y1, x0:x1] = 128
        x0, y0, x1, y1 = (int(v) for v in face.box)
        return Image.fromarray(arr[y0:y1, x0:x1])

    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64) / 255
        grid = arr.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3)).ravel()
        v = (grid - grid.mean()) @ _PROJ
        return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)

    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        g = np.asarray(image.convert("L"), dtype=np.float64) / 255
        return {
            k: self.expression_gain * float(g[y0:y1, x0:x1].mean())
            for k, (x0, y0, x1, y1) in strips(image.size).items()
        }


def person_image(person: int, variant: int, size: int = 32) -> Image.Image:
    """An image of 'person' ``person``: a fixed colour layout per person plus a little per-variant noise."""
    base = np.random.RandomState(person).rand(4, 4, 3)
    arr = np.kron(base, np.ones((size // 4, size // 4, 1)))
    arr = arr + 0.05 * np.random.RandomState(1000 * person + variant + 1).randn(*arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def register() -> str:
    from emojidiff.faces import register_face_analyzer

    register_face_analyzer(StatsAnalyzer.name, StatsAnalyzer)
    return StatsAnalyzer.name
