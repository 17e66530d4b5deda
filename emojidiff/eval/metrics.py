"""Per-image metrics of the benchmark, generic over any :class:`~emojidiff.faces.base.FaceAnalyzer`.

Score with an *evaluation* analyser: never the face models a method was trained with (the paper scores identity with
antelopev2 after training with another recogniser; the synthetic world ships a separate ``synthetic-eval`` set).

* identity similarity: cosine of the analyser's identity embeddings, output vs the (averaged) references;
* expression error: mean L1 over the analyser's named expression measurements (keys both sides have), output vs
  template — MediaPipe blendshapes for the paper's Exp on real photos, expression factors in the synthetic world;
* landmark-ratio error (LMS): :func:`emojidiff.faces.expression.lms_error` over FaceMesh ratios when the analyser
  gives 468+ landmarks, or the analyser's own ``landmark_ratios(image, face)`` if it has one, or the ``ratio_*``
  entries of its expression measurements (the synthetic analysers report their landmark ratios that way); NaN
  otherwise;
* leakage: identity similarity of the output to the *template's* person (compare with the unrelated-people level);
* intensity control: Pearson correlation, per case, between the commanded ``exp_scale`` values and the measured
  expression strength (the expression distance of each output from the same case's output at the lowest scale),
  averaged over cases (per case, so templates of different amplitude do not blur the correlation); needs at least
  three scales.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..faces.base import Face, FaceAnalyzer


@dataclass
class FaceReading:
    """What the analyser saw in one image (``face`` None when it found no face)."""

    face: Face | None
    embedding: np.ndarray | None = None
    expression: dict[str, float] | None = None
    ratios: dict[str, float] | None = None


def read_face(analyzer: FaceAnalyzer, image: Image.Image) -> FaceReading:
    faces = analyzer.detect(image)
    if not faces:
        return FaceReading(None)
    face = faces[0]
    emb = np.asarray(analyzer.identity_embedding(image, face), dtype=np.float64).reshape(-1)
    emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
    exp = dict(analyzer.measure_expression(image, face))
    ratios = None
    own = getattr(analyzer, "landmark_ratios", None)
    if callable(own):
        ratios = dict(own(image, face))
    elif face.landmarks is not None and len(face.landmarks) >= 468:
        from ..faces.expression import landmark_ratios

        ratios = landmark_ratios(face.landmarks)
    elif any(k.startswith("ratio_") for k in exp):
        ratios = {k[len("ratio_") :]: float(v) for k, v in exp.items() if k.startswith("ratio_")}
    return FaceReading(face, emb, exp, ratios)


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return math.nan
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def mean_embedding(readings: Sequence[FaceReading]) -> np.ndarray | None:
    embs = [r.embedding for r in readings if r.embedding is not None]
    if not embs:
        return None
    m = np.mean(embs, axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def dict_l1(a: Mapping[str, float] | None, b: Mapping[str, float] | None) -> float:
    """Mean absolute difference over the keys both have with finite values (NaN when none)."""
    if not a or not b:
        return math.nan
    diffs = [abs(float(a[k]) - float(b[k])) for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    return float(np.mean(diffs)) if diffs else math.nan


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation over the finite pairs (NaN with fewer than 3 or no spread)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    xa, ya = np.array(pairs).T
    if xa.std() == 0 or ya.std() == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])


def nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan
