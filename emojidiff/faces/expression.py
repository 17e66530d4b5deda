"""Expression measurements and the paper's expression metrics.

* **LMS** (landmark amplitude ratios): eye opening per eye, gaze (iris position in each eye), mouth opening,
  mouth width, mouth-corner lift, brow raise per brow and brow gap, measured in the face's own frame (roll
  removed) and normalised by the inter-ocular distance or the eye width, so that they do not depend on who the
  person is as much as raw landmarks would, nor on image size or position. :func:`lms_error` is the mean L1
  between two such measurements.
* **Exp**: the mean L1 over MediaPipe's 52 ARKit-style blendshape scores (:func:`exp_error`); computing them needs
  the user-supplied ``face_landmarker.task`` (see :mod:`emojidiff.faces.blendshapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from . import geometry as g

#: The ratios :func:`landmark_ratios` returns, in order.
LMS_KEYS = (
    "eye_open_left",
    "eye_open_right",
    "gaze_x_left",
    "gaze_x_right",
    "gaze_y_left",
    "gaze_y_right",
    "mouth_open",
    "mouth_width",
    "mouth_corner_lift",
    "brow_raise_left",
    "brow_raise_right",
    "brow_gap",
)

#: MediaPipe FaceLandmarker's 52 blendshape categories (index 0 is the neutral score).
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip


def _face_frame(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Landmarks (N, 2) in the face frame: origin between the eye centres, x along the eye line, unit = IOD."""
    eye_l = lm[list(g.EYE_L_CORNERS)].mean(0)
    eye_r = lm[list(g.EYE_R_CORNERS)].mean(0)
    iod = float(np.linalg.norm(eye_r - eye_l))
    if iod < 1e-6:
        raise InputError("the face landmarks are degenerate (both eyes at the same place)")
    ax = (eye_r - eye_l) / iod
    ay = np.array([-ax[1], ax[0]])  # image y points down; so does ay for an upright face
    rel = lm - (eye_l + eye_r) / 2
    return np.stack([rel @ ax, rel @ ay], axis=1) / iod, iod


def landmark_ratios(landmarks: np.ndarray) -> dict[str, float]:
    """The LMS amplitude ratios of one face from its FaceMesh landmarks ((468|478, 2|3) pixels).

    ``left``/``right`` mean the image's left/right. Without the 10 iris points, the gaze ratios are NaN.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 468:
        raise InputError(f"expression ratios need 468 or 478 FaceMesh landmarks, got an array of shape {lm.shape}")
    f, _ = _face_frame(lm[:, :2])

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(f[a] - f[b]))

    def eye_open(corners, lids) -> float:
        width = dist(*corners)
        return float(np.mean([dist(u, d) for u, d in lids]) / max(width, 1e-6))

    def gaze(corners, iris) -> tuple[float, float]:
        if lm.shape[0] < 478:
            return float("nan"), float("nan")
        a, b = f[corners[0]], f[corners[1]]
        lo, hi = (a, b) if a[0] < b[0] else (b, a)
        width = max(hi[0] - lo[0], 1e-6)
        centre = (a + b) / 2
        return float((f[iris, 0] - lo[0]) / width), float((f[iris, 1] - centre[1]) / width)

    gxl, gyl = gaze(g.EYE_L_CORNERS, g.IRIS_L)
    gxr, gyr = gaze(g.EYE_R_CORNERS, g.IRIS_R)
    corners_y = (f[g.MOUTH_CORNERS[0], 1] + f[g.MOUTH_CORNERS[1], 1]) / 2
    lip_mid_y = (f[g.LIP_INNER[0], 1] + f[g.LIP_INNER[1], 1]) / 2
    eye_l_y = f[list(g.EYE_L_CORNERS), 1].mean()
    eye_r_y = f[list(g.EYE_R_CORNERS), 1].mean()
    out = {
        "eye_open_left": eye_open(g.EYE_L_CORNERS, g.EYE_L_LIDS),
        "eye_open_right": eye_open(g.EYE_R_CORNERS, g.EYE_R_LIDS),
        "gaze_x_left": gxl,
        "gaze_x_right": gxr,
        "gaze_y_left": gyl,
        "gaze_y_right": gyr,
        "mouth_open": dist(*g.LIP_INNER),
        "mouth_width": dist(*g.MOUTH_CORNERS),
        "mouth_corner_lift": float(lip_mid_y - corners_y),
        "brow_raise_left": float(eye_l_y - f[g.BROW_L, 1].mean()),
        "brow_raise_right": float(eye_r_y - f[g.BROW_R, 1].mean()),
        "brow_gap": dist(*g.BROW_INNER),
    }
    return out


def _as_vector(x: Mapping[str, float] | Sequence[float] | np.ndarray, keys: Sequence[str]) -> np.ndarray:
    if isinstance(x, Mapping):
        return np.array([float(x.get(k, np.nan)) for k in keys], dtype=np.float64)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _l1(a, b, keys: Sequence[str], what: str) -> float:
    va, vb = _as_vector(a, keys), _as_vector(b, keys)
    if va.shape != vb.shape:
        raise InputError(f"{what}: the two measurements have different lengths ({va.size} and {vb.size})")
    ok = np.isfinite(va) & np.isfinite(vb)
    if not ok.any():
        raise InputError(f"{what}: the two measurements have no value in common")
    return float(np.abs(va[ok] - vb[ok]).mean())


def lms_error(a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float]) -> float:
    """The paper's LMS metric: mean L1 between two sets of landmark amplitude ratios (lower is closer).

    Accepts the dicts of :func:`landmark_ratios` (keys missing or NaN in either are skipped) or equal-length
    vectors in :data:`LMS_KEYS` order.
    """
    return _l1(a, b, LMS_KEYS, "lms_error")


def exp_error(a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float]) -> float:
    """The paper's Exp metric: mean L1 over MediaPipe's 52 blendshape scores (dicts by name, or vectors in
    :data:`BLENDSHAPE_NAMES` order)."""
    return _l1(a, b, BLENDSHAPE_NAMES, "exp_error")
