"""MediaPipe's 52 face blendshapes (the paper's Exp metric), from the user-supplied ``face_landmarker.task``.

The blendshape model is in no pip package (only in the ``face_landmarker.task`` bundle MediaPipe publishes), so
it is looked for in ``$EMOJIDIFF_FACE_LANDMARKER`` or ``<models dir>/face_landmarker.task`` and never downloaded
at run time. Without it, :class:`BlendshapeModel` raises one :class:`~emojidiff.errors.ModelMissingError` line.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelMissingError, NoFaceError
from . import models
from .base import Face


def blendshapes_available() -> bool:
    return models.locate("face-landmarker-task") is not None


class BlendshapeModel:
    """Scores the 52 blendshapes of a face with MediaPipe Tasks' FaceLandmarker."""

    def __init__(self, path: str | os.PathLike | None = None):
        from .mediapipe_backend import _import_mediapipe, _quiet_native_stderr

        self.path = Path(path) if path is not None else models.require("face-landmarker-task", "blendshape scores")
        if not self.path.is_file():
            raise ModelMissingError(f"face_landmarker.task '{self.path}' does not exist")
        mp = _import_mediapipe()
        try:
            from mediapipe.tasks.python import BaseOptions
            from mediapipe.tasks.python.vision import FaceLandmarker, FaceLandmarkerOptions, RunningMode
        except ImportError:
            raise ModelMissingError("this mediapipe has no Tasks API (mediapipe.tasks.python.vision)") from None
        options = FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=self.path.read_bytes()),
            running_mode=RunningMode.IMAGE,
            num_faces=3,
            output_face_blendshapes=True,
        )
        try:
            with _quiet_native_stderr():
                self._landmarker = FaceLandmarker.create_from_options(options)
        except Exception as e:  # noqa: BLE001 - a wrong or corrupt file: one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelMissingError(
                f"'{self.path}' is not a usable MediaPipe face_landmarker.task ({type(e).__name__}: {first[:120]})"
            ) from None
        self._mp = mp
        self._lock = threading.Lock()

    def score(self, image: Image.Image, face: Face) -> dict[str, float]:
        from .mediapipe_backend import _quiet_native_stderr

        x0, y0, x1, y1 = face.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = 2.0 * max(x1 - x0, y1 - y0)
        left, top = cx - side / 2, cy - side / 2
        crop = image.convert("RGB").transform(
            (384, 384), Image.Transform.EXTENT, (left, top, left + side, top + side), Image.Resampling.BILINEAR
        )
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.asarray(crop)))
        with self._lock, _quiet_native_stderr():
            res = self._landmarker.detect(mp_image)
        if not res.face_blendshapes:
            raise NoFaceError("the blendshape model found no face in the face's crop")
        best, best_d = 0, None
        for i, lms in enumerate(res.face_landmarks):
            nose = lms[1]
            d = (nose.x - 0.5) ** 2 + (nose.y - 0.5) ** 2
            if best_d is None or d < best_d:
                best, best_d = i, d
        return {c.category_name: float(c.score) for c in res.face_blendshapes[best]}
