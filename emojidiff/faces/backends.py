"""Factories of the real-photo face backends (registered by name in :mod:`emojidiff.faces.registry`).

=========================  ================================================  ==============================
name                       detection / landmarks / mask / expression         identity recogniser
=========================  ================================================  ==============================
``mediapipe``              MediaPipe (offline)                               dlib 128-d if installed, else none
``mediapipe-dlib``         MediaPipe                                         dlib 128-d (required)
``mediapipe-insightface``  MediaPipe                                         InsightFace ArcFace ONNX, 512-d:
                                                                             ``$EMOJIDIFF_ARCFACE_ONNX``, else
                                                                             ``buffalo_l``, else ``antelopev2``
``mediapipe-buffalo_l``    MediaPipe                                         ``buffalo_l/w600k_r50.onnx``
``mediapipe-antelopev2``   MediaPipe                                         ``antelopev2/glintr100.onnx``
``mediapipe-arcface``      MediaPipe                                         arcface_torch IResNet (PyTorch)
``insightface-buffalo_l``  SCRFD ``buffalo_l/det_10g.onnx`` (5 keypoints);   ``buffalo_l/w600k_r50.onnx``,
                           FaceMesh landmarks/mask/expression if mediapipe   aligned on SCRFD's keypoints
                           is installed, else 5-keypoint ellipse mask
``insightface-antelopev2`` SCRFD ``antelopev2/scrfd_10g_bnkps.onnx``; same  ``antelopev2/glintr100.onnx``
=========================  ================================================  ==============================

Every factory fails with one line naming what is missing (package or model file).
"""

from __future__ import annotations

import os

from ..errors import FaceBackendError, ModelMissingError
from . import models


def _mp(name: str, recognizer):
    from .mediapipe_backend import MediaPipeFaceAnalyzer

    return MediaPipeFaceAnalyzer(recognizer=recognizer, name=name)


def _check_mediapipe() -> None:
    from .mediapipe_backend import _import_mediapipe

    _import_mediapipe()


def make_mediapipe():
    _check_mediapipe()
    from .recognizers import DlibRecognizer

    try:
        rec = DlibRecognizer()
    except FaceBackendError:  # includes ModelMissingError: detection and expression still work
        rec = None
    return _mp("mediapipe", rec)


def make_mediapipe_dlib():
    _check_mediapipe()
    from .recognizers import DlibRecognizer

    return _mp("mediapipe-dlib", DlibRecognizer())


def _onnx(pack: str | None):
    from .recognizers import OnnxArcFaceRecognizer

    if pack is None:
        env = os.environ.get("EMOJIDIFF_ARCFACE_ONNX")
        if env:
            return OnnxArcFaceRecognizer(env)
        for name in ("insightface-buffalo_l", "insightface-antelopev2"):
            path = models.locate(name)
            if path is not None:
                return OnnxArcFaceRecognizer(path)
        buf = models.CATALOGUE["insightface-buffalo_l"]
        raise ModelMissingError(
            "face backend 'mediapipe-insightface' needs an InsightFace ArcFace model: set $EMOJIDIFF_ARCFACE_ONNX "
            f"to a .onnx file or model folder, or {buf.how_to_get} (or antelopev2 likewise); models folder: "
            f"{models.models_dir()}"
        )
    return OnnxArcFaceRecognizer(models.require(f"insightface-{pack}"), name=f"insightface-{pack}")


def make_mediapipe_insightface():
    _check_mediapipe()
    return _mp("mediapipe-insightface", _onnx(None))


def make_mediapipe_buffalo_l():
    _check_mediapipe()
    return _mp("mediapipe-buffalo_l", _onnx("buffalo_l"))


def make_mediapipe_antelopev2():
    _check_mediapipe()
    return _mp("mediapipe-antelopev2", _onnx("antelopev2"))


def make_mediapipe_arcface():
    _check_mediapipe()
    from .recognizers import TorchArcFaceRecognizer

    return _mp("mediapipe-arcface", TorchArcFaceRecognizer(models.require("arcface-torch")))


def _insightface(pack: str):
    from .insightface_backend import InsightFaceAnalyzer
    from .scrfd import ScrfdDetector

    name = f"insightface-{pack}"
    detector = ScrfdDetector(models.require(f"{name}-detector", f"face backend '{name}' (SCRFD face detection)"))
    return InsightFaceAnalyzer(detector, _onnx(pack), name=name)


def make_insightface_buffalo_l():
    """SCRFD (det_10g) + ArcFace w600k_r50; FaceMesh landmarks when mediapipe is installed."""
    return _insightface("buffalo_l")


def make_insightface_antelopev2():
    """SCRFD (scrfd_10g_bnkps) + ArcFace glintr100; FaceMesh landmarks when mediapipe is installed."""
    return _insightface("antelopev2")


FACTORIES = {
    "mediapipe": make_mediapipe,
    "mediapipe-dlib": make_mediapipe_dlib,
    "mediapipe-insightface": make_mediapipe_insightface,
    "mediapipe-buffalo_l": make_mediapipe_buffalo_l,
    "mediapipe-antelopev2": make_mediapipe_antelopev2,
    "mediapipe-arcface": make_mediapipe_arcface,
    "insightface-buffalo_l": make_insightface_buffalo_l,
    "insightface-antelopev2": make_insightface_antelopev2,
}
