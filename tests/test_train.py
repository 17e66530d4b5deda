"""Stage-1 training loop on tiny models: what trains, checkpoints, exact resume, caching, CLI."""

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from emojidiff.adapter import EXPRESSION_WEIGHTS, IDENTITY_WEIGHTS
from emojidiff.cli import main
from emojidiff.data import Triplet, read_manifest, write_manifest
from emojidiff.errors import InputError
from emojidiff.testing import random_embedding, random_image
from emojidiff.train import TrainConfig
from emojidiff.train.loop import TRAINABLE_FILE, Trainer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    triplets = []
    for i in range(6):
        random_image(100 + i, 64).save(root / f"target{i}.png")
        random_image(200 + i, 48).save(root / f"template{i}.png")
        np.save(root / f"id{i}.npy", random_embedding(300 + i))
        t = Triplet(f"{root}/template{i}.png", [f"{root}/id{i}.npy"], f"{root}/target{i}.png", f"a portrait number {i}")
        triplets.append(t)
    write_manifest(root / "train.jsonl", triplets)
    write_manifest(root / "val.jsonl", triplets[:2])
    return root


def _cfg(tmp_path, data_dir, sd_base, sd_adapter, **kw):
    base = dict(
        base=sd_base, adapter=sd_adapter, train_manifest=f"{data_dir}/train.jsonl", output_dir=f"{tmp_path}/run",
        resolution=64, batch_size=2, max_steps=4, checkpointing_steps=2, checkpoints_total_limit=None,
        learning_rate=1e-3, validation_steps=0, report_to="none", cache_dir=str(tmp_path / "cache"),
        drop_text=0.3, drop_identity=0.3, drop_expression=0.3, drop_all=0.1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _trained(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step}" / TRAINABLE_FILE))


def test_manifest_round_trip_with_relative_paths(data_dir):
    ts = read_manifest(data_dir / "train.jsonl")
    assert len(ts) == 6 and ts[0].prompt == "a portrait number 0"
    line = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])
    assert line["target"] == "target0.png" and line["identity"] == ["id0.npy"]
    assert ts[0].target == str(data_dir / "target0.png")


def test_only_the_expression_branch_trains(tmp_path, data_dir, sd_base, sd_adapter):
    final = Trainer(_cfg(tmp_path, data_dir, sd_base, sd_adapter)).train()
    before_exp = load_file(f"{sd_adapter}/{EXPRESSION_WEIGHTS}")
    after_exp = load_file(str(final / EXPRESSION_WEIGHTS))
    # processor order: down.block_1.0, down.block_1.1, up.block_0.0, up.block_0.1, up.block_0.2, mid -> 1..11
    in_map = {7, 11}
    for key_id in (1, 3, 5, 7, 9, 11):
        k = f"ip_adapter.{key_id}.to_v_ip.weight"
        assert torch.equal(before_exp[k], after_exp[k]) == (key_id not in in_map), key_id
    assert not torch.equal(before_exp["image_proj.latents"], after_exp["image_proj.latents"])
    before_id, after_id = load_file(f"{sd_adapter}/{IDENTITY_WEIGHTS}"), load_file(str(final / IDENTITY_WEIGHTS))
    assert all(torch.equal(before_id[k], after_id[k]) for k in before_id)
    # the exported adapter is a complete adapter folder, and names the base it was trained on
    from emojidiff import EmojiDiffPipeline
    from emojidiff.adapter import EmojiDiffConfig
    from emojidiff.adapter.core import base_digest

    assert EmojiDiffConfig.load(final).base_digest == base_digest(sd_base) is not None

    pipe = EmojiDiffPipeline.from_pretrained(sd_base, adapter=final)
    out = pipe("a portrait", identity=random_embedding(0), expression=random_image(1), num_inference_steps=2,
               height=64, width=64, seed=0, output_type="np")  # fmt: skip
    assert np.isfinite(out.images).all()


def test_resume_continues_exactly(tmp_path, data_dir, sd_base, sd_adapter):
    full = _cfg(tmp_path / "a", data_dir, sd_base, sd_adapter, gradient_accumulation_steps=2)
    Trainer(full).train()
    half = _cfg(tmp_path / "b", data_dir, sd_base, sd_adapter, gradient_accumulation_steps=2, max_steps=2)
    Trainer(half).train()
    assert not (tmp_path / "b" / "run" / "checkpoint-4").exists()
    rest = _cfg(tmp_path / "b", data_dir, sd_base, sd_adapter, gradient_accumulation_steps=2)
    Trainer(rest).train(resume="latest")
    a, b = _trained(tmp_path / "a" / "run", 4), _trained(tmp_path / "b" / "run", 4)
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    mid = _trained(tmp_path / "a" / "run", 2)
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # it did keep training after the resume point


def test_checkpoint_rotation_and_validation_grid(tmp_path, data_dir, sd_base, sd_adapter):
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, max_steps=3, checkpointing_steps=1, checkpoints_total_limit=2,
               val_manifest=str(data_dir / "val.jsonl"), validation_steps=3, validation_inference_steps=2,
               train_branches=["identity", "expression"])  # fmt: skip
    Trainer(cfg).train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (run / "checkpoint-3" / "adapter" / "emojidiff.json").is_file()
    from PIL import Image

    assert Image.open(run / "validation" / "step-0000003.png").size == (128, 64)


def test_encodings_are_cached_on_disk(tmp_path, data_dir, sd_base, sd_adapter, monkeypatch):
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, max_steps=1)
    Trainer(cfg)
    assert len(list((tmp_path / "cache" / "expression").glob("*.safetensors"))) == 6
    from emojidiff.pipeline import EmojiDiffPipeline

    monkeypatch.setattr(EmojiDiffPipeline, "_features", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    Trainer(cfg)  # second run: served from the cache


def test_train_cli_and_config_errors(tmp_path, data_dir, sd_base, sd_adapter):
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, max_steps=1).to_dict()
    cfg["output_dir"] = "run"  # relative to the config file
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "train.yaml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "adapter" / EXPRESSION_WEIGHTS).is_file()

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "learning_rat": 1}))
    res = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 1 and "unknown setting(s) learning_rat" in res.stderr
    with pytest.raises(InputError, match="train_branches must be"):
        TrainConfig(**{**cfg, "train_branches": ["style"]}).validate()
