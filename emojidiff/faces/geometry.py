"""Face geometry without any face model: similarity alignment, crop templates, masks, head pose.

Pure numpy + PIL, so every backend (and the tests) can use it. Landmark indices refer to MediaPipe FaceMesh
(468 points, 478 with the iris refinement); ``image-left`` is the subject's right side.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --- templates ------------------------------------------------------------------------------------------------

#: The ArcFace / insightface 112x112 alignment template: image-left eye, image-right eye, nose tip,
#: image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112

#: Side of the canonical expression crop (what the expression branch's image encoder sees).
EXPRESSION_CROP_SIZE = 256


def expression_template(size: int = EXPRESSION_CROP_SIZE) -> np.ndarray:
    """The 5-point template of the expression crop: the ArcFace layout, slightly smaller and higher, so that the
    whole face oval (forehead to chin, brows, jaw) fits inside the square with a margin."""
    unit = ARCFACE_TEMPLATE / ARCFACE_SIZE
    eyes_y = unit[:2, 1].mean()
    pts = (unit - np.array([0.5, eyes_y])) * 0.98 + np.array([0.5, 0.35])
    return pts * size


# --- MediaPipe FaceMesh index sets ----------------------------------------------------------------------------

#: the face oval as an ordered closed path (forehead top → right side of the image → chin → left side)
FACE_OVAL = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]  # fmt: skip
EYE_L_CORNERS = (33, 133)  # image-left eye (subject's right): outer, inner
EYE_R_CORNERS = (263, 362)  # image-right eye: outer, inner
EYE_L_LIDS = [(160, 144), (159, 145), (158, 153)]  # upper, lower pairs
EYE_R_LIDS = [(387, 373), (386, 374), (385, 380)]
IRIS_L, IRIS_R = 468, 473  # iris centres (only with the 478-point refinement)
BROW_L = [70, 63, 105, 66, 107]  # image-left brow, upper edge
BROW_R = [300, 293, 334, 296, 336]
BROW_INNER = (107, 336)
MOUTH_CORNERS = (61, 291)
LIP_INNER = (13, 14)  # upper and lower inner lip, centre
LIP_OUTER = (0, 17)
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
CHEEKS = (234, 454)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The 5 alignment points (eyes, nose tip, mouth corners) from 468/478 FaceMesh landmarks, shape (5, 2)."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    if len(lm) >= 478:
        eye_l, eye_r = lm[IRIS_L], lm[IRIS_R]
    else:
        eye_l, eye_r = lm[list(EYE_L_CORNERS)].mean(0), lm[list(EYE_R_CORNERS)].mean(0)
    return np.stack([eye_l, eye_r, lm[NOSE_TIP], lm[MOUTH_CORNERS[0]], lm[MOUTH_CORNERS[1]]])


# --- similarity alignment -------------------------------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    Umeyama's method. Returns a 3x3 matrix M with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = float((sig * d).sum() / var_s) if var_s > 0 else 1.0
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts[:, :2] @ m[:2, :2].T + m[:2, 2]


def warp(
    image: Image.Image, m: np.ndarray, size: int, fill: tuple[int, ...] | int = 0, resample=Image.Resampling.BICUBIC
) -> Image.Image:
    """Warp ``image`` by the 3x3 similarity ``m`` (image → crop pixel coordinates) into a ``size`` square."""
    inv = np.linalg.inv(m)
    # PIL samples the input at inv @ (x + 0.5, y + 0.5); our coordinates treat pixel centres as i + 0.5 too.
    return image.transform((size, size), Image.Transform.AFFINE, data=tuple(inv[:2].ravel()), resample=resample,
                           fillcolor=fill)  # fmt: skip


def align_arcface(image: Image.Image, points5: np.ndarray, size: int = ARCFACE_SIZE) -> Image.Image:
    """The standard ArcFace 112x112 crop (any ``size``: the template is scaled)."""
    m = similarity_transform(points5, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
    return warp(image.convert("RGB"), m, size)


def expression_transform(points5: np.ndarray, size: int = EXPRESSION_CROP_SIZE) -> np.ndarray:
    return similarity_transform(points5, expression_template(size))


# --- masks ----------------------------------------------------------------------------------------------------


def polygon_mask(size: tuple[int, int], polygon: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """Float mask (H, W) in [0, 1]: 1 inside ``polygon`` (N, 2 pixel coordinates), optionally feathered."""
    w, h = size
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).polygon([tuple(map(float, p)) for p in np.asarray(polygon)[:, :2]], fill=255)
    if feather > 0:
        m = m.filter(ImageFilter.GaussianBlur(feather))
    return np.asarray(m, dtype=np.float32) / 255.0


def face_oval(landmarks: np.ndarray, forehead: float = 0.85) -> np.ndarray:
    """The face-oval polygon (36, 2): forehead, cheeks, jaw and chin; hair, ears, neck and background outside.

    FaceMesh's oval reaches the hairline; points above the eye line are pulled towards it by ``forehead`` so that
    fringes and hairlines stay outside the mask.
    """
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    oval = lm[FACE_OVAL]
    eye_l, eye_r = lm[list(EYE_L_CORNERS)].mean(0), lm[list(EYE_R_CORNERS)].mean(0)
    centre = (eye_l + eye_r) / 2
    ax = (eye_r - eye_l) / max(float(np.linalg.norm(eye_r - eye_l)), 1e-6)
    ay = np.array([-ax[1], ax[0]])
    rel = oval - centre
    up = rel @ ay
    up = np.where(up < 0, up * forehead, up)
    return centre + np.outer(rel @ ax, ax) + np.outer(up, ay)


def ellipse_from_points(points5: np.ndarray, n: int = 36) -> np.ndarray:
    """A face-shaped ellipse from 5 points, for faces without dense landmarks."""
    p = np.asarray(points5, dtype=np.float64)
    eyes = (p[0] + p[1]) / 2
    mouth = (p[3] + p[4]) / 2
    iod = np.linalg.norm(p[1] - p[0])
    ax = (p[1] - p[0]) / max(iod, 1e-6)
    ay = np.array([-ax[1], ax[0]])
    if np.dot(ay, mouth - eyes) < 0:
        ay = -ay
    centre = eyes + ay * 0.6 * np.linalg.norm(mouth - eyes)
    rx, ry = 1.05 * iod, 1.3 * iod
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.outer(np.cos(t) * rx, ax) + np.outer(np.sin(t) * ry, ay)


# --- head pose ------------------------------------------------------------------------------------------------


def head_pose(landmarks: np.ndarray) -> dict[str, float]:
    """Approximate head pose in degrees from FaceMesh landmarks with z: yaw (turn), pitch (nod), roll (tilt).

    Yaw is the depth slope of the cheek-to-cheek line, pitch the depth slope of the nose-bridge-to-chin line
    (minus its slope on a frontal face), roll the angle of the eye line. Good to ±10°: enough to warn about
    extreme poses, not a pose estimator.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eyes = five_points(lm)[:2]
    roll = math.degrees(math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
    if lm.shape[1] < 3:
        return {"yaw": float("nan"), "pitch": float("nan"), "roll": roll}
    # undo roll first so that yaw/pitch use the face's own horizontal/vertical axes
    c, s = math.cos(math.radians(-roll)), math.sin(math.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    xy = lm[:, :2] @ rot.T
    z = lm[:, 2]
    dx = xy[CHEEKS[1], 0] - xy[CHEEKS[0], 0]
    yaw = math.degrees(math.atan2(z[CHEEKS[1]] - z[CHEEKS[0]], dx))
    top, chin = 168, CHIN  # nose bridge between the eyes, chin
    dy = xy[chin, 1] - xy[top, 1]
    pitch = math.degrees(math.atan2(z[chin] - z[top], dy)) - _FRONTAL_PITCH_OFFSET
    return {"yaw": yaw, "pitch": pitch, "roll": roll}


# depth slope of the nose-bridge → chin line on frontal faces (MediaPipe's mean face leans the chin back)
_FRONTAL_PITCH_OFFSET = 14.0
