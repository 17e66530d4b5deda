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


def test_generate_with_no_adapter_uses_the_bundled_one(tmp_path):
    """The README's first command: identity + expression + out, nothing else, no download."""
    from emojidiff.cli_core import default_adapter

    name = default_adapter()
    assert name in ("synthetic-ica", "synthetic-idi")
    ident, expr = ROOT / "examples/identities/person_00_id3.png", ROOT / "examples/expressions/grin.png"
    out = tmp_path / "out.png"
    args = ["generate", "--identity", str(ident), "--expression", str(expr), "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output + res.stderr
    explicit = tmp_path / "explicit.png"
    res = CliRunner().invoke(
        main, [*args[:-1], str(explicit), "--steps", "4", "--adapter", name, "--base", "synthetic"]
    )
    assert res.exit_code == 0, res.output + res.stderr
    assert explicit.read_bytes() == out.read_bytes()  # the defaults are exactly that adapter on the bundled base


def test_bundled_adapters_load_and_differ(tmp_path):
    """Shipped adapters are float16 files that load into the float32 synthetic base; naive and idi are different."""
    import numpy as np

    from emojidiff.adapter import BUNDLED_ADAPTERS
    from emojidiff.pipeline import EmojiDiffPipeline

    ident, expr = ROOT / "examples/identities/person_01_id11.png", ROOT / "examples/expressions/surprise.png"
    images = {}
    for name in ("synthetic-naive", "synthetic-idi"):
        if not (BUNDLED_ADAPTERS[name] / "emojidiff.json").is_file():
            pytest.skip(f"{name} not installed")
        pipe = EmojiDiffPipeline.from_pretrained(adapter=name)
        pipe.set_progress_bar_config(disable=True)
        img = pipe("a portrait of a person", identity=str(ident), expression=str(expr), num_inference_steps=4, seed=0)
        images[name] = np.asarray(img.images[0], dtype=np.float32)
    assert images["synthetic-naive"].shape == (64, 64, 3)
    assert np.abs(images["synthetic-naive"] - images["synthetic-idi"]).mean() > 0.5


@pytest.mark.skipif(not (BASE / "model_index.json").is_file(), reason="shipped base model absent")
def test_bundled_adapters_were_trained_on_the_bundled_base():
    """Replacing the shipped base without training its adapters again (or the reverse) must not go unnoticed."""
    from emojidiff.adapter import BUNDLED_ADAPTERS
    from emojidiff.adapter.config import EmojiDiffConfig
    from emojidiff.adapter.core import base_digest

    digest = base_digest(BASE)
    assert digest is not None and len(digest) == 16
    installed = {n: f for n, f in BUNDLED_ADAPTERS.items() if (f / "emojidiff.json").is_file()}
    found = {n: EmojiDiffConfig.load(f).base_digest for n, f in installed.items()}
    if not found:
        pytest.skip("no bundled adapter installed")
    assert found == dict.fromkeys(found, digest)
