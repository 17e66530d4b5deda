"""Identity from one or several photos: choose the face, embed, average, and report photos that disagree."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import load_image
from .base import Face, FaceAnalyzer, normalize_embeddings, select_face

log = logging.getLogger(__name__)


def choose_face(
    analyzer: FaceAnalyzer, image: Image.Image, what: str, face_index: int | None = None
) -> tuple[Face, list[Face]]:
    """Detect, pick the best face (or ``face_index``), log how many were found; returns (face, all faces)."""
    faces = analyzer.detect(image)
    face = select_face(faces, what, face_index)
    if len(faces) > 1:
        idx = faces.index(face)
        log.info("%d faces found in %s; using face %d%s", len(faces), what, idx, " (the best)" if idx == 0 else "")
    return face, faces


@dataclass
class IdentityResult:
    embedding: np.ndarray  # (d,) unit vector: the average of the agreeing photos
    per_photo: np.ndarray  # (n, d)
    names: list[str]
    similarity_to_rest: list[float]  # cosine of each photo to the mean of the others
    outliers: list[int] = field(default_factory=list)  # indices of photos that look like someone else
    face_counts: list[int] = field(default_factory=list)
    recognizer: str | None = None

    def report(self) -> list[str]:
        lines = []
        for i, name in enumerate(self.names):
            flag = "  <- disagrees with the others (another person?)" if i in self.outliers else ""
            n = self.face_counts[i] if i < len(self.face_counts) else 1
            faces = f", {n} faces (best used)" if n > 1 else ""
            lines.append(f"{name}: similarity to the others {self.similarity_to_rest[i]:.3f}{faces}{flag}")
        return lines


def identity_from_images(
    analyzer: FaceAnalyzer,
    images: list[Image.Image | str | os.PathLike],
    face_index: int | None = None,
    threshold: float | None = None,
    drop_outliers: bool = False,
) -> IdentityResult:
    """Embed the identity in each photo and average them (renormalised).

    A photo whose cosine to the mean of the *other* photos falls below ``threshold`` (default: the recogniser's
    ``same_person_cosine``) is reported in ``outliers``; with ``drop_outliers`` it is left out of the average
    (unless that would leave nothing).
    """
    if not images:
        raise InputError("no identity photo was given")
    embs, names, counts = [], [], []
    for i, item in enumerate(images):
        name = str(item) if isinstance(item, (str, os.PathLike)) else f"identity image {i + 1}"
        img = load_image(item, "identity image") if isinstance(item, (str, os.PathLike, Path)) else item
        face, faces = choose_face(analyzer, img, f"identity image '{name}'", face_index)
        embs.append(analyzer.identity_embedding(img, face))
        names.append(name)
        counts.append(len(faces))
    per = np.stack(embs).astype(np.float32)
    rec = getattr(analyzer, "recognizer", None)
    thr = threshold if threshold is not None else float(getattr(rec, "same_person_cosine", 0.3))
    sims: list[float] = []
    for i in range(len(per)):
        rest = np.delete(per, i, axis=0)
        sims.append(float(per[i] @ normalize_embeddings(rest)) if len(rest) else 1.0)
    outliers = [i for i, s in enumerate(sims) if len(per) > 1 and s < thr]
    if len(per) == 2 and outliers:
        outliers = [0, 1]  # with two photos there is no majority: both are suspect
    keep = [i for i in range(len(per)) if not (drop_outliers and i in outliers)] or list(range(len(per)))
    return IdentityResult(
        embedding=normalize_embeddings(per[keep]),
        per_photo=per,
        names=names,
        similarity_to_rest=sims,
        outliers=outliers,
        face_counts=counts,
        recognizer=getattr(analyzer, "recognizer_name", None),
    )
