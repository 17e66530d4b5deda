"""`emojidiff faces inspect`: findings, overlay, JSON; one line and exit 1 on bad input or no face."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from emojidiff.cli import main


def test_inspect_astronaut(analyzer, astronaut, tmp_path, face_models_dir):
    img = tmp_path / "astronaut.png"
    astronaut.save(img)
    out, js, crop = tmp_path / "overlay.png", tmp_path / "out.json", tmp_path / "crop.png"
    r = CliRunner().invoke(
        main, ["faces", "inspect", str(img), "--out", str(out), "--json", str(js), "--crop", str(crop)]
    )
    assert r.exit_code == 0, r.output
    assert "1 face(s)" in r.output and "landmarks 478" in r.output and "dlib-resnet-v1: dim 128 norm 1.000" in r.output
    assert "face_landmarker.task not found" in r.output
    data = json.loads(js.read_text())
    assert data["face_count"] == 1 and data["faces"][0]["landmarks"] == 478
    assert data["faces"][0]["identity"][0] == {"recognizer": "dlib-resnet-v1", "dim": 128, "norm": 1.0}
    assert set(data["faces"][0]["expression"]) >= {"mouth_open", "eye_open_left", "brow_raise_right"}
    ov = np.asarray(Image.open(out))
    assert ov.shape == (512, 512, 3) and not np.array_equal(ov, np.asarray(astronaut))
    assert Image.open(crop).size == (256, 256)


def test_inspect_no_face_and_bad_files(analyzer, tmp_path, gray_canvas):
    blank = tmp_path / "blank.png"
    gray_canvas(200, 200).save(blank)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path, needle in [(blank, "no face found in image"), (empty, "empty"), (tmp_path / "missing.png", "not exist"),
                         (tmp_path, "directory")]:  # fmt: skip
        r = CliRunner().invoke(main, ["faces", "inspect", str(path)])
        assert r.exit_code == 1, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
