"""The shipped base model loads with plain diffusers and draws faces of this world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emojidiff.synthetic.base_model import ANALYSERS_DIR, BASE_DIR

pytestmark = pytest.mark.skipif(not (BASE_DIR / "model_index.json").is_file(), reason="shipped base model absent")


def test_plain_diffusers_loads_the_shipped_base_and_samples_faces():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPVisionModelWithProjection

    pipe = StableDiffusionPipeline.from_pretrained(str(BASE_DIR))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.image_encoder, CLIPVisionModelWithProjection)
    size = sum(f.stat().st_size for f in BASE_DIR.parent.rglob("*") if f.is_file())
    assert size < 50e6
    gen = torch.Generator().manual_seed(0)
    out = pipe(
        ["a flat portrait of a smiling person with black short hair and brown eyes, on a blue background"] * 4,
        num_inference_steps=15,
        guidance_scale=4.0,
        generator=gen,
        output_type="np",
    ).images
    assert out.shape == (4, 64, 64, 3)
    if (ANALYSERS_DIR / "eval" / "config.json").is_file():
        from emojidiff.synthetic.analysers import SyntheticAnalysers

        x = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            assert (SyntheticAnalysers("eval").presence(x) > 0.5).float().mean() >= 0.75


def test_world_bench_base_reports_each_guidance_and_the_vae_round_trip(tmp_path):
    import json

    from click.testing import CliRunner

    from emojidiff.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "base.json"
    args = ["world", "bench", "--what", "base", "--n", "10", "--guidance", "4", "--guidance", "2"]
    args += ["--guidance-rescale", "0.7", "--json-out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    assert [figures["base"]["guidance"], figures["base_guidance_2"]["guidance"]] == [4.0, 2.0]
    assert figures["base"]["guidance_rescale"] == figures["base_guidance_2"]["guidance_rescale"] == 0.7
    for k in ("background", "shading", "palette", "glasses", "hat"):
        assert 0.0 <= figures["base"]["style_word_accuracy_vae_round_trip"][k] <= 1.0
    assert (
        figures["base"]["style_word_accuracy_vae_round_trip"]
        == figures["base_guidance_2"]["style_word_accuracy_vae_round_trip"]
    )
    # the expression-word ceiling and the commonest word's share do not depend on guidance either
    for k in ("expression_word_followed_vae_round_trip", "expression_word_commonest_share"):
        assert figures["base"][k] == figures["base_guidance_2"][k]
        assert 0.1 <= figures["base"][k] <= 1.0  # 10 captions: at least one of them
    assert 0.0 <= figures["base"]["expression_word_followed"] <= 1.0
