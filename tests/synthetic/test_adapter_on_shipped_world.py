"""The real adapter code on the shipped synthetic world: init-adapter + generate with the synthetic face backend."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from emojidiff.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "emojidiff" / "synthetic" / "weights" / "base"


@pytest.mark.skipif(not (BASE / "model_index.json").is_file(), reason="shipped base model absent")
def test_untrained_adapter_runs_end_to_end_on_the_synthetic_world(tmp_path):
    adapter = tmp_path / "adapter"
    res = CliRunner().invoke(
        main,
        [
            "init-adapter",
            "--base",
            str(BASE),
            "--out",
            str(adapter),
            "--image-encoder",
            str(BASE / "image_encoder"),
            "--face-backend",
            "synthetic",
        ],
    )
    assert res.exit_code == 0, res.output + res.stderr
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--adapter",
        str(adapter),
        "--identity",
        str(ROOT / "examples/identities/person_00_id3.png"),
        "--expression",
        str(ROOT / "examples/expressions/grin.png"),
        "--out",
        str(out),
        "--steps",
        "3",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    from PIL import Image

    assert Image.open(out).size == (64, 64)  # the base's native size
    res2 = CliRunner().invoke(main, [*args[:-4], "--out", str(tmp_path / "again.png"), "--steps", "3"])
    assert res2.exit_code == 0 and (tmp_path / "again.png").read_bytes() == out.read_bytes()
