"""`emojidiff world pretrain --quick` end to end, resuming, and sampling the result with plain diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from emojidiff.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("world")
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_quick_pretrain_writes_every_stage(quick_run):
    state = json.loads((quick_run / "state.json").read_text())
    assert list(state["done"]) == ["analysers", "data", "vae", "clip", "unet", "assemble"]
    for kind in ("train", "eval"):
        for f in ("identity.safetensors", "face.safetensors", "config.json"):
            assert (quick_run / "analysers" / kind / f).is_file()
    assert (quick_run / "analysers" / "eval" / "style.safetensors").is_file()
    assert list((quick_run / "checkpoints").glob("unet-*"))
    assert not list(quick_run.rglob("*.bin")) and not list(quick_run.rglob("*.pt"))


def test_quick_base_loads_in_plain_diffusers_and_samples(quick_run):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModelWithProjection

    pipe = StableDiffusionPipeline.from_pretrained(str(quick_run / "base"))
    assert pipe.tokenizer("a smiling person").input_ids[2] != pipe.tokenizer.unk_token_id
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    img = pipe("a flat portrait of a smiling person", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_resume_skips_finished_stages_and_refuses_to_overwrite(quick_run):
    runner = CliRunner()
    res = runner.invoke(main, ["world", "pretrain", "--quick", "--out", str(quick_run)])
    assert res.exit_code == 1 and "--resume" in res.output
    res = runner.invoke(main, ["world", "pretrain", "--quick", "--resume", "--out", str(quick_run)])
    assert res.exit_code == 0, res.output
    assert "already done" in res.output


def test_sample_command(quick_run, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "world",
            "sample",
            "--prompt",
            "a sketch portrait",
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            "--base",
            str(quick_run / "base"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_unknown_stage_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["world", "pretrain", "--quick", "--out", str(tmp_path), "--stages", "vae,zzz"])
    assert res.exit_code == 1 and "zzz" in res.output
