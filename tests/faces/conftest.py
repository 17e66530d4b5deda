"""Shared fixtures: the two real photos that ship inside wheels, and one MediaPipe analyzer per session."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


def _need(module: str, what: str):
    return pytest.importorskip(
        module, reason=f"{what} not installed: the faces extra is missing (bash .ci/install-faces.sh)"
    )


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    skdata = _need("skimage.data", "scikit-image (test photo)")
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="session")
def hopper() -> Image.Image:
    mpl = _need("matplotlib", "matplotlib (test photo)")
    return Image.open(os.path.join(os.path.dirname(mpl.__file__), "mpl-data/sample_data/grace_hopper.jpg")).convert(
        "RGB"
    )


@pytest.fixture(scope="session")
def analyzer():
    _need("mediapipe", "mediapipe")
    _need("dlib", "dlib (dlib-bin)")
    from emojidiff.faces import get_face_analyzer

    fa = get_face_analyzer("mediapipe")
    assert fa.recognizer is not None, "dlib models missing: face_recognition_models not installed"
    return fa


@pytest.fixture(scope="session")
def ast_face(analyzer, astronaut):
    return analyzer.detect(astronaut)[0]


@pytest.fixture(scope="session")
def hop_face(analyzer, hopper):
    return analyzer.detect(hopper)[0]


@pytest.fixture
def face_models_dir(tmp_path, monkeypatch):
    """An empty models folder, and no per-model environment overrides."""
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("EMOJIDIFF_MODELS_DIR", str(d))
    for var in ("EMOJIDIFF_ARCFACE_ONNX", "EMOJIDIFF_ARCFACE_TORCH", "EMOJIDIFF_FACE_LANDMARKER",
                "EMOJIDIFF_DLIB_SHAPE_PREDICTOR", "EMOJIDIFF_DLIB_RECOGNIZER", "EMOJIDIFF_SCRFD_ONNX"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    return d


def _gray_canvas(w: int, h: int, value: int = 128) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), value, np.uint8))


@pytest.fixture(scope="session")
def gray_canvas():
    """A factory of plain gray RGB images: gray_canvas(w, h, value=128)."""
    return _gray_canvas
