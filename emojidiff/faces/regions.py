"""Face-region operations shared by the landmark-based backends (MediaPipe, InsightFace SCRFD).

Given a detected :class:`Face` (5 keypoints, and the 478 FaceMesh landmarks when available), these build the face-oval
mask, the aligned and masked expression crop, and the ArcFace identity crop, the same way for every backend.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from ..errors import NoFaceError
from . import geometry as g
from .base import Face
from .expression import landmark_ratios
from .recognizers import face_points5, identity_points5


class FaceQualityWarning(UserWarning):
    """A face was found but is tiny, turned far away, or without landmarks: results will be unreliable."""


def attach_mesh(face: Face, lm3: np.ndarray, notes: list[str], max_yaw: float, max_pitch: float) -> None:
    """Put FaceMesh's 478 landmarks (x, y, z) on ``face``, with its head pose; note an extreme pose in ``notes``."""
    face.landmarks = lm3[:, :2].copy()
    face.extra["landmarks3d"] = lm3
    pose = g.head_pose(lm3)
    face.extra["pose"] = pose
    if abs(pose["yaw"]) > max_yaw or abs(pose["pitch"]) > max_pitch:
        notes.append(
            f"extreme head pose (yaw {pose['yaw']:+.0f}°, pitch {pose['pitch']:+.0f}°): "
            "expression and identity will be unreliable"
        )


def finish_notes(face: Face, notes: list[str], min_face_px: int) -> None:
    """Add the small-face warning where it applies and store the notes as ``face.extra["warnings"]``."""
    if face.size < min_face_px:
        notes.append(
            f"small face ({face.size:.0f} px, at least {min_face_px} px recommended): "
            "identity and expression will be unreliable"
        )
    face.extra["warnings"] = notes


class FaceRegionMixin:
    """Masks and crops from landmarks. The class using it sets ``crop_fill`` (the RGB fill outside the face)."""

    crop_fill: tuple[int, int, int] = (0, 0, 0)

    @staticmethod
    def warn_if_poor(face: Face, what: str = "image") -> None:
        """Raise the face's quality notes as FaceQualityWarning, once per face."""
        if face.extra.get("_warned"):
            return
        face.extra["_warned"] = True
        for note in face.extra.get("warnings", []):
            warnings.warn(f"{what}: {note}", FaceQualityWarning, stacklevel=3)

    def points5(self, face: Face) -> np.ndarray:
        """The 5 points the expression crop is aligned on (FaceMesh's when present, else the detector's)."""
        return face_points5(face)

    def _polygon(self, face: Face) -> np.ndarray:
        if face.landmarks is not None and len(face.landmarks) >= 468:
            return g.face_oval(face.landmarks)
        return g.ellipse_from_points(face_points5(face))

    def face_mask(self, image: Image.Image, face: Face, feather: float | None = None) -> np.ndarray:
        """1 inside the face oval (forehead to chin, cheek to cheek; a keypoint ellipse without FaceMesh), 0 on
        hair, ears, neck and background."""
        feather = max(1.0, face.size * 0.01) if feather is None else feather
        return g.polygon_mask(image.size, self._polygon(face), feather=feather)

    def expression_crop(
        self, image: Image.Image, face: Face, size: int = g.EXPRESSION_CROP_SIZE, masked: bool = True
    ) -> Image.Image:
        """The aligned ``size`` square of the face (eyes level, fixed scale), outside the face region filled."""
        self.warn_if_poor(face, "expression template")
        m = g.expression_transform(face_points5(face), size)
        crop = g.warp(image.convert("RGB"), m, size, fill=self.crop_fill)
        if not masked:
            return crop
        mask = g.polygon_mask((size, size), g.apply_transform(m, self._polygon(face)), feather=size / 128)
        fill = np.array(self.crop_fill, dtype=np.float32)
        out = np.asarray(crop, dtype=np.float32) * mask[..., None] + fill * (1.0 - mask[..., None])
        return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))

    def expression_crop_mask(self, face: Face, size: int = g.EXPRESSION_CROP_SIZE) -> np.ndarray:
        """The face-region mask in the coordinates of :meth:`expression_crop` (for losses on aligned crops)."""
        m = g.expression_transform(face_points5(face), size)
        return g.polygon_mask((size, size), g.apply_transform(m, self._polygon(face)), feather=size / 128)

    def arcface_crop(self, image: Image.Image, face: Face, size: int = g.ARCFACE_SIZE) -> Image.Image:
        """The standard 112x112 ArcFace alignment (on the detector's keypoints when it gives them)."""
        return g.align_arcface(image, identity_points5(face), size)

    def mesh_ratios(self, face: Face) -> dict[str, float]:
        """The LMS landmark amplitude ratios (:func:`emojidiff.faces.expression.landmark_ratios`) from FaceMesh."""
        if face.landmarks is None or len(face.landmarks) < 468:
            raise NoFaceError(
                "expression cannot be measured: FaceMesh found no landmarks on this face "
                "(turned too far, occluded, or too small)"
            )
        self.warn_if_poor(face, "image")
        return landmark_ratios(face.landmarks)

    def blendshapes(self, image: Image.Image, face: Face) -> dict[str, float]:
        """The 52 MediaPipe blendshape scores; needs the user-supplied face_landmarker.task."""
        if getattr(self, "_blendshapes", None) is None:
            from .blendshapes import BlendshapeModel

            self._blendshapes = BlendshapeModel()
        return self._blendshapes.score(image, face)
