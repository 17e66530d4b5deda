"""The InsightFace face backend: SCRFD detection + 5 keypoints, ArcFace ONNX identity (user-supplied models).

Pipeline for one image:

1. SCRFD (:class:`~emojidiff.faces.scrfd.ScrfdDetector`) finds faces with a score and 5 keypoints, best first
   (highest score), after non-maximum suppression;
2. identity: the ArcFace 112x112 alignment from SCRFD's own 5 keypoints (what InsightFace's recognisers are trained
   on), embedded by the pack's ArcFace ONNX recogniser;
3. expression crop, face mask, expression ratios: when mediapipe is installed, FaceMesh's 478 landmarks are found
   inside each SCRFD box (as in the MediaPipe backend) and used exactly as there (face-oval mask, LMS ratios, pose
   warnings). Without mediapipe (or when FaceMesh finds nothing) the crop is aligned on SCRFD's 5 keypoints and
   the mask is a face-shaped ellipse built from them (:func:`~emojidiff.faces.geometry.ellipse_from_points`), and
   the landmark expression ratios are unavailable (one-line error).

Quality notes (tiny face, extreme pose, no dense landmarks) are raised as
:class:`~emojidiff.faces.mediapipe_backend.FaceQualityWarning` when the face is used, like the MediaPipe backend.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import FaceBackendError
from .base import Face
from .mediapipe_backend import MAX_PITCH, MAX_YAW, MIN_FACE_PX, MediaPipeFaceAnalyzer
from .recognizers import Recognizer
from .regions import FaceRegionMixin, attach_mesh, finish_notes
from .scrfd import ScrfdDetector


class InsightFaceAnalyzer(FaceRegionMixin):
    """FaceAnalyzer on SCRFD (+ optional MediaPipe FaceMesh landmarks); see the module docstring.

    ``use_mesh``: True requires mediapipe, False never uses it, None (default) uses it when installed.
    """

    def __init__(
        self,
        detector: ScrfdDetector,
        recognizer: Recognizer | None,
        name: str = "insightface",
        use_mesh: bool | None = None,
        crop_fill: tuple[int, int, int] = (0, 0, 0),
    ):
        self.name = name
        self.detector = detector
        self.recognizer = recognizer
        self.identity_dim = recognizer.dim if recognizer is not None else None
        self.recognizer_name = recognizer.name if recognizer is not None else None
        self.crop_fill = tuple(crop_fill)
        self._mesh: MediaPipeFaceAnalyzer | None = None
        if use_mesh or use_mesh is None:
            try:
                self._mesh = MediaPipeFaceAnalyzer(recognizer=None, name=f"{name}-facemesh")
            except FaceBackendError:
                if use_mesh:
                    raise
        #: where the dense landmarks come from: "mediapipe-facemesh", or "scrfd-5" (5 keypoints only)
        self.landmarks_source = "mediapipe-facemesh" if self._mesh is not None else "scrfd-5"
        self._blendshapes = None

    def __repr__(self) -> str:
        return (
            f"InsightFaceAnalyzer(name={self.name!r}, detector={self.detector.path.name!r}, "
            f"recognizer={self.recognizer_name!r}, landmarks={self.landmarks_source!r})"
        )

    # --- detection ---------------------------------------------------------------------------------------------

    def detect(self, image: Image.Image) -> list[Face]:
        """All faces, best first (highest SCRFD score); ``extra["kps5"]`` holds SCRFD's 5 keypoints."""
        image = image.convert("RGB")
        boxes, scores, kps = self.detector.detect(image)
        faces = []
        for box, score, pts in zip(boxes, scores, kps, strict=True):
            face = Face(box=tuple(float(v) for v in box), score=float(score))
            face.extra.update(kps5=pts.copy(), points5=pts.copy(), detector=f"scrfd {self.detector.path.name}")
            notes: list[str] = []
            if self._mesh is not None:
                lm3 = self._mesh._mesh_for(image, face)
                if lm3 is not None:
                    attach_mesh(face, lm3, notes, MAX_YAW, MAX_PITCH)
                else:
                    notes.append("no landmarks found (face turned away, occluded or blurred): using a rough alignment")
            finish_notes(face, notes, MIN_FACE_PX)
            faces.append(face)
        return faces

    # --- per-face operations -----------------------------------------------------------------------------------

    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        if self.recognizer is None:
            raise FaceBackendError(f"face backend '{self.name}' has no identity recogniser")
        self.warn_if_poor(face, "identity image")
        embed_aligned = getattr(self.recognizer, "embed_aligned", None)
        if embed_aligned is None:  # e.g. dlib, which aligns on its own
            return self.recognizer.embed(image.convert("RGB"), face)
        return embed_aligned(self.arcface_crop(image.convert("RGB"), face))

    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        """The LMS landmark ratios; needs FaceMesh landmarks (mediapipe installed and the mesh found)."""
        if (face.landmarks is None or len(face.landmarks) < 468) and self._mesh is None:
            raise FaceBackendError(
                f"face backend '{self.name}' measures expression from MediaPipe FaceMesh landmarks: install "
                "mediapipe==0.10.21 (bash .ci/install-faces.sh); SCRFD gives only 5 keypoints"
            )
        return self.mesh_ratios(face)
