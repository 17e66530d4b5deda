"""The shipped analysers: protocol, render -> analyse round trips close to the truth, differentiability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emojidiff.faces import FaceAnalyzer, get_face_analyzer
from emojidiff.synthetic import TEMPLATES, Identity, Portrait, Style, face_geometry, render
from emojidiff.synthetic.base_model import ANALYSERS_DIR
from emojidiff.synthetic.factors import EXPRESSION_RANGES
from emojidiff.synthetic.render import RATIO_NAMES

pytestmark = pytest.mark.skipif(
    not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analyser weights are absent"
)

HELD_OUT = [1_000_003, 1_000_017, 1_000_042, 1_000_099]
CASES = ["smile", "surprise", "wink_left", "frown", "sceptical", "neutral", "grin", "sleepy"]


def _portraits():
    styles = [
        Style("blue", "flat"),
        Style("green", "shaded", glasses="round"),
        Style("pink", "sketch"),
        Style("orange", "flat", "pastel", hat="red"),
    ]
    return [
        Portrait(iid, Identity.from_id(iid), TEMPLATES[name], styles[k % len(styles)])
        for k, (iid, name) in enumerate(zip(HELD_OUT * 2, CASES, strict=True))
    ]


@pytest.mark.parametrize("backend", ["synthetic", "synthetic-eval"])
def test_protocol_and_round_trip(backend):
    fa = get_face_analyzer(backend)
    assert isinstance(fa, FaceAnalyzer) and fa.name == backend and fa.identity_dim == 512
    errs = []
    for p in _portraits():
        img = render(p, 64)
        faces = fa.detect(img)
        assert len(faces) == 1 and faces[0].score > 0.5
        truth = face_geometry(p, 64)
        assert np.abs(np.array(faces[0].box) - np.array(truth["box"])).max() < 4.0  # pixels at 64 px
        got = fa.measure_expression(img, faces[0])
        assert {f"ratio_{n}" for n in RATIO_NAMES} <= set(got)
        for name, lo, hi in EXPRESSION_RANGES:
            if name.startswith("gaze") and max(p.expression.eye_open_l, p.expression.eye_open_r) < 0.3:
                continue  # gaze is invisible with both eyes closed
            errs.append(abs(got[name] - getattr(p.expression, name)) / (hi - lo))
        emb = fa.identity_embedding(img, faces[0])
        assert emb.shape == (512,) and abs(np.linalg.norm(emb) - 1) < 1e-4
    assert np.mean(errs) < 0.05 and np.max(errs) < 0.3


@pytest.mark.parametrize("backend", ["synthetic", "synthetic-eval"])
def test_identity_separates_people_across_expressions_and_styles(backend):
    fa = get_face_analyzer(backend)
    ps = _portraits()
    embs = np.stack([fa.identity_embedding(render(p, 64), None) for p in ps])
    sims = embs @ embs.T
    same = [sims[i, i + 4] for i in range(4)]  # same person, other expression and style
    diff = [sims[i, j] for i in range(4) for j in range(4) if i != j]
    assert min(same) > max(diff) - 0.05 and np.mean(same) > np.mean(diff) + 0.3


def test_non_faces_are_rejected_and_crops_are_masked():
    fa = get_face_analyzer("synthetic")
    rng = np.random.default_rng(0)
    noise = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    assert fa.detect(noise) == []
    blank = Image.new("RGB", (64, 64), (80, 120, 200))
    assert fa.detect(blank) == []
    img = render(_portraits()[0], 128)
    face = fa.detect(img)[0]
    crop = np.asarray(fa.expression_crop(img, face))
    assert crop.shape[0] == crop.shape[1] and crop[:4, :4].max() == 0  # outside the face ellipse is black
    mask = fa.face_mask(img, face)
    assert mask.shape == (128, 128) and mask[64, 64] == 1.0 and mask[0, 0] == 0.0


def test_torch_entry_points_are_differentiable():
    from emojidiff.synthetic.analysers import SyntheticAnalysers, pil_to_tensor

    nets = SyntheticAnalysers("train")
    x = torch.cat([pil_to_tensor(render(p, 96)) for p in _portraits()[:2]]).requires_grad_(True)
    e = nets.expression(x)
    assert e.shape == (2, 13)
    (e.sum() + nets.identity(x).sum() + nets.ratios(x).sum() + nets.presence(x).sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in nets.parameters())


def test_eval_set_is_independent():
    from emojidiff.synthetic.analysers import SyntheticAnalysers

    a, b = SyntheticAnalysers("train"), SyntheticAnalysers("eval")
    assert a.config["identity_arch"] != b.config["identity_arch"]
    assert a.config["identity_ids"] != b.config["identity_ids"]


def test_gaze_weight_scales_only_the_gaze_terms_of_the_face_loss():
    from emojidiff.synthetic.nets import FaceNet
    from emojidiff.synthetic.render import render_array
    from emojidiff.synthetic.train_analysers import _to_tensor, face_loss, face_targets

    torch.manual_seed(0)
    net = FaceNet("plain").eval()
    ps = _portraits()
    x = _to_tensor(render_array(ps, 64))
    s, t = torch.ones(len(ps)), torch.zeros(len(ps), 2)
    with torch.no_grad():
        loss = {w: face_loss(net, x, face_targets(ps), s, t, len(ps), gaze_weight=w).item() for w in (0.0, 1.0, 3.0)}
    assert loss[1.0] > loss[0.0]  # an untrained net misreads gaze
    assert loss[3.0] - loss[1.0] == pytest.approx(2 * (loss[1.0] - loss[0.0]), rel=1e-4)


def test_retrained_analysers_change_the_encoding_cache_key(tmp_path):
    import shutil
    from types import SimpleNamespace

    from emojidiff.data.dataset import encoder_tag
    from emojidiff.synthetic.analysers import SyntheticFaceAnalyzer

    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    shipped, copy = SyntheticFaceAnalyzer("train"), SyntheticFaceAnalyzer("train", tmp_path / "train")
    assert shipped.fingerprint == copy.fingerprint
    encoder = SimpleNamespace(
        config=SimpleNamespace(to_json_string=lambda: "{}"), state_dict=lambda: {"w": torch.ones(2)}
    )

    def tag(fa):
        return encoder_tag(SimpleNamespace(config=SimpleNamespace(image_encoder_layer=-2, identity_dim=512),
                                           image_encoder=encoder, face_analyzer=fa))  # fmt: skip

    assert tag(shipped) == tag(copy)
    shutil.copy(ANALYSERS_DIR / "eval" / "face.safetensors", tmp_path / "train" / "face.safetensors")  # "retrained"
    assert copy.fingerprint != shipped.fingerprint and tag(copy) != tag(shipped)


def test_face_training_data_does_not_depend_on_render_workers():
    """Batches rendered by worker processes are the ones rendered here, in order, so a run on a GPU machine with
    many render workers trains on the same data as one on a laptop."""
    from emojidiff.synthetic.nets import FaceNet
    from emojidiff.synthetic.train_analysers import AnalyserTrainConfig, rendered_batches, train_face

    draws = [_portraits()[k : k + 3] for k in range(0, 8, 3)]
    here = list(rendered_batches(iter(draws), workers=0))
    pooled = list(rendered_batches(iter(draws), workers=2, ahead=1))
    assert [p for p, _ in pooled] == draws
    for (_, a), (_, b) in zip(here, pooled, strict=True):
        assert torch.equal(a, b)

    nets = []
    for workers in (0, 1):
        cfg = AnalyserTrainConfig(face_steps=2, face_batch=8, render_workers=workers)
        torch.manual_seed(0)
        nets.append(train_face(cfg, log=lambda _: None, init=FaceNet("plain"), round_=1))
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_shipped_style_classifier_reads_held_out_renders(tmp_path):
    """The eval style judge (prompt_acc, style_leakage, the base's style words) reads every word of held-out renders,
    clean and through the shipped base's VAE round trip (what generated images look like at best)."""
    import json

    from click.testing import CliRunner

    from emojidiff.cli import main
    from emojidiff.synthetic.style import STYLE_HEADS

    torch.set_num_threads(1)
    out = tmp_path / "style.json"
    res = CliRunner().invoke(main, ["world", "bench", "--what", "style", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())["style"]
    assert figures["n"] == 500
    for reading in ("accuracy_on_renders", "accuracy_on_vae_round_trips"):
        assert set(figures[reading]) == set(STYLE_HEADS)
        for word, acc in figures[reading].items():
            assert acc >= 0.95, (reading, word, acc)  # the 400-step judge read glasses 0.86 / 0.85
