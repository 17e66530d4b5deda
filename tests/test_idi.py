"""IDI on tiny models with a pixel-statistics face analyser: filters, adaptive strength, candidates, shards,
crash-resume, identity-alteration backends, rounds with training, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _idi_stubs import person_image, register
from click.testing import CliRunner
from PIL import Image

from emojidiff.cli import main
from emojidiff.errors import InputError
from emojidiff.idi import IDIConfig, Scores, filter_reasons, read_sources
from emojidiff.idi.alter import DiffusionReID, adaptive_strength, register_face_swapper
from emojidiff.idi.sources import write_sources
from emojidiff.idi.synth import (
    Scorer,
    all_records,
    enumerate_candidates,
    merge_round,
    shard_of,
    shard_path,
    synthesize_round,
)

BACKEND = register()


def _cfg(**kw) -> IDIConfig:
    base = dict(resolution=32, num_inference_steps=2, guidance_scale=2.0, reid_strengths=[0.3, 0.6], reid_steps=2,
                max_expression_error=0.12, min_identity_sim=0.0, max_template_identity_sim=0.9)  # fmt: skip
    base.update(kw)
    return IDIConfig.from_dict(base)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    rows_t, rows_i = [], []
    for p in range(4):
        for v in range(2):
            name = f"faces/p{p}_{v}.png"
            (root / "faces").mkdir(exist_ok=True)
            person_image(p, v).save(root / name)
            (rows_t if v == 0 else rows_i).append({"image": name, "person": f"p{p}", "style": "photo"})
    write_sources(root / "templates.jsonl", rows_t)
    write_sources(root / "identities.jsonl", rows_i)
    return root


@pytest.fixture(scope="module")
def pipe(sd_base, sd_adapter):
    from emojidiff import EmojiDiffPipeline

    p = EmojiDiffPipeline.from_pretrained(sd_base, adapter=sd_adapter, face_backend=BACKEND)
    p.set_progress_bar_config(disable=True)
    return p


def _candidates(sources, cfg, r=1):
    return enumerate_candidates(
        read_sources(sources / "templates.jsonl"), read_sources(sources / "identities.jsonl"), cfg, r
    )[0]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------- pure logic
def test_filters_keep_and_reject_by_thresholds():
    cfg = _cfg(max_expression_error=0.1, min_identity_sim=0.5, max_template_identity_sim=0.3, min_identity_margin=0.3)
    assert filter_reasons(Scores(0.05, 0.8, 0.1), cfg) == []
    assert filter_reasons(Scores(0.1, 0.5, 0.2), cfg) == []  # thresholds are inclusive
    assert filter_reasons(Scores(0.2, 0.8, 0.1), cfg) == ["expression_lost"]
    assert filter_reasons(Scores(0.05, 0.4, 0.1), cfg) == ["identity_not_B"]
    assert filter_reasons(Scores(0.05, 0.9, 0.35), cfg) == ["identity_leak_A"]
    assert filter_reasons(Scores(0.05, 0.55, 0.3), cfg) == ["identity_margin"]
    assert filter_reasons(Scores(0.3, 0.1, 0.9), cfg) == ["expression_lost", "identity_not_B", "identity_leak_A",
                                                          "identity_margin"]  # fmt: skip
    assert filter_reasons(Scores(float("nan"), 0.9, 0.0), cfg) == ["nan_score"]


def test_adaptive_strength_increases_until_identity_changes_with_expression_kept():
    cfg = _cfg(max_expression_error=0.1, min_identity_sim=0.5, max_template_identity_sim=0.3)
    table = {0.2: Scores(0.02, 0.3, 0.6), 0.4: Scores(0.05, 0.7, 0.1), 0.6: Scores(0.2, 0.9, 0.0)}
    rendered = []

    def render(s):
        rendered.append(s)
        return Image.new("RGB", (4, 4), (int(s * 100),) * 3)

    def score(img):
        return table[round(img.getpixel((0, 0))[0] / 100, 1)]

    alt = adaptive_strength([0.2, 0.4, 0.6], render, score, cfg)
    assert alt.strength == 0.4 and rendered == [0.2, 0.4] and [a.strength for a in alt.attempts] == [0.2, 0.4]
    # identity already changed but expression lost: stop, more noise would not bring it back
    table[0.4] = Scores(0.3, 0.7, 0.1)
    rendered.clear()
    alt = adaptive_strength([0.2, 0.4, 0.6], render, score, cfg)
    assert rendered == [0.2, 0.4] and filter_reasons(alt.scores, cfg)
    # nothing passes: the attempt with the fewest failed tests, lowest strength among equals
    table.update({0.4: Scores(0.05, 0.4, 0.1), 0.6: Scores(0.05, 0.45, 0.2)})
    alt = adaptive_strength([0.2, 0.4, 0.6], render, score, cfg)
    assert alt.strength == 0.4 and len(alt.attempts) == 3


def test_candidates_are_cross_identity_deterministic_and_sharded(sources):
    cfg = _cfg(identities_per_template=2)
    cands = _candidates(sources, cfg)
    assert len(cands) == 8 and len({c.cid for c in cands}) == 8
    assert all(c.template.person != c.identity.person for c in cands)
    for i in range(4):  # two distinct other persons per template
        assert len({c.identity.person for c in cands if c.template.raw == f"faces/p{i}_0.png"}) == 2
    assert [c.key() for c in cands] == [c.key() for c in _candidates(sources, cfg)]
    assert [c.key() for c in cands] != [c.key() for c in _candidates(sources, cfg, r=2)]  # new pairings per round
    for world in (1, 2, 3):
        parts = [shard_of(cands, r, world) for r in range(world)]
        ids = [c.cid for p in parts for c in p]
        assert sorted(ids) == sorted(c.cid for c in cands) and len(ids) == len(set(ids))
    rows = [{"image": "faces/p0_0.png", "person": "p0"}]
    write_sources(sources / "alone.jsonl", rows)
    cands, lonely = enumerate_candidates(read_sources(sources / "alone.jsonl"), read_sources(sources / "alone.jsonl"),
                                         cfg, 1)  # fmt: skip
    assert cands == [] and lonely == 1
    (sources / "bad.jsonl").write_text('{"image": "faces/p0_0.png"}\n')
    with pytest.raises(InputError, match="line 1 lacks person"):
        read_sources(sources / "bad.jsonl")


# ---------------------------------------------------------------------------------------------- synthesis
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sources, pipe):
    cfg = _cfg()
    cands = _candidates(sources, cfg)
    rd = tmp_path_factory.mktemp("full") / "round-1"
    assert synthesize_round(pipe, cands, cfg, rd, show_progress=False) == 4
    report = merge_round(rd, cands, cfg)
    return rd, cands, cfg, report


def test_round_outputs_scores_filters_and_report(uninterrupted):
    rd, cands, cfg, report = uninterrupted
    recs = _lines(rd / "candidates.jsonl")
    assert [r["id"] for r in recs] == [c.cid for c in cands]
    for r in recs:
        s = Scores(r["exp_err"], r["id_sim"], r["leak_sim"])
        assert r["kept"] == (filter_reasons(s, cfg) == []) and r["reasons"] == filter_reasons(s, cfg)
        assert r["attempts"] and r["attempts"][-1]["strength"] <= 0.6 and (rd / r["target"]).is_file()
        assert r["strength"] in (0.3, 0.6) and "g_id_sim" in r
    kept = [r for r in recs if r["kept"]]
    assert 0 < len(kept) < 4  # these thresholds keep some and reject some of the tiny model's candidates
    triplets = _lines(rd / "triplets.jsonl")
    assert [t["id"] for t in triplets] == [r["id"] for r in kept]
    assert report["candidates"] == 4 and report["kept"] == len(kept) and report["kept_ratio"] == len(kept) / 4
    assert json.loads((rd / "report.json").read_text())["kept"] == len(kept)
    assert Image.open(rd / "histograms.png").size == (720, 440) and (rd / "report.md").is_file()
    from emojidiff.data import read_manifest

    t = read_manifest(rd / "triplets.jsonl")[0]  # a kept triplet is a training manifest entry with every score
    assert Path(t.target).is_file() and Path(t.template).is_file() and {"exp_err", "id_sim"} <= set(t.meta)


def test_strict_and_lenient_thresholds(tmp_path, sources, pipe):
    cands = _candidates(sources, _cfg())[:2]
    strict = _cfg(min_identity_sim=1.01)
    synthesize_round(pipe, cands, strict, tmp_path / "s", show_progress=False)
    assert merge_round(tmp_path / "s", cands, strict)["kept"] == 0
    assert all("identity_not_B" in r["reasons"] for r in _lines(tmp_path / "s" / "candidates.jsonl"))
    lenient = _cfg(max_expression_error=9, min_identity_sim=-2, max_template_identity_sim=2, min_identity_margin=-9)
    synthesize_round(pipe, cands, lenient, tmp_path / "l", show_progress=False)
    assert merge_round(tmp_path / "l", cands, lenient)["kept"] == 2
    # lenient: the lowest strength already passes, so only one attempt is made
    assert all(len(r["attempts"]) == 1 for r in _lines(tmp_path / "l" / "candidates.jsonl"))


def test_crash_and_resume_gives_exactly_the_uninterrupted_set(tmp_path, uninterrupted, pipe):
    full_dir, cands, cfg, _ = uninterrupted
    rd = tmp_path / "round-1"
    seen = []

    def crash_after_two(rec):
        seen.append(rec["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        synthesize_round(pipe, cands, cfg, rd, on_record=crash_after_two, show_progress=False)
    assert len(all_records(rd)) == 2
    with pytest.raises(InputError, match="incomplete: 2 of 4"):
        merge_round(rd, cands, cfg)
    with open(shard_path(rd, 0, 1), "ab") as f:  # a kill in the middle of writing the next line
        f.write(b'{"id": "r1-000002-00", "kep')
    assert synthesize_round(pipe, cands, cfg, rd, show_progress=False) == 2  # only the unfinished ones
    assert synthesize_round(pipe, cands, cfg, rd, show_progress=False) == 0
    merge_round(rd, cands, cfg)
    assert (rd / "candidates.jsonl").read_text() == (full_dir / "candidates.jsonl").read_text()
    assert len(_lines(shard_path(rd, 0, 1))) == 4
    for c in cands:  # same targets, byte for byte
        assert (rd / "images" / f"{c.cid}.png").read_bytes() == (full_dir / "images" / f"{c.cid}.png").read_bytes()


def test_sharding_by_rank_partitions_and_merges_to_the_same_set(tmp_path, uninterrupted, pipe):
    full_dir, cands, cfg, _ = uninterrupted
    rd = tmp_path / "round-1"
    assert synthesize_round(pipe, cands, cfg, rd, rank=1, world=2, show_progress=False) == 2
    assert synthesize_round(pipe, cands, cfg, rd, rank=0, world=2, show_progress=False) == 2
    assert [r["id"] for r in _lines(shard_path(rd, 0, 2))] == [c.cid for c in cands[0::2]]
    assert [r["id"] for r in _lines(shard_path(rd, 1, 2))] == [c.cid for c in cands[1::2]]
    # a resume with another world size finds nothing left to do
    assert synthesize_round(pipe, cands, cfg, rd, rank=0, world=3, show_progress=False) == 0
    merge_round(rd, cands, cfg)
    assert (rd / "candidates.jsonl").read_text() == (full_dir / "candidates.jsonl").read_text()


def test_diffusion_reid_denoises_with_identity_b_and_expression_of_g(sources, pipe, monkeypatch):
    cfg = _cfg(reid_strengths=[0.5])
    reid = DiffusionReID(pipe, cfg)
    assert reid.i2i.unet is pipe.unet  # shares the UNet with the loaded adapter
    g = person_image(7, 0)
    b = str(sources / "faces" / "p1_1.png")
    calls = []
    real = type(reid.i2i).__call__

    def spy(self, **kw):
        calls.append(kw)
        return real(self, **kw)

    monkeypatch.setattr(type(reid.i2i), "__call__", spy)
    emb_b = pipe.encode_identity(b)
    out = reid.render(g, emb_b, "a portrait", 0.5, seed=3)
    assert out.size == g.size and reid.render(g, emb_b, "a portrait", 0.0, seed=3) is g
    kw = calls[0]
    assert kw["image"] is g and kw["strength"] == 0.5
    ident, expr = kw["ip_adapter_image_embeds"]
    assert torch.allclose(ident[1, 0], torch.as_tensor(emb_b)) and not ident[0].any()  # negative: no identity
    assert torch.allclose(expr[1, 0], pipe.encode_expression(g))


def test_face_swapper_backend_and_missing_model_error(tmp_path, sources, pipe, monkeypatch):
    class Tint:
        name = "tint"

        def swap(self, image, source):
            return Image.blend(image.convert("RGB"), source.convert("RGB").resize(image.size), 0.7)

    register_face_swapper("tint", Tint)
    cfg = _cfg(alteration="tint", max_expression_error=9, min_identity_sim=-2, max_template_identity_sim=2,
               min_identity_margin=-9)  # fmt: skip
    cands = _candidates(sources, cfg)[:2]
    synthesize_round(pipe, cands, cfg, tmp_path / "r", show_progress=False)
    recs = _lines(tmp_path / "r" / "shards" / "shard-00000-of-00001.jsonl")
    assert all(r["strength"] is None and len(r["attempts"]) == 1 for r in recs)
    assert all(r["id_sim"] > r["g_id_sim"] for r in recs)  # the swap pulled identity toward B

    monkeypatch.setenv("EMOJIDIFF_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("EMOJIDIFF_INSWAPPER_ONNX", raising=False)
    (tmp_path / "idi.yaml").write_text(yaml.safe_dump({"alteration": "inswapper", **_small()}))
    res = _invoke(sources, pipe, tmp_path, "--config", str(tmp_path / "idi.yaml"))
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert "inswapper_128.onnx" in res.stderr and "alteration: diffusion" in res.stderr
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"alteration": "nope", **_small()}))
    res = _invoke(sources, pipe, tmp_path / "o2", "--config", str(tmp_path / "bad.yaml"))
    assert res.exit_code == 1 and "unknown identity alteration 'nope'" in res.stderr


def _small(**kw) -> dict:
    return dict(resolution=32, num_inference_steps=2, guidance_scale=2.0, reid_strengths=[0.3], reid_steps=2, **kw)


def _invoke(sources, pipe, out, *args):
    return CliRunner().invoke(main, [
        "idi", "--adapter", str(pipe.adapter_path), "--templates", str(sources / "templates.jsonl"),
        "--identities", str(sources / "identities.jsonl"), "--out", str(out), "--face-backend", BACKEND, *args,
    ])  # fmt: skip


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="unknown setting"):
        IDIConfig.from_dict({"max_expresion_error": 1})
    with pytest.raises(InputError, match="increasing"):
        IDIConfig.from_dict({"reid_strengths": [0.6, 0.3]})
    with pytest.raises(InputError, match="must not set adapter"):
        IDIConfig.from_dict({"train": {"adapter": "x"}})
    with pytest.raises(InputError, match="train has unknown"):
        IDIConfig.from_dict({"train": {"max_step": 1}})


def test_idi_rounds_train_the_next_model_and_resume(tmp_path, sources, pipe, sd_base):
    keep_all = dict(max_expression_error=9, min_identity_sim=-2, max_template_identity_sim=2, min_identity_margin=-9)
    train = dict(max_steps=1, batch_size=2, checkpointing_steps=1, validation_steps=0, report_to="none")
    cfg = {**_small(**keep_all), "train": train}
    (tmp_path / "idi.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    res = _invoke(sources, pipe, out, "--rounds", "2", "--config", str(tmp_path / "idi.yaml"), "--base", sd_base)
    assert res.exit_code == 0, res.output + str(res.exception)
    summary = json.loads((out / "idi.json").read_text())
    r1, r2 = summary["rounds"]
    assert r1["kept"] == 4 and r2["adapter"] == r1["trained_adapter"] == str(out / "round-1" / "train" / "adapter")
    assert summary["final_adapter"] == str(out / "round-2" / "train" / "adapter")
    assert (out / "round-2" / "train" / "adapter" / "emojidiff.json").is_file()
    assert json.loads((out / "round-2" / "round.json").read_text())["adapter"] == r1["trained_adapter"]
    # round 2 trains on rounds 1 and 2 (mix_previous_rounds)
    assert len(_lines(out / "round-2" / "train_manifest.jsonl")) == 8
    # the trained model differs from the start model
    from safetensors.torch import load_file

    a = load_file(str(Path(pipe.adapter_path) / "ip_adapter_expression.safetensors"))
    b = load_file(str(out / "round-1" / "train" / "adapter" / "ip_adapter_expression.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # running it again finds everything done
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    res = _invoke(sources, pipe, out, "--rounds", "2", "--config", str(tmp_path / "idi.yaml"), "--base", sd_base)
    assert res.exit_code == 0 and "processed" not in res.output
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    # other generation settings on the same folder: refused
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**cfg, "seed": 5}))
    res = _invoke(sources, pipe, out, "--rounds", "1", "--config", str(tmp_path / "other.yaml"), "--base", sd_base)
    assert res.exit_code == 1 and "other candidates, config" in res.stderr


def test_scorer_rejects_faceless_images(sources):
    from _idi_stubs import StatsAnalyzer

    sc = Scorer(StatsAnalyzer())
    t, b = str(sources / "faces" / "p0_0.png"), str(sources / "faces" / "p1_1.png")
    s = sc.score(Image.new("RGB", (32, 32)), t, b)
    assert filter_reasons(s, _cfg()) == ["nan_score"]
    s = sc.score(person_image(1, 5), t, b)
    assert s.id_sim > 0.9 > s.leak_sim and np.isfinite(s.exp_err)


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_example_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from emojidiff.train import TrainConfig

    train = sorted(CONFIGS.glob("stage1-*.yaml"))
    assert {p.name for p in train} >= {"stage1-sd15-round0.yaml", "stage1-sdxl-round0.yaml"}
    parsed = {p.name: TrainConfig.from_yaml(p) for p in train}
    assert parsed["stage1-sdxl-round0.yaml"].gradient_checkpointing
    for p in sorted(CONFIGS.glob("idi-*.yaml")):
        cfg = IDIConfig.from_yaml(p)
        assert cfg.alteration == "diffusion" and cfg.train["max_steps"] > 0
    acc = {p.name: load_config_from_file(str(p)) for p in sorted((CONFIGS / "accelerate").glob("*.yaml"))}
    kinds = {n: str(c.distributed_type).split(".")[-1] for n, c in acc.items()}
    assert kinds == {"ddp-1node.yaml": "MULTI_GPU", "ddp-multinode.yaml": "MULTI_GPU",
                     "deepspeed-zero2.yaml": "DEEPSPEED"}  # fmt: skip
    assert acc["ddp-multinode.yaml"].num_machines == 2
    ds = acc["deepspeed-zero2.yaml"].deepspeed_config
    assert ds["zero_stage"] == 2
    assert ds["gradient_accumulation_steps"] == parsed["stage1-sdxl-round0.yaml"].gradient_accumulation_steps


_MP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from _idi_stubs import register
from emojidiff.idi import IDIConfig
from emojidiff.idi.rounds import run_idi
register()
cfg = IDIConfig.from_dict({cfg!r})
def crash(rec):
    if os.environ.get("CRASH") and os.environ.get("RANK") == "1":
        os._exit(3)
run_idi({adapter!r}, {templates!r}, {identities!r}, sys.argv[1], rounds=1, cfg=cfg, base={base!r},
        face_backend="stats-stub", on_record=crash)
"""


@pytest.mark.slow
def test_two_processes_crash_resume_and_match_one_process(tmp_path, sources, pipe, sd_base, uninterrupted):
    """Real multi-process run (torchrun, 2 CPU processes, gloo): rank 1 dies after its first candidate, the rerun
    finishes; the merged round equals the one-process round."""
    import os
    import subprocess
    import sys

    full_dir, _, cfg, _ = uninterrupted
    data = {**{k: v for k, v in cfg.to_dict().items() if k != "train"}, "train_last_round": False}
    script = tmp_path / "mp.py"
    script.write_text(_MP_SCRIPT.format(
        tests=str(Path(__file__).parent), cfg=data, adapter=str(pipe.adapter_path), base=sd_base,
        templates=str(sources / "templates.jsonl"), identities=str(sources / "identities.jsonl"),
    ))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(script), str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRASH": "1"}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode != 0
    rd = tmp_path / "out" / "round-1"
    assert 0 < len(all_records(rd)) < 4 and not (rd / "candidates.jsonl").exists()
    env.pop("CRASH")
    res = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert sorted(p.name for p in (rd / "shards").glob("*.jsonl")) == [
        "shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"
    ]  # fmt: skip
    assert (rd / "candidates.jsonl").read_text() == (full_dir / "candidates.jsonl").read_text()
