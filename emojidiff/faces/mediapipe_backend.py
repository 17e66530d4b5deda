"""The MediaPipe face backend: detection, 478 landmarks, alignment, face-oval masks, expression ratios.

Works offline with ``mediapipe==0.10.21`` (the last wheel that carries its tflite models; install with
``bash .ci/install-faces.sh``). Identity comes from a pluggable recogniser (:mod:`emojidiff.faces.recognizers`).

Pipeline for one image:

1. BlazeFace short-range and full-range detection, merged (overlaps keep the higher score);
2. for each face, FaceMesh (478 points with iris) on a square crop around it, upscaled for small faces, so that
   several faces and tiny faces each get their own landmarks;
3. order: confident faces (score ≥ 0.75) first, largest first; then the rest by score. ``faces[0]`` is the
   default face; choose another with an index;
4. quality notes per face (``face.extra["warnings"]``): tiny face, extreme head pose, landmarks not found. They
   are raised as :class:`FaceQualityWarning` when the face is used.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import numpy as np
from PIL import Image

from ..errors import FaceBackendError
from . import geometry as g
from .base import Face
from .recognizers import Recognizer
from .regions import FaceQualityWarning, FaceRegionMixin, attach_mesh, finish_notes  # noqa: F401 (FaceQualityWarning: public here too)

#: faces smaller than this (pixels, shorter box side) are flagged: identity and expression become unreliable
MIN_FACE_PX = 64
#: faces smaller than this are ignored (and below twice this, kept only when the detector is confident)
MIN_DETECT_PX = 16
#: |yaw| or |pitch| above these (degrees) are flagged as extreme poses
MAX_YAW, MAX_PITCH = 45.0, 35.0
#: FaceMesh runs on a square crop of this side around each face
MESH_CROP_PX = 384


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the C++ logging (TFLite/absl) that mediapipe writes straight to fd 2 when graphs start."""
    if os.environ.get("EMOJIDIFF_DEBUG"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _import_mediapipe():
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp

            mp.solutions  # noqa: B018 - AttributeError when the legacy API is gone
    except ImportError:
        raise FaceBackendError(
            "the mediapipe face backend needs mediapipe==0.10.21: run 'bash .ci/install-faces.sh' "
            "(or pip install -c constraints.txt '.[faces]' then pip install --no-deps mediapipe==0.10.21)"
        ) from None
    except AttributeError:
        raise FaceBackendError(
            f"mediapipe {getattr(mp, '__version__', '?')} has no 'solutions' API (its face models were removed "
            "after 0.10.21): pip install --no-deps mediapipe==0.10.21"
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. protobuf>=5 breaks mediapipe 0.10.21 at import
        raise FaceBackendError(
            f"mediapipe failed to import ({type(e).__name__}: {str(e)[:120]}); it needs protobuf<5: "
            "pip install -c constraints.txt 'protobuf<5'"
        ) from None
    return mp


def _overlap(a, b) -> float:
    """Intersection over the smaller box (1 when one box holds the other, e.g. a face cut by a tile edge)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / small if small > 0 else 0.0


class MediaPipeFaceAnalyzer(FaceRegionMixin):
    """FaceAnalyzer on MediaPipe; see the module docstring. ``recognizer=None`` means no identity embeddings."""

    def __init__(
        self,
        recognizer: Recognizer | None = None,
        name: str = "mediapipe",
        min_score: float = 0.5,
        crop_fill: tuple[int, int, int] = (0, 0, 0),
    ):
        mp = _import_mediapipe()
        self.name = name
        self.recognizer = recognizer
        self.identity_dim = recognizer.dim if recognizer is not None else None
        self.recognizer_name = recognizer.name if recognizer is not None else None
        self.min_score = float(min_score)
        self.crop_fill = tuple(crop_fill)
        self._mp = mp
        self._lock = threading.Lock()
        with _quiet_native_stderr():
            self._detectors = [
                mp.solutions.face_detection.FaceDetection(model_selection=sel, min_detection_confidence=min_score)
                for sel in (0, 1)
            ]
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=3, refine_landmarks=True, min_detection_confidence=0.3
            )
            blank = np.zeros((64, 64, 3), np.uint8)  # start the graphs now, while their start-up logs are muted
            for det in self._detectors:
                det.process(blank)
            self._mesh.process(blank)
        self._blendshapes = None

    def __repr__(self) -> str:
        return f"MediaPipeFaceAnalyzer(name={self.name!r}, recognizer={self.recognizer_name!r})"

    # --- detection ---------------------------------------------------------------------------------------------

    def _detect_in(self, arr: np.ndarray, ox: int, oy: int, found: list[Face], origin: str) -> None:
        h, w = arr.shape[:2]
        for which, det in enumerate(self._detectors):
            with self._lock, _quiet_native_stderr():
                res = det.process(np.ascontiguousarray(arr))
            for d in res.detections or []:
                bb = d.location_data.relative_bounding_box
                x0, y0 = bb.xmin * w + ox, bb.ymin * h + oy
                box = (float(x0), float(y0), float(x0 + bb.width * w), float(y0 + bb.height * h))
                kps = np.array(
                    [[k.x * w + ox, k.y * h + oy] for k in d.location_data.relative_keypoints], dtype=np.float64
                )
                if origin == "tile" and d.score[0] < 0.75:  # tiles are for small faces: confident ones only
                    continue
                extra = {"keypoints": kps, "detector": f"{('short', 'full')[which]}-range {origin}"}
                face = Face(box=box, score=float(d.score[0]), extra=extra)
                dup = next((f for f in found if _overlap(f.box, face.box) > 0.4), None)
                if dup is None:
                    found.append(face)
                elif face.score > dup.score + 0.1:  # the earlier (whole-image, short-range) box wins unless worse
                    found[found.index(dup)] = face

    def _raw_detections(self, arr: np.ndarray) -> list[Face]:
        """Whole image, then overlapping tiles (small faces in large images are too small for BlazeFace's input)."""
        h, w = arr.shape[:2]
        found: list[Face] = []
        self._detect_in(arr, 0, 0, found, "whole")
        if max(h, w) >= 400:
            th, tw = int(h * 0.6), int(w * 0.6)
            for oy in (0, h - th):
                for ox in (0, w - tw):
                    self._detect_in(arr[oy : oy + th, ox : ox + tw], ox, oy, found, "tile")
        return found

    def _mesh_for(self, image: Image.Image, face: Face) -> np.ndarray | None:
        """478 (x, y, z) landmarks in image pixels for this face, or None."""
        x0, y0, x1, y1 = face.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side0 = max(x1 - x0, y1 - y0)
        for factor in (2.0, 1.5, 3.0):
            side = side0 * factor
            left, top = cx - side / 2, cy - side / 2
            crop = image.transform(
                (MESH_CROP_PX, MESH_CROP_PX),
                Image.Transform.EXTENT,
                (left, top, left + side, top + side),
                resample=Image.Resampling.BILINEAR,
                fillcolor=(0, 0, 0),
            )
            arr = np.ascontiguousarray(np.asarray(crop, dtype=np.uint8))
            with self._lock, _quiet_native_stderr():
                res = self._mesh.process(arr)
            if not res.multi_face_landmarks:
                continue
            best, best_d = None, None
            for fl in res.multi_face_landmarks:
                pts = np.array([[p.x, p.y, p.z] for p in fl.landmark], dtype=np.float64) * side
                pts[:, 0] += left
                pts[:, 1] += top
                d = np.hypot(pts[g.NOSE_TIP, 0] - cx, pts[g.NOSE_TIP, 1] - cy)
                if best_d is None or d < best_d:
                    best, best_d = pts, d
            if best is not None and best_d < 0.6 * side0:  # the mesh is on this face, not a neighbour
                return best
        return None

    def detect(self, image: Image.Image) -> list[Face]:
        """All faces, best first, each with 478 landmarks where FaceMesh found them (see the module docstring)."""
        image = image.convert("RGB")
        arr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        faces = self._raw_detections(arr)
        kept = []
        for face in faces:
            notes: list[str] = []
            lm3 = self._mesh_for(image, face)
            if lm3 is None and face.extra["detector"].endswith("tile"):
                continue  # a tile detection that FaceMesh does not confirm is most likely a partial face
            if face.size < MIN_DETECT_PX or (face.size < 2 * MIN_DETECT_PX and face.score < 0.75):
                continue  # too small to use, or small and unsure: texture (noise, foliage) fools BlazeFace there
            kept.append(face)
            kps = face.extra["keypoints"]
            if lm3 is not None:
                attach_mesh(face, lm3, notes, MAX_YAW, MAX_PITCH)
            else:
                # 5 points from the detector: eyes, nose tip, and mouth corners estimated from the mouth centre
                eye_l, eye_r, nose, mouth = kps[0], kps[1], kps[2], kps[3]
                if eye_l[0] > eye_r[0]:
                    eye_l, eye_r = eye_r, eye_l
                half = (eye_r - eye_l) * 0.415
                face.extra["points5"] = np.stack([eye_l, eye_r, nose, mouth - half, mouth + half])
                notes.append("no landmarks found (face turned away, occluded or blurred): using a rough alignment")
            finish_notes(face, notes, MIN_FACE_PX)
        confident = [f for f in kept if f.score >= 0.75]
        rest = [f for f in kept if f.score < 0.75]
        confident.sort(key=lambda f: -f.size)
        rest.sort(key=lambda f: -f.score)
        return confident + rest

    # --- per-face operations -----------------------------------------------------------------------------------

    def identity_embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        if self.recognizer is None:
            raise FaceBackendError(
                f"face backend '{self.name}' has no identity recogniser: install dlib-bin and "
                "face_recognition_models (bash .ci/install-faces.sh) or choose mediapipe-insightface/-arcface"
            )
        self.warn_if_poor(face, "identity image")
        return self.recognizer.embed(image.convert("RGB"), face)

    def measure_expression(self, image: Image.Image, face: Face) -> dict[str, float]:
        """The LMS landmark amplitude ratios (:func:`emojidiff.faces.expression.landmark_ratios`)."""
        return self.mesh_ratios(face)
