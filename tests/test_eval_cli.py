"""`emojidiff eval` and its held-out cases on the shipped synthetic world (untrained adapters, tiny settings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from emojidiff.adapter.core import BUNDLED_BASES
from emojidiff.cli import main
from emojidiff.eval.synthetic_cases import heldout_cases
from emojidiff.synthetic.dataset import HELDOUT_IDS, TRAIN_IDS

BASE = BUNDLED_BASES["synthetic"]
pytestmark = pytest.mark.skipif(not (BASE / "model_index.json").is_file(), reason="shipped base model absent")
METRICS = ("id_sim", "exp_err", "leakage", "unrelated_id_sim", "style_leakage")


@pytest.fixture(scope="module")
def world_adapter(tmp_path_factory) -> str:
    from emojidiff.adapter import init_adapter

    out = tmp_path_factory.mktemp("eval") / "adapter"
    init_adapter("synthetic", out, image_encoder=str(BASE / "image_encoder"), face_backend="synthetic")
    return str(out)


def _ids(cases):
    return [(c.meta["identity_id"], c.meta["template_id"], c.meta["template_name"], c.prompt) for c in cases]


def test_heldout_cases_are_deterministic_seed_keyed_and_held_out():
    a, b, c = heldout_cases(3, 4, seed=0), heldout_cases(3, 4, seed=0), heldout_cases(3, 4, seed=1)
    assert len(a) == 12 and _ids(a) == _ids(b)
    assert np.array_equal(np.asarray(a[5].template), np.asarray(b[5].template))
    assert {x.meta["identity_id"] for x in a}.isdisjoint({x.meta["identity_id"] for x in c})
    people = {x.meta["identity_id"] for x in a}
    template_people = {x.meta["template_id"] for x in a}
    assert len(people) == 3 and len(template_people) == 4 and people.isdisjoint(template_people)
    for pid in people | template_people:
        assert HELDOUT_IDS[0] <= pid < HELDOUT_IDS[1] and not TRAIN_IDS[0] <= pid < TRAIN_IDS[1]
    assert len({x.meta["template_name"] for x in a}) == 4  # different named expressions
    for x in a:
        assert 1 <= len(x.identity) <= 2 and x.template_identity and x.target_ratios
        assert x.target_expression == x.meta["template_expression"]
        assert x.meta["expression_word"] in x.meta["expression_prompt"] and x.meta["expression_word"] not in x.prompt
    subset = heldout_cases(3, 4, seed=0, n_pairs=5)
    assert len(subset) == 5 and set(_ids(subset)) <= set(_ids(a))


def test_prompts_use_only_words_the_base_tokenizer_knows():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(BASE / "tokenizer"))
    for case in heldout_cases(4, 16, seed=3):
        for prompt in (case.prompt, case.meta["expression_prompt"]):
            for word in prompt.replace(",", " ").split():
                assert len(tok.tokenize(word)) == 1, (word, prompt)


def test_eval_writes_json_for_an_untrained_adapter(world_adapter, tmp_path):
    out = tmp_path / "r" / "eval.json"
    args = ["eval", "--adapter", world_adapter, "--world", "synthetic", "--n-identities", "2", "--n-templates", "2",
            "--seed", "4", "--steps", "2", "--json", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    data = json.loads(out.read_text())
    assert list(data["models"]) == [world_adapter] and data["n_pairs"] == 4 and data["seed"] == 4
    m = data["models"][world_adapter]
    assert set(METRICS) <= set(m)
    for k in ("id_sim", "leakage", "unrelated_id_sim"):
        assert -1.0 <= m[k] <= 1.0
    assert 0.0 <= m["exp_err"] <= 1.0 and 0.0 <= m["style_leakage"] <= 1.0 and 0.0 <= m["prompt_acc"] <= 1.0
    assert 0.0 <= m["face_found"] <= 1.0 and m["quality_fd"] >= 0
    assert f"| {world_adapter} |" in res.output  # the printed table


def test_eval_compares_two_adapters_on_the_same_cases(world_adapter, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(world_adapter, twin)
    out = tmp_path / "two.json"
    args = ["eval", "--adapter", world_adapter, "--adapter", str(twin), "--n-identities", "2", "--n-templates", "1",
            "--steps", "2", "--json", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    models = json.loads(out.read_text())["models"]
    assert list(models) == [world_adapter, str(twin)]
    # the same weights on the same cases with the same noise score the same
    assert models[world_adapter] == pytest.approx(models[str(twin)], abs=1e-3)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--adapter", "synthetic-nope"], "adapter 'synthetic-nope' not found"),
        (["--adapter", "{a}", "--world", "real"], "--world 'real' is not available"),
        (["--adapter", "{a}", "--n-identities", "1"], "--n-identities must be at least 2"),
        (["--adapter", "{a}", "--adapter", "{a}"], "the same --adapter is given twice"),
    ],
)
def test_eval_errors_are_one_line(world_adapter, extra, needle):
    res = CliRunner().invoke(main, ["eval", *(e.format(a=world_adapter) for e in extra)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr


def test_eval_refuses_an_adapter_of_another_base(tmp_path, world_adapter):
    cfg_path = Path(world_adapter) / "emojidiff.json"
    other = tmp_path / "other"
    shutil.copytree(world_adapter, other)
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = 768
    (other / "emojidiff.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["eval", "--adapter", str(other)])
    assert res.exit_code == 1 and "not for the synthetic world's base" in res.stderr


def test_batched_generation_matches_one_call_per_case(world_adapter):
    """Several cases in one diffusers call, each with its own identity, template, prompt and seed, give the images
    of separate calls (diffusers alone would mix the per-sample branch inputs into every sample)."""
    from emojidiff.eval.synthetic import PipelinePool, generate_batch

    cases = heldout_cases(2, 2, seed=5)[:3]
    pipe = PipelinePool().get(world_adapter)
    kw = {"id_scale": 1.0, "exp_scale": 0.8, "steps": 2, "guidance": 4.0}
    batch = generate_batch(pipe, [c.prompt for c in cases], [pipe.encode_identity(c.identity) for c in cases],
                           [pipe.encode_expression(c.template) for c in cases],
                           [c.meta["case_seed"] for c in cases], **kw)  # fmt: skip
    for c, img in zip(cases, batch, strict=True):
        one = pipe(c.prompt, identity=c.identity, expression=c.template, exp_scale=0.8, num_inference_steps=2,
                   guidance_scale=4.0, seed=c.meta["case_seed"], height=64, width=64).images[0]  # fmt: skip
        assert np.abs(np.asarray(one, float) - np.asarray(img, float)).max() <= 2
