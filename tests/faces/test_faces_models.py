"""Model management (check, download with SHA-256, offline) and the blendshape model boundary."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from emojidiff.cli import main
from emojidiff.errors import InputError, ModelMissingError
from emojidiff.faces import models as M


def test_models_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOJIDIFF_MODELS_DIR", str(tmp_path / "m"))
    assert M.models_dir() == tmp_path / "m"
    monkeypatch.delenv("EMOJIDIFF_MODELS_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert M.models_dir() == tmp_path / "cfg" / "emojidiff" / "models"


def test_check_rows(face_models_dir):
    rows = {r["name"]: r for r in M.check()}
    assert set(rows) == set(M.CATALOGUE)
    for r in rows.values():
        assert r["licence"] and r["feature"] and r["looked_in"]
    assert "non-commercial" in rows["insightface-antelopev2"]["licence"]
    assert not rows["insightface-buffalo_l"]["present"]
    assert any(str(face_models_dir) in p for p in rows["insightface-buffalo_l"]["looked_in"])
    pytest.importorskip("mediapipe", reason="mediapipe not installed: the faces extra is missing")
    assert rows["mediapipe-face-mesh"]["present"] and rows["dlib-face-recognition"]["present"]


def test_require_and_env_override(face_models_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelMissingError) as exc:
        M.require("face-landmarker-task")
    assert "$EMOJIDIFF_FACE_LANDMARKER (unset)" in str(exc.value) and "\n" not in str(exc.value)
    f = tmp_path / "fl.task"
    f.write_bytes(b"x")
    monkeypatch.setenv("EMOJIDIFF_FACE_LANDMARKER", str(f))
    assert M.require("face-landmarker-task") == f
    (face_models_dir / "antelopev2").mkdir()
    assert M.locate("insightface-antelopev2") == face_models_dir / "antelopev2"


def test_download_refusals(face_models_dir):
    with pytest.raises(InputError, match="unknown model 'nope'"):
        M.download("nope")
    with pytest.raises(InputError, match="no known Hugging Face Hub source"):
        M.download("insightface-antelopev2")
    with pytest.raises(InputError, match="no SHA-256 is known"):
        M.download("insightface-antelopev2", repo="someone/models", filename="antelopev2/glintr100.onnx")
    with pytest.raises(InputError, match="not a 64-character"):
        M.download("face-landmarker-task", repo="a/b", filename="face_landmarker.task", sha256="abc")
    with pytest.raises(InputError, match="not downloaded separately"):
        M.download("mediapipe-face-mesh", repo="a/b", filename="x", sha256="0" * 64)


def test_download_offline_one_line(face_models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ModelMissingError) as exc:
        M.download("face-landmarker-task", repo="someone/mediapipe", filename="face_landmarker.task", sha256="0" * 64)
    msg = str(exc.value)
    assert msg.startswith("could not download model 'face-landmarker-task'") and "\n" not in msg
    assert not (face_models_dir / "face_landmarker.task").exists()


def test_download_verifies_sha256(face_models_dir, tmp_path, monkeypatch):
    blob = tmp_path / "cache" / "face_landmarker.task"
    blob.parent.mkdir()
    blob.write_bytes(b"model bytes")
    good = hashlib.sha256(b"model bytes").hexdigest()
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: str(blob))
    with pytest.raises(ModelMissingError, match="has SHA-256 .* expected"):
        M.download("face-landmarker-task", repo="r/r", filename="face_landmarker.task", sha256="f" * 64)
    assert not (face_models_dir / "face_landmarker.task").exists()
    path = M.download("face-landmarker-task", repo="r/r", filename="face_landmarker.task", sha256=good.upper())
    assert path == face_models_dir / "face_landmarker.task" and path.read_bytes() == b"model bytes"
    (face_models_dir / "antelopev2").mkdir()
    onnx_blob = tmp_path / "cache" / "glintr100.onnx"
    onnx_blob.write_bytes(b"onnx")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: str(onnx_blob))
    p = M.download("insightface-antelopev2", repo="r/r", filename="antelopev2/glintr100.onnx",
                   sha256=hashlib.sha256(b"onnx").hexdigest())  # fmt: skip
    assert p == face_models_dir / "antelopev2" / "glintr100.onnx"


def test_cli_models_check_and_download(face_models_dir):
    r = CliRunner().invoke(main, ["models", "check"])
    assert r.exit_code == 0, r.output
    assert "insightface-buffalo_l: MISSING" in r.output and "non-commercial" in r.output
    r = CliRunner().invoke(main, ["models", "check", "--json"])
    data = json.loads(r.output)
    assert data["models_dir"] == str(face_models_dir) and len(data["models"]) == len(M.CATALOGUE)
    r = CliRunner().invoke(main, ["models", "download", "insightface-antelopev2"])
    assert r.exit_code == 1
    err_lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "no known Hugging Face Hub source" in err_lines[0]


def test_blendshapes_missing_and_corrupt(face_models_dir, tmp_path, monkeypatch, analyzer, astronaut, ast_face):
    from emojidiff.faces.blendshapes import BlendshapeModel, blendshapes_available

    assert not blendshapes_available()
    with pytest.raises(ModelMissingError, match="face-landmarker-task.*missing.*EMOJIDIFF_FACE_LANDMARKER"):
        analyzer.blendshapes(astronaut, ast_face)
    bad = tmp_path / "face_landmarker.task"
    bad.write_bytes(b"PK\x03\x04 not really a model bundle")
    monkeypatch.setenv("EMOJIDIFF_FACE_LANDMARKER", str(bad))
    assert blendshapes_available()
    with pytest.raises(ModelMissingError) as exc:
        BlendshapeModel()
    assert "is not a usable MediaPipe face_landmarker.task" in str(exc.value) and "\n" not in str(exc.value)
