"""The whole real-photo path: detection, alignment, masked crop, dlib identity -> adapter -> image (tiny base)."""

import numpy as np
import pytest
from click.testing import CliRunner

from emojidiff.cli import main


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, astronaut, hopper):
    d = tmp_path_factory.mktemp("photos")
    astronaut.save(d / "astronaut.png")
    hopper.save(d / "hopper.png")
    astronaut.transpose(0).save(d / "astronaut_mirrored.png")
    from emojidiff.testing import random_image

    random_image(3, 96).save(d / "noise.png")
    return d


@pytest.fixture(scope="module")
def photo_adapter(tmp_path_factory, sd_base, encoder_dir, analyzer):
    out = tmp_path_factory.mktemp("real") / "adapter"
    res = CliRunner().invoke(
        main,
        [
            "init-adapter",
            "--base",
            sd_base,
            "--out",
            str(out),
            "--image-encoder",
            encoder_dir,
            "--identity-dim",
            "128",
            "--face-backend",
            "mediapipe",
        ],
    )
    assert res.exit_code == 0, res.output
    return str(out)


def test_generate_from_real_photos(photo_adapter, photo_files):
    d = photo_files
    res = CliRunner().invoke(
        main,
        [
            "generate",
            "--identity",
            str(d / "astronaut.png"),
            "--identity",
            str(d / "astronaut_mirrored.png"),
            "--expression",
            str(d / "hopper.png"),
            "--adapter",
            photo_adapter,
            "--out",
            str(d / "out.png"),
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
        ],
    )
    assert res.exit_code == 0, res.output + res.stderr
    from PIL import Image

    assert Image.open(d / "out.png").size == (64, 64)


def test_pipeline_uses_the_masked_aligned_crop(photo_adapter, sd_base, photo_files):
    from emojidiff import EmojiDiffPipeline

    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=photo_adapter)
    assert pipe.face_analyzer.name == "mediapipe"  # recorded in the adapter
    crop = np.asarray(pipe.expression_crop(str(photo_files / "hopper.png")))
    assert crop.shape[0] == crop.shape[1]
    corners = np.concatenate([crop[:8, :8].reshape(-1, 3), crop[-8:, -8:].reshape(-1, 3)])
    assert corners.max() == 0  # outside the face oval is masked out
    a = pipe.encode_identity(str(photo_files / "astronaut.png"))
    b = pipe.encode_identity(str(photo_files / "astronaut_mirrored.png"))
    h = pipe.encode_identity(str(photo_files / "hopper.png"))
    assert a.shape == (128,) and float(a @ b) > float(a @ h)


def test_no_face_fails_before_the_model_loads(photo_adapter, photo_files, monkeypatch):
    from emojidiff.pipeline import EmojiDiffPipeline

    monkeypatch.setattr(EmojiDiffPipeline, "from_pretrained", classmethod(lambda *a, **k: 1 / 0))
    for flag in ("--identity", "--expression"):
        args = {"--identity": str(photo_files / "astronaut.png"), "--expression": str(photo_files / "hopper.png")}
        args[flag] = str(photo_files / "noise.png")
        res = CliRunner().invoke(
            main,
            [
                "generate",
                *[x for kv in args.items() for x in kv],
                "--adapter",
                photo_adapter,
                "--out",
                str(photo_files / "x.png"),
            ],
        )
        assert res.exit_code == 1
        assert res.stderr.strip().startswith("error: no face found in ") and "noise.png" in res.stderr
