"""Part heads: landmark crops (geometry, mirroring, gradients), a face net with heads starting exactly where the
face net alone reads, and training them on a copy of a shipped set that the analysers then load."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from emojidiff.synthetic import TEMPLATES, Identity, Portrait, Style, face_geometry
from emojidiff.synthetic.base_model import ANALYSERS_DIR
from emojidiff.synthetic.factors import EXPRESSION_NAMES
from emojidiff.synthetic.nets import PART_SIZE, FaceNet, part_crops, saved_parts_arch
from emojidiff.synthetic.render import render_array
from emojidiff.synthetic.train_analysers import _to_tensor


def _portrait(name: str = "surprise") -> Portrait:
    return Portrait(1_000_003, Identity.from_id(1_000_003), TEMPLATES[name], Style("blue", "flat"))


def test_crops_cut_the_parts_around_the_landmarks_and_mirror_the_right_eye():
    # a left-right symmetric image with symmetric landmarks: the mirrored right-eye crop is the left-eye crop
    x = torch.rand(2, 3, 64, 64)
    x = (x + x.flip(-1)) / 2
    lmk = torch.tensor([[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.4, 0.72], [0.6, 0.72]]).expand(2, 5, 2)
    c = part_crops(x, lmk)
    assert c.shape == (2, 3, 3, PART_SIZE, PART_SIZE)
    assert torch.allclose(c[:, 0], c[:, 1], atol=1e-5)
    assert torch.allclose(c[:, 2], c[:, 2].flip(-1), atol=1e-5)  # the mouth crop is centred
    # a dark dot at a rendered portrait's true left-eye centre lands in the left crop, not the right one
    p = _portrait()
    img = _to_tensor(render_array([p], 64))
    lm = torch.tensor(face_geometry(p, 64)["landmarks"])[None] / 64
    marked = img.clone()
    ex, ey = (lm[0, 0] * 64).long().tolist()
    marked[:, :, ey - 1 : ey + 2, ex - 1 : ex + 2] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    diff = (part_crops(marked, lm) - part_crops(img, lm)).abs().sum(dim=(2, 3, 4))[0]
    assert diff[0] > 1.0 and diff[1] == 0 and diff[2] == 0


def test_crops_are_differentiable_in_images_and_landmarks():
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lmk = torch.tensor([[[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.4, 0.72], [0.6, 0.72]]], requires_grad=True)
    part_crops(x, lmk).square().sum().backward()
    assert x.grad.abs().sum() > 0 and lmk.grad.abs().sum() > 0


def test_untrained_part_heads_leave_the_face_nets_reading_unchanged():
    torch.manual_seed(0)
    plain = FaceNet("res").eval()
    with_parts = FaceNet("res", parts=True).eval()
    missing, unexpected = with_parts.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("parts.") for k in missing)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), with_parts(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_trained_part_heads_are_saved_recorded_and_loaded(tmp_path):
    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.train_analysers import train_parts

    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    before = len(json.loads((tmp_path / "train" / "config.json").read_text()).get("face_parts_train", []))
    logs: list[str] = []
    info = train_parts(tmp_path, "train", steps=3, batch=8, lr=1e-2, log=logs.append, eval_n=16)
    saved = json.loads((tmp_path / "train" / "config.json").read_text())
    assert saved["face_parts"] is True and len(saved["face_parts_train"]) == before + 1 == len(info["face_parts_train"])
    assert saved["face_parts_train"][-1]["steps"] == 3 and saved["heldout_face"]["n"] == 16
    assert any("[train parts] step 2/3" in m for m in logs)

    shipped, refined = SyntheticAnalysers("train"), SyntheticAnalysers("train", tmp_path / "train")
    assert refined.face_net.parts is not None
    x = _to_tensor(render_array([_portrait(n) for n in ("smile", "wink_left")], 64))
    with torch.no_grad():
        a, b = shipped.face(x), refined.face(x)
    assert torch.allclose(a["landmarks"], b["landmarks"], atol=1e-3)  # the whole-face net stayed frozen
    assert not torch.allclose(a["expression"], b["expression"], atol=1e-4)  # the heads now correct it
    x.requires_grad_(True)
    refined.expression(x).sum().backward()
    assert np.isfinite(x.grad.numpy()).all() and x.grad.abs().sum() > 0

    train_parts(tmp_path, "train", steps=2, batch=8, log=lambda _: None, eval_n=16)  # continues the saved heads
    assert len(json.loads((tmp_path / "train" / "config.json").read_text())["face_parts_train"]) == before + 2


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_part_heads_of_another_architecture_replace_the_saved_ones(tmp_path):
    from emojidiff.synthetic.analysers import SyntheticAnalysers
    from emojidiff.synthetic.train_analysers import train_parts

    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    old = json.loads((tmp_path / "train" / "config.json").read_text())
    assert saved_parts_arch(old) != "spatial"
    train_parts(tmp_path, "train", steps=2, batch=8, log=lambda _: None, eval_n=16, arch="spatial")
    saved = json.loads((tmp_path / "train" / "config.json").read_text())
    assert saved["face_parts_arch"] == "spatial"
    # the replaced heads' record is kept apart; the new heads' history starts over, on the first round's draws
    replaced = {"arch": saved_parts_arch(old), "train": old["face_parts_train"]}
    assert saved["face_parts_replaced"] == [*old.get("face_parts_replaced", []), replaced]
    assert [r["round"] for r in saved["face_parts_train"]] == [100]
    spatial = SyntheticAnalysers("train", tmp_path / "train").face_net
    assert spatial.parts.arch == "spatial"
    assert isinstance(spatial.parts.eye[6], torch.nn.Identity)  # no average over the last map
    shipped = SyntheticAnalysers("train").face_net
    for k, v in shipped.state_dict().items():  # the whole-face net is the shipped one
        if not k.startswith("parts."):
            assert torch.equal(v, spatial.state_dict()[k]), k
    train_parts(tmp_path, "train", steps=1, batch=8, log=lambda _: None, eval_n=16)  # continues the spatial heads
    again = json.loads((tmp_path / "train" / "config.json").read_text())
    assert again["face_parts_arch"] == "spatial" and len(again["face_parts_train"]) == 2
    assert again["face_parts_replaced"] == saved["face_parts_replaced"]
    with pytest.raises(ValueError, match="part-head architecture 'wide'"):
        FaceNet("plain", parts=True, parts_arch="wide")


def test_part_targets_read_the_right_eye_as_a_mirrored_left_one():
    from emojidiff.synthetic.factors import Expression
    from emojidiff.synthetic.nets import EYE_FACTORS, MOUTH_FACTORS, N_PART_OUT, part_targets

    e = Expression(eye_open_l=0.2, eye_open_r=0.9, brow_tilt_r=0.5, gaze_x=0.7, gaze_y=-0.3, pout=0.4)
    v = torch.tensor(np.array([e.to_vector()]), dtype=torch.float32)
    t, w = part_targets(v)[0], part_targets(v, signed=False)[0]
    assert t.shape == (N_PART_OUT,) and len(EYE_FACTORS) == 6
    left, right, mouth = t[:6].tolist(), t[6:12].tolist(), t[12:].tolist()
    assert left[:5] == pytest.approx([0.2, 0.0, 0.0, 0.7, -0.3])
    assert right[:5] == pytest.approx([0.9, 0.0, 0.5, -0.7, -0.3])  # seen mirrored: gaze x flips
    assert mouth[MOUTH_FACTORS.index("pout")] == pytest.approx(0.4)
    assert w[6 + EYE_FACTORS.index("gaze_x")] == pytest.approx(0.7)  # weights keep their sign
    mirrored = torch.tensor(np.array([e.mirrored().to_vector()]), dtype=torch.float32)
    assert torch.allclose(part_targets(mirrored)[0, :6], t[6:12])  # the mirrored face's left eye is this right eye


def test_zoom_heads_read_each_eye_again_closer_and_start_at_zero():
    from emojidiff.synthetic.nets import N_PART_OUT, ZOOM_FACTORS, part_targets

    x = torch.rand(2, 3, 64, 64)
    x = (x + x.flip(-1)) / 2
    lmk = torch.tensor([[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.4, 0.72], [0.6, 0.72]]).expand(2, 5, 2)
    c = part_crops(x, lmk, zoom=True)
    assert c.shape == (2, 5, 3, PART_SIZE, PART_SIZE)
    assert torch.equal(c[:, :3], part_crops(x, lmk))  # the first three crops are the usual ones
    assert torch.allclose(c[:, 3], c[:, 4], atol=1e-5)  # the right eye mirrored, as in the eye crops
    # a dot at a rendered portrait's left-eye centre fills more of the close crop than of the eye crop
    p = _portrait()
    img = _to_tensor(render_array([p], 64))
    lm = torch.tensor(face_geometry(p, 64)["landmarks"])[None] / 64
    marked = img.clone()
    ex, ey = (lm[0, 0] * 64).long().tolist()
    marked[:, :, ey : ey + 2, ex : ex + 2] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    changed = ((part_crops(marked, lm, zoom=True) - part_crops(img, lm, zoom=True)).abs().sum(2) > 0.1).sum((2, 3))
    assert changed[0, 3] > 2 * changed[0, 0] > 0 and changed[0, 4] == 0
    # targets: the usual layout, then each eye's opening and gaze (the right one's gaze x negated)
    v = torch.linspace(-1, 1, 13)[None]
    t = part_targets(v, zoom=True)[0]
    assert t.shape == (N_PART_OUT + 2 * len(ZOOM_FACTORS),) and torch.equal(t[:N_PART_OUT], part_targets(v)[0])
    from emojidiff.synthetic.factors import EXPRESSION_NAMES

    i = EXPRESSION_NAMES.index
    assert t[N_PART_OUT:].tolist() == [
        v[0, i("eye_open_l")].item(), v[0, i("gaze_x")].item(), v[0, i("gaze_y")].item(),
        v[0, i("eye_open_r")].item(), -v[0, i("gaze_x")].item(), v[0, i("gaze_y")].item(),
    ]  # fmt: skip
    torch.manual_seed(0)
    plain, zoom = FaceNet("plain").eval(), FaceNet("plain", parts=True, parts_arch="zoom").eval()
    zoom.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        raw, parts = zoom.raw_and_parts(x)
        assert torch.equal(raw, plain.raw(x)) and parts.shape == (2, zoom.parts.n_out)


def test_soft_argmax_finds_sub_pixel_positions_and_passes_gradients():
    from emojidiff.synthetic.nets import SpatialSoftArgmax

    sam = SpatialSoftArgmax(2)
    f = torch.full((1, 2, 5, 7), -30.0)
    f[0, 0, 1, 6] = 30.0  # one sharp peak: that pixel's centre, in [-1, 1] map coordinates
    f[0, 1, 3, 2] = f[0, 1, 3, 3] = 30.0  # two equal peaks side by side: halfway between their centres
    xy = sam(f)[0]
    assert torch.allclose(xy, torch.tensor([6 / 7, 2.5 * 2 / 7 - 1 + 1 / 7, -0.4, 0.4]), atol=1e-5)
    # a peak moving a tenth of a pixel moves the reading (what pooled features lose)
    yy = torch.arange(9.0)[:, None]
    xx = torch.arange(9.0)[None, :]
    reads = [SpatialSoftArgmax(1)(-((yy - c) ** 2 + (xx - 4) ** 2).view(1, 1, 9, 9))[0, 1] for c in (4.0, 4.1)]
    assert 0.015 < (reads[1] - reads[0]).item() < 0.03  # 0.1 px of 9 px in a [-1, 1] span: 0.022
    f = torch.randn(2, 2, 6, 6, requires_grad=True)
    sam(f).sum().backward()
    assert f.grad.abs().sum() > 0 and sam.log_sharpness.grad is not None


def test_keypoint_heads_are_zoom_heads_with_positions_and_start_at_zero():
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    plain = FaceNet("plain").eval()
    kp, zoom = (FaceNet("plain", parts=True, parts_arch=a).eval() for a in ("keypoint", "zoom"))
    kp.load_state_dict(plain.state_dict(), strict=False)
    assert kp.parts.n_out == zoom.parts.n_out and kp.parts.zoom is not None
    with torch.no_grad():
        raw, parts = kp.raw_and_parts(x)
        assert torch.equal(raw, plain.raw(x)) and parts.shape == (2, kp.parts.n_out)
    assert any(k.startswith("parts.zoom.keypoints.") for k in kp.state_dict())
    assert not any("keypoints" in k for k in zoom.state_dict())
    with pytest.raises(ValueError, match="part-head architecture 'nope' is not one of"):
        FaceNet("plain", parts=True, parts_arch="nope")


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_part_head_draws_can_be_sketched_more_often(tmp_path, monkeypatch):
    from emojidiff.synthetic import train_analysers as ta

    seen: list = []

    def capture(draws, workers=0):
        for ps, x in real(draws, workers):
            seen.append(ps)
            yield ps, x

    real = ta.rendered_batches
    monkeypatch.setattr(ta, "rendered_batches", capture)
    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "a" / "train")
    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "b" / "train")
    ta.train_parts(tmp_path / "a", "train", steps=1, batch=16, log=lambda _: None, eval_n=16)
    ta.train_parts(tmp_path / "b", "train", steps=1, batch=16, log=lambda _: None, eval_n=16, sketch_prob=1.0)
    plain, sketched = seen
    assert {p.style.shading for p in plain} != {"sketch"} and {p.style.shading for p in sketched} == {"sketch"}
    # nothing else about the draws changes
    assert [(p.identity_id, p.expression) for p in plain] == [(p.identity_id, p.expression) for p in sketched]
    saved = json.loads((tmp_path / "b" / "train" / "config.json").read_text())
    assert saved["face_parts_train"][-1]["sketch_prob"] == 1.0
    unsketched = json.loads((tmp_path / "a" / "train" / "config.json").read_text())
    assert "sketch_prob" not in unsketched["face_parts_train"][-1]
    with pytest.raises(ValueError, match="sketch_prob must be within 0..1, got 1.5"):
        ta.train_parts(tmp_path / "b", "train", steps=1, batch=8, log=lambda _: None, sketch_prob=1.5)


def _record_vae_round_trips(monkeypatch, bench) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Make ``bench.vae_round_trip`` record each call's images and what came back."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = bench.vae_round_trip

    def recording(vae, x, batch=50):
        out = real(vae, x, batch)
        calls.append((x.clone(), out.clone()))
        return out

    monkeypatch.setattr(bench, "vae_round_trip", recording)
    return calls


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_part_head_renders_can_go_through_the_base_vae_first(tmp_path, monkeypatch):
    from emojidiff.synthetic import bench
    from emojidiff.synthetic.train_analysers import train_parts

    calls = _record_vae_round_trips(monkeypatch, bench)
    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    train_parts(tmp_path, "train", steps=2, batch=16, log=lambda _: None, eval_n=16, vae_prob=0.5)
    assert all(out.shape == x.shape and not torch.equal(out, x) for x, out in calls)
    sent = [len(x) for x, _ in calls]
    assert len(sent) == 2 and 0 < sum(sent) < 32  # about half of each batch, drawn per render
    rec = json.loads((tmp_path / "train" / "config.json").read_text())["face_parts_train"][-1]
    assert rec["vae_prob"] == 0.5 and rec["vae_base"] == "shipped"
    with pytest.raises(ValueError, match="vae_prob must be within 0..1, got -0.1"):
        train_parts(tmp_path, "train", steps=1, batch=8, log=lambda _: None, vae_prob=-0.1)


def test_step_seeded_draws_depend_on_the_step_not_on_the_workers():
    from emojidiff.synthetic.train_analysers import _run_ahead, step_seeded_draw

    args = [("train", 104, s, 4, 0.6) for s in (0, 1, 0)]
    here = [r for _, r in _run_ahead(step_seeded_draw, iter(args), workers=0)]
    spawned = [r for _, r in _run_ahead(step_seeded_draw, iter(args), workers=1)]
    for (xa, ea), (xb, eb) in zip(here, spawned, strict=True):
        assert xa.shape == (4, 3, 64, 64) and ea.shape == (4, len(EXPRESSION_NAMES))
        assert torch.equal(xa, xb) and torch.equal(ea, eb)
    assert torch.equal(here[0][0], here[2][0]) and not torch.equal(here[0][1], here[1][1])  # the step is the seed
    other_round = step_seeded_draw("train", 105, 0, 4, 0.6)[1]
    assert not torch.equal(here[0][1], other_round)
    sketched = step_seeded_draw("train", 104, 0, 4, 0.6, sketch_prob=1.0)[0]
    assert not torch.equal(sketched, here[0][0])


def test_cosine_lr_can_continue_a_schedule_begun_by_an_earlier_run():
    from emojidiff.synthetic.train_analysers import _cosine_lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _cosine_lr(opt, 50, 100, 2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # halfway down one cosine
    _cosine_lr(opt, 50, 100, 2.0, warmup=10, start=50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # a run starting there warms up to it again
    _cosine_lr(opt, 59, 100, 2.0, warmup=10, start=50)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 + math.cos(math.pi * 0.59))


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_part_heads_can_train_on_renders_paired_with_vae_round_trips(tmp_path, monkeypatch):
    from emojidiff.synthetic import bench
    from emojidiff.synthetic.train_analysers import train_parts

    calls = _record_vae_round_trips(monkeypatch, bench)
    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    kw = {"batch": 8, "log": lambda _: None, "eval_n": 16}
    train_parts(tmp_path, "train", steps=2, vae_pairs=True, step_seeded=True, schedule=(4, 10), **kw)
    assert [len(x) for x, _ in calls] == [8, 8]  # every render, every step
    rec = json.loads((tmp_path / "train" / "config.json").read_text())["face_parts_train"][-1]
    assert rec["vae_pairs"] is True and rec["schedule"] == [4, 10] and rec["step_seeded"] is True
    assert rec["steps"] == 2 and "planned_steps" not in rec and rec["device"] == "cpu"
    with pytest.raises(ValueError, match="vae_pairs and vae_prob are two ways"):
        train_parts(tmp_path, "train", steps=1, vae_pairs=True, vae_prob=0.5, **kw)
    with pytest.raises(ValueError, match=r"schedule \(9, 10\) does not hold steps 9..11"):
        train_parts(tmp_path, "train", steps=2, schedule=(9, 10), **kw)


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_part_training_stops_at_its_time_limit_and_saves_what_it_has(tmp_path):
    from emojidiff.synthetic.train_analysers import train_parts

    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    logs: list[str] = []
    train_parts(tmp_path, "train", steps=5, batch=8, log=logs.append, eval_n=16, max_seconds=0.0)
    rec = json.loads((tmp_path / "train" / "config.json").read_text())["face_parts_train"][-1]
    assert rec["steps"] == 0 and rec["planned_steps"] == 5
    assert any("stopped after 0 of 5 steps: --part-max-seconds 0 passed" in m for m in logs)


@pytest.mark.skipif(not (ANALYSERS_DIR / "train" / "config.json").is_file(), reason="shipped analysers are absent")
def test_gpu_part_heads_script_runs_a_share_of_a_schedule_on_the_cpu(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_part_heads.sh"
    shutil.copytree(ANALYSERS_DIR / "train", tmp_path / "train")
    env = {**os.environ, "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its python3: this one
    done = subprocess.run(
        ["bash", str(script), str(tmp_path), "2", "6", "2", "120", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 2..4 of 6" in (tmp_path / "plan.txt").read_text()
    rec = json.loads((tmp_path / "train" / "config.json").read_text())["face_parts_train"][-1]
    assert rec["steps"] == 2 and rec["schedule"] == [2, 6] and rec["vae_pairs"] is True
    assert rec["step_seeded"] is True and rec["aug_strength"] == 0.0 and rec["uniform_prob"] == 0.6
    assert "[train parts] step 1/2" in (tmp_path / "train.log").read_text()
