"""Layer probe on tiny models: block isolation, the selection rule, the table/plot/JSON, --write."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _idi_stubs import person_image, register, strips
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from emojidiff.adapter.config import EXPRESSION_WEIGHTS, EmojiDiffConfig
from emojidiff.adapter.layers import block_key, cross_attention_processors
from emojidiff.adapter.weights import save_branch_weights
from emojidiff.cli import main
from emojidiff.errors import InputError
from emojidiff.idi.sources import read_sources, write_sources
from emojidiff.probe import BlockScore, ProbePair, choose_layers, probe_layers, probe_pairs, write_layer_map

BACKEND = register()
SENSITIVE = "down.block_1.1"
OTHER_SCALE = 0.0


def _adapter_with_one_active_block(src: str, out: Path, sd_base: str, block: str, other_scale: float) -> str:
    """Copy of ``src`` whose expression projections are ``other_scale`` x theirs outside ``block``."""
    import shutil

    from diffusers import UNet2DConditionModel

    shutil.copytree(src, out)
    unet = UNet2DConditionModel.from_pretrained(sd_base, subfolder="unet")
    sd = load_file(str(out / EXPRESSION_WEIGHTS))
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(cross_attention_processors(unet)):
        for kv in ("to_k_ip", "to_v_ip"):
            k = f"ip_adapter.{2 * i + 1}.{kv}.weight"
            sd[k] = torch.randn(sd[k].shape, generator=g) * (1.0 if block_key(name) == block else other_scale)
    id_sd = load_file(str(out / "ip_adapter_identity.safetensors"))
    save_branch_weights(out, id_sd, sd)
    cfg = json.loads((out / "emojidiff.json").read_text())
    cfg["expression_layers"] = cfg["attention_blocks"]
    (out / "emojidiff.json").write_text(json.dumps(cfg))
    return str(out)


KW = dict(num_inference_steps=2, guidance_scale=2.0, resolution=32)


def _gen(pipe, pair, layers):
    pipe.config.expression_layers = layers
    return pipe(pair.prompt, identity=pair.identity, expression=pair.template if layers else None, seed=pair.seed,
                num_inference_steps=2, guidance_scale=2.0, height=32, width=32).images[0]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, sd_base, sd_adapter):
    """Two adapters (others at 0.05x / exactly 0), manifests, and templates whose expression strips lie in the
    direction the sensitive block moves the output's strips (so that block moves expression *toward* them)."""
    from _idi_stubs import StatsAnalyzer

    from emojidiff import EmojiDiffPipeline
    from emojidiff.faces import register_face_analyzer

    register_face_analyzer("stats-x20", lambda: StatsAnalyzer(expression_gain=20.0))
    root = tmp_path_factory.mktemp("probe")
    ad = _adapter_with_one_active_block(sd_adapter, root / "adapter", sd_base, SENSITIVE, 0.05)
    ad0 = _adapter_with_one_active_block(sd_adapter, root / "adapter0", sd_base, SENSITIVE, 0.0)
    rows_t, rows_i = [], []
    for i in range(2):
        person_image(10 + i, 0).save(root / f"t{i}.png")
        person_image(20 + i, 0).save(root / f"b{i}.png")
        rows_t.append({"image": f"t{i}.png", "person": f"t{i}", "prompt": "a portrait"})
        rows_i.append({"image": f"b{i}.png", "person": f"b{i}"})
    write_sources(root / "templates.jsonl", rows_t)
    write_sources(root / "identities.jsonl", rows_i)
    pairs = probe_pairs(read_sources(root / "templates.jsonl"), read_sources(root / "identities.jsonl"), 2)
    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=ad, face_backend=BACKEND)
    pipe.set_progress_bar_config(disable=True)
    fa = StatsAnalyzer()
    for p in pairs:
        e0 = fa.measure_expression(_gen(pipe, p, []), None)
        eb = fa.measure_expression(_gen(pipe, p, [SENSITIVE]), None)
        arr = np.asarray(Image.open(p.template)).copy()
        for k, (x0, y0, x1, y1) in strips((32, 32)).items():  # the expression crop greys these strips out
            arr[y0:y1, x0:x1] = 255 if eb[k] > e0[k] else 0
        Image.fromarray(arr).save(p.template)
    return {"root": root, "adapter": ad, "adapter0": ad0, "pairs": pairs}


def _cli(world, adapter, sd_base, backend, *extra):
    r = world["root"]
    return CliRunner().invoke(main, [
        "probe-layers", "--adapter", adapter, "--base", sd_base, "--templates", str(r / "templates.jsonl"),
        "--identities", str(r / "identities.jsonl"), "--face-backend", backend, "--pairs", "2", "--steps", "2",
        "--guidance", "2", "--resolution", "32", *extra,
    ])  # fmt: skip


def test_probe_picks_the_expression_sensitive_block_and_writes_it(world, sd_base, tmp_path):
    before = json.loads(Path(world["adapter"], "emojidiff.json").read_text())
    assert before["expression_layers"] == before["attention_blocks"]  # probing an all-blocks adapter
    res = _cli(world, world["adapter"], sd_base, "stats-x20", "--out", str(tmp_path / "probe"), "--write")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert f"chosen map: {SENSITIVE}" in res.output and "(all blocks)" in res.output
    data = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert data["chosen"] == [SENSITIVE] and data["previous"] == before["attention_blocks"]
    rows = {r["block"]: r for r in data["blocks"]}
    assert list(rows) == before["attention_blocks"] and all(r["n"] == 2 for r in rows.values())
    best = rows[SENSITIVE]
    assert best["chosen"] and best["exp_gain"] > 0 and best["score"] > 0
    assert all(best["exp_gain"] > 5 * abs(r["exp_gain"]) for b, r in rows.items() if b != SENSITIVE)
    assert all(not r["untrained"] for r in rows.values())
    assert Image.open(tmp_path / "probe" / "probe.png").size[1] == 300
    after = json.loads(Path(world["adapter"], "emojidiff.json").read_text())
    assert after["expression_layers"] == [SENSITIVE]
    assert {k: v for k, v in after.items() if k != "expression_layers"} == {
        k: v for k, v in before.items() if k != "expression_layers"
    }
    assert EmojiDiffConfig.load(world["adapter"]).expression_layers == [SENSITIVE]


def test_same_block_is_not_chosen_when_style_change_outweighs_expression(world, sd_base, tmp_path):
    """With a plain (x1) expression reading, the block's expression gain is smaller than its style change."""
    from emojidiff import EmojiDiffPipeline

    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=world["adapter0"], face_backend=BACKEND)
    result = probe_layers(pipe, world["pairs"], **KW)
    assert (
        pipe.config.expression_layers
        == json.loads(Path(world["adapter0"], "emojidiff.json").read_text())["expression_layers"]
    )  # the map is restored
    rows = {r.block: r for r in result.blocks}
    assert result.chosen == [] and rows[SENSITIVE].exp_gain > 0
    assert rows[SENSITIVE].style_change > rows[SENSITIVE].exp_gain and rows[SENSITIVE].score < 0
    # blocks with zero expression weights change nothing at all, and are flagged
    for b, r in rows.items():
        if b != SENSITIVE:
            assert r.untrained and r.exp_change == r.id_change == r.style_change == 0.0
    assert not rows[SENSITIVE].untrained
    with pytest.raises(InputError, match="not writing an empty layer map"):
        write_layer_map(world["adapter0"], result.chosen)
    res = _cli(world, world["adapter0"], sd_base, BACKEND, "--out", str(tmp_path / "p0"), "--write")
    assert res.exit_code == 1 and "not writing an empty layer map" in res.stderr and res.stderr.count("\n") == 1


def _row(block, gain, idc, style, w=1.0):
    r = BlockScore(block, gain, abs(gain), idc, style)
    r.score = gain - w * idc - w * style
    return r


def test_choose_layers_rule():
    rows = [
        _row("a", 0.10, 0.01, 0.01),  # score 0.08: best
        _row("b", 0.30, 0.20, 0.20),  # large expression gain but more identity/style change: score < 0
        _row("c", 0.05, 0.00, 0.00),  # 0.05 >= 0.5 * 0.08: kept
        _row("d", 0.03, 0.00, 0.00),  # 0.03 < 0.04: dropped
        _row("e", -0.02, -0.1, 0.0),  # moves expression away from the template: never chosen
        _row("f", float("nan"), 0.0, 0.0),
    ]
    assert choose_layers(rows) == ["a", "c"]
    assert [r.chosen for r in rows] == [True, False, True, False, False, False]
    assert choose_layers(rows, keep_fraction=0.0) == ["a", "c", "d"]
    assert choose_layers(rows, keep_fraction=1.0) == ["a"]
    assert choose_layers([_row("x", 0.1, 0.2, 0.0)]) == []
    assert math.isnan(rows[-1].score)


def test_probe_pairs_pair_templates_with_other_persons(tmp_path):
    for i in range(3):
        person_image(i, 0).save(tmp_path / f"{i}.png")
    write_sources(tmp_path / "m.jsonl", [{"image": f"{i}.png", "person": f"p{i % 2}"} for i in range(3)])
    src = read_sources(tmp_path / "m.jsonl")
    pairs = probe_pairs(src, src, 5, seed=7)
    assert len(pairs) == 3 and [p.seed for p in pairs] == [7, 8, 9]
    person = {s.image: s.person for s in src}
    assert all(person[p.template] != person[p.identity] for p in pairs)
    write_sources(tmp_path / "one.jsonl", [{"image": "0.png", "person": "p0"}])
    with pytest.raises(InputError, match="no probe pair"):
        probe_pairs(read_sources(tmp_path / "one.jsonl"), read_sources(tmp_path / "one.jsonl"), 2)
    assert isinstance(pairs[0], ProbePair) and os.path.isfile(pairs[0].template)
