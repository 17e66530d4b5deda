"""Stage 2 (ICA) on tiny models with small deterministic differentiable stub face models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from emojidiff.cli import main
from emojidiff.data import Triplet, write_manifest
from emojidiff.data.dataset import collate
from emojidiff.errors import InputError
from emojidiff.ica import ANIController, ICAConfig, get_face_models, register_face_models
from emojidiff.ica.face_models import ibug68_ratios
from emojidiff.ica.trainer import ICATrainer
from emojidiff.testing import random_embedding, random_image
from emojidiff.train import TrainConfig
from emojidiff.train.loop import STATE_FILE, TRAINABLE_FILE, Trainer, step_generator


class StubFaceModels:
    """Frozen random linear maps of 4x4-pooled pixels: identity (unit 8-d) and expression (3 values in [-1, 1]).

    ``fixed`` set to a vector makes ``identity`` return it for every image (still a function of the pixels, with zero
    gradient), to control the similarity ANI sees.
    """

    name = "stub"
    needs_points = False

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w_id = torch.randn(48, 8, generator=g)
        self.w_exp = torch.randn(48, 3, generator=g)
        self.fixed: torch.Tensor | None = None

    def _feat(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1)

    def identity(self, images, points5=None):
        if self.fixed is not None:
            return F.normalize(self.fixed.expand(images.shape[0], -1) + 0 * self._feat(images)[:, :1], dim=-1)
        return F.normalize(self._feat(images) @ self.w_id, dim=-1)

    def expression(self, images, points5=None):
        return torch.tanh(self._feat(images) @ self.w_exp)


register_face_models("test-stub", lambda seed=0: StubFaceModels(seed), overwrite=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ica_data")
    triplets = []
    for i in range(4):
        random_image(100 + i, 64).save(root / f"target{i}.png")
        random_image(200 + i, 48).save(root / f"template{i}.png")
        np.save(root / f"id{i}.npy", random_embedding(300 + i))
        triplets.append(Triplet(f"{root}/template{i}.png", [f"{root}/id{i}.npy"], f"{root}/target{i}.png", f"p{i}"))
    write_manifest(root / "train.jsonl", triplets)
    return root


def _cfg(tmp_path, data_dir, sd_base, sd_adapter, cls=ICAConfig, **kw):
    base = dict(
        base=sd_base, adapter=sd_adapter, train_manifest=f"{data_dir}/train.jsonl", output_dir=f"{tmp_path}/run",
        resolution=64, batch_size=2, max_steps=2, checkpointing_steps=1, checkpoints_total_limit=None,
        learning_rate=1e-3, validation_steps=0, report_to="none", cache_dir=str(tmp_path / "cache"),
        drop_text=0.3, drop_identity=0.3, drop_expression=0.3, drop_all=0.1,
        train_branches=["identity", "expression"],
    )  # fmt: skip
    base.update(kw)
    return cls(**base)


def _ica(**kw) -> dict:
    s = dict(face_models={"name": "test-stub"}, lambda_id=1.0, lambda_exp=1.0, lambda_align=1.0,
             ani_t_hi_init=300, ani_t_hi_min=100, ani_t_hi_max=600, ani_step=50.0, ani_momentum=0.0)  # fmt: skip
    s.update(kw)
    return s


def _batch(trainer, step=0):
    raw = collate([trainer.train_set[i] for i in range(2)])
    gen = step_generator(trainer.cfg.seed, step, 0, 0)
    return trainer.make_batch(raw, gen), gen


def test_each_loss_is_finite_with_gradient_on_trainable_params_only(tmp_path, data_dir, sd_base, sd_adapter):
    stub = StubFaceModels()
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, drop_text=0, drop_identity=0, drop_expression=0, drop_all=0,
               gradient_checkpointing=True, ica=_ica(checkpoint_decode=True))  # fmt: skip
    tr = ICATrainer(cfg, face_models=stub)
    trainable = set(map(id, tr.params.values()))
    frozen = [p for m in (tr.unet, tr.pipe.vae, tr.pipe.text_encoder, tr.pipe.image_encoder)
              for p in m.parameters() if id(p) not in trainable]  # fmt: skip
    s = cfg.ica
    for term, key in (("lambda_diffusion", "loss_diffusion"), ("lambda_id", "loss_id"), ("lambda_exp", "loss_exp"),
                      ("lambda_align", "loss_align")):  # fmt: skip
        for other in ("lambda_diffusion", "lambda_id", "lambda_exp", "lambda_align"):
            setattr(s, other, 1.0 if other == term else 1e-30)  # others on (so every pass runs) but negligible
        tr.optimizer.zero_grad(set_to_none=True)
        batch, gen = _batch(tr)
        loss, logs = tr.compute_loss(batch, gen)
        assert math.isfinite(loss.item()) and math.isfinite(logs[key]) and logs[key] > 0, (term, logs)
        loss.backward()
        grads = [p.grad for p in tr.params.values() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), term
        assert sum(float(g.abs().sum()) for g in grads) > 0, term
        assert all(p.grad is None for p in frozen), term
    assert stub.w_id.grad is None and logs["align_nce"] >= 0


def test_ani_range_adapts_with_measured_similarity(tmp_path, data_dir, sd_base, sd_adapter):
    c = ANIController(t_min=0, t_hi_init=300, t_hi_min=100, t_hi_max=600, target_sim=0.5, step=50, momentum=0.5)
    for _ in range(3):
        c.update(0.1)
    assert c.t_hi == 150 and abs(c.state.sim_ema - 0.1) < 1e-9
    c.update(float("nan"))  # no measurement: unchanged
    assert c.t_hi == 150
    for _ in range(20):
        c.update(0.2)
    assert c.t_hi == 100  # clamped at the lower bound
    c.update(1.0)  # EMA 0.6 >= target: widen
    assert c.t_hi == 150
    g = torch.Generator().manual_seed(0)
    assert int(c.sample(1000, g).max()) <= 150

    # inside the trainer, with a controlled stub similarity
    stub = StubFaceModels()
    e1, e2 = torch.eye(8)[0], torch.eye(8)[1]
    stub.fixed = e1  # references are computed with identity e1
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, drop_identity=0, drop_all=0,
               ica=_ica(lambda_align=0.0, ani_target_sim=0.5))  # fmt: skip
    tr = ICATrainer(cfg, face_models=stub)
    stub.fixed = 0.2 * e1 + e2  # generated faces now look like someone else: cos ≈ 0.2 < 0.5
    for step in range(3):
        batch, gen = _batch(tr, step)
        _, logs = tr.compute_loss(batch, gen)
    assert logs["sim_x0"] == pytest.approx(0.2 / math.sqrt(1.04), abs=1e-5)
    assert tr.ani.t_hi == 150
    stub.fixed = e1  # perfect identity: the range widens again
    for step in range(2):
        batch, gen = _batch(tr, step)
        tr.compute_loss(batch, gen)
    assert tr.ani.t_hi == 250


def test_zero_extra_weights_reproduce_stage1(tmp_path, data_dir, sd_base, sd_adapter):
    Trainer(_cfg(tmp_path / "s1", data_dir, sd_base, sd_adapter, cls=TrainConfig)).train()
    ica = _ica(lambda_id=0.0, lambda_exp=0.0, lambda_align=0.0)
    ICATrainer(_cfg(tmp_path / "s2", data_dir, sd_base, sd_adapter, ica=ica), face_models=StubFaceModels()).train()
    a = load_file(str(tmp_path / "s1" / "run" / "checkpoint-2" / TRAINABLE_FILE))
    b = load_file(str(tmp_path / "s2" / "run" / "checkpoint-2" / TRAINABLE_FILE))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(tmp_path, data_dir, sd_base, sd_adapter):
    kw = dict(gradient_accumulation_steps=2, max_steps=3, checkpointing_steps=2, ica=_ica())
    ICATrainer(_cfg(tmp_path / "a", data_dir, sd_base, sd_adapter, **kw), face_models=StubFaceModels()).train()
    half = {**kw, "max_steps": 2}
    ICATrainer(_cfg(tmp_path / "b", data_dir, sd_base, sd_adapter, **half), face_models=StubFaceModels()).train()
    rest = ICATrainer(_cfg(tmp_path / "b", data_dir, sd_base, sd_adapter, **kw), face_models=StubFaceModels())
    rest.train(resume="latest")
    run_a, run_b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    a, b = (
        load_file(str(run_a / "checkpoint-3" / TRAINABLE_FILE)),
        load_file(str(run_b / "checkpoint-3" / TRAINABLE_FILE)),
    )
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((run_a / "checkpoint-3" / STATE_FILE).read_text())["extra"]["ani"]
    sb = json.loads((run_b / "checkpoint-3" / STATE_FILE).read_text())["extra"]["ani"]
    assert sa == sb and sa["updates"] == 6
    mid = json.loads((run_a / "checkpoint-2" / STATE_FILE).read_text())["extra"]["ani"]
    assert mid["updates"] == 4


def test_ica_cli_and_config_errors(tmp_path, data_dir, sd_base, sd_adapter):
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, max_steps=1, ica=_ica()).to_dict()
    cfg["output_dir"] = "run"
    (tmp_path / "ica.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["ica", "--config", str(tmp_path / "ica.yaml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "adapter" / "emojidiff.json").is_file()
    state = json.loads((tmp_path / "run" / "checkpoint-1" / STATE_FILE).read_text())
    assert state["config"]["ica"]["lambda_align"] == 1.0 and state["extra"]["ani"]["updates"] == 1

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "ica": {**cfg["ica"], "lambda_idd": 1}}))
    res = CliRunner().invoke(main, ["ica", "--config", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 1 and "unknown ica setting(s) lambda_idd" in res.stderr
    with pytest.raises(InputError, match="ani_t_min <= ani_t_hi_min"):
        ICAConfig(**{**cfg, "ica": {"ani_t_hi_init": 10}}).validate()
    with pytest.raises(InputError, match="unknown ICA face models 'nope'"):
        get_face_models("nope")
    with pytest.raises(InputError, match="never the evaluation set"):
        get_face_models("synthetic", kind="eval")


def test_ibug_ratios_are_invariant_and_differentiable():
    g = torch.Generator().manual_seed(0)
    lm = (torch.rand(2, 68, 2, generator=g) * 100).requires_grad_(True)
    r = ibug68_ratios(lm)
    assert r.shape == (2, 8) and torch.isfinite(r).all()
    rot = torch.tensor([[0.8, -0.6], [0.6, 0.8]])
    moved = (lm @ rot.T) * 2.5 + torch.tensor([7.0, -3.0])
    assert torch.allclose(ibug68_ratios(moved), r, atol=1e-4)
    r.sum().backward()
    assert torch.isfinite(lm.grad).all() and lm.grad.abs().sum() > 0


def test_arcface_landmark_models_on_a_tiny_iresnet(tmp_path):
    from safetensors.torch import save_file

    from emojidiff.faces.iresnet import IResNet

    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1), num_features=16).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r.safetensors"))
    lmk = torch.jit.script(
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 136))
    )
    lmk.save(str(tmp_path / "lmk.pt"))
    fm = get_face_models("arcface-landmarks", recognizer=str(tmp_path / "r.safetensors"),
                         landmarks=str(tmp_path / "lmk.pt"), landmark_input_size=32)  # fmt: skip
    img = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    pts = torch.tensor([[[22.0, 26], [42, 26], [32, 36], [24, 46], [40, 46]]]).repeat(2, 1, 1)
    emb, exp = fm.identity(img, pts), fm.expression(img, pts)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert exp.shape == (2, 8)
    (emb.sum() + exp.sum()).backward()
    assert img.grad.abs().sum() > 0
    with pytest.raises(InputError, match="five landmark points"):
        fm.identity(img)


def test_shared_diffusion_pass_and_tiny_decoder(tmp_path, data_dir, sd_base, sd_adapter):
    from diffusers import AutoencoderTiny

    small = dict(
        encoder_block_out_channels=(8,) * 2,
        decoder_block_out_channels=(8,) * 2,
        num_encoder_blocks=(1,) * 2,
        num_decoder_blocks=(1,) * 2,
    )  # fmt: skip (2x, as the tiny VAE)
    AutoencoderTiny(**small).save_pretrained(tmp_path / "taesd")
    cfg = _cfg(tmp_path, data_dir, sd_base, sd_adapter, drop_identity=0, drop_expression=0, drop_all=0,
               ica=_ica(share_diffusion_pass=True, decoder=str(tmp_path / "taesd")))  # fmt: skip
    tr = ICATrainer(cfg, face_models=StubFaceModels())
    assert tr.tiny_decoder is not None
    assert tr.decode(torch.zeros(1, 4, 32, 32)).shape == (1, 3, 64, 64)
    batch, gen = _batch(tr)
    loss, logs = tr.compute_loss(batch, gen)
    loss.backward()
    assert all(math.isfinite(logs[k]) for k in ("loss_diffusion", "loss_id", "loss_exp", "loss_align"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params.values())
    AutoencoderTiny().save_pretrained(tmp_path / "taesd8")
    with pytest.raises(InputError, match="upsamples latents 8x, but the base VAE's factor is 2x"):
        ICATrainer(_cfg(tmp_path / "y", data_dir, sd_base, sd_adapter, ica=_ica(decoder=str(tmp_path / "taesd8"))),
                   face_models=StubFaceModels())  # fmt: skip
    with pytest.raises(InputError, match="is not a diffusers AutoencoderTiny"):
        ICATrainer(_cfg(tmp_path / "x", data_dir, sd_base, sd_adapter, ica=_ica(decoder=str(tmp_path / "nope"))),
                   face_models=StubFaceModels())  # fmt: skip


def test_ica_dataset_with_points_and_image_references(tmp_path, data_dir):
    from emojidiff.data import Triplet
    from emojidiff.faces.base import Face
    from emojidiff.ica.trainer import ICADataset

    class Analyzer:
        name = "pts"

        def detect(self, image):
            return [Face((8.0, 8.0, 56.0, 56.0), extra={"points5": [[22, 26], [42, 26], [32, 36], [24, 46], [40, 46]]})]

    class PointModels(StubFaceModels):
        needs_points = True

        def identity(self, images, points5=None):
            assert points5 is not None and points5.shape == (images.shape[0], 5, 2)
            return super().identity(images)

    class Base:
        triplets = [
            Triplet(f"{data_dir}/template0.png", [f"{data_dir}/target1.png", f"{data_dir}/id1.npy"],
                    f"{data_dir}/target0.png", "p", {"identity_id": "B"}),
            Triplet(f"{data_dir}/template1.png", [f"{data_dir}/id2.npy"], f"{data_dir}/target1.png", "p"),
        ]  # fmt: skip

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"prompt": "p"}

    models = PointModels()
    ds = ICADataset(Base(), models, Analyzer(), 64, tmp_path / "cache", show_progress=False)
    from emojidiff.data.dataset import target_pixels

    # references that are images are used as they are; embedding-only references fall back to the target
    same = models.identity(target_pixels(f"{data_dir}/target1.png", 64)[None], torch.zeros(1, 5, 2))[0]
    assert torch.allclose(ds[0]["id_ref"], same, atol=1e-5) and torch.allclose(ds[1]["id_ref"], same, atol=1e-5)
    assert ds[0]["points5"].shape == (5, 2) and ds[0]["identity_key"] == "B" and ds[1]["exp_ref"].shape == (3,)
    assert len(list((tmp_path / "cache" / "ica-points5").glob("*.safetensors"))) == 2


def test_example_config_parses():
    from pathlib import Path

    cfg = ICAConfig.from_yaml(Path(__file__).parent.parent / "configs" / "ica-sd15.yaml")
    assert cfg.ica.face_models["name"] == "arcface-landmarks" and cfg.ica.lambda_align == 0.1
    assert cfg.train_branches == ["identity", "expression"]


def test_synthetic_training_analysers_as_face_models():
    from emojidiff.errors import ModelMissingError

    try:
        fm = get_face_models("synthetic")
    except ModelMissingError:
        pytest.skip("the synthetic world's training analysers are not in this checkout")
    x = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    emb, exp = fm.identity(x), fm.expression(x)
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5) and exp.shape[0] == 2
    (emb.sum() + exp.sum()).backward()
    assert x.grad.abs().sum() > 0 and fm.name == "synthetic-train"
