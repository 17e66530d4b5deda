"""LMS ratios and metrics, and dlib identity on the two bundled photos (same person closer than different people)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from emojidiff.errors import InputError
from emojidiff.faces import geometry as g
from emojidiff.faces.expression import BLENDSHAPE_NAMES, LMS_KEYS, exp_error, landmark_ratios, lms_error
from emojidiff.faces.identity import identity_from_images


def test_ratios_invariant_to_similarity_and_responsive(ast_face):
    lm = ast_face.landmarks
    base = landmark_ratios(lm)
    assert tuple(base) == LMS_KEYS and all(np.isfinite(list(base.values())))
    t = np.radians(30)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    moved = landmark_ratios(2.5 * lm @ rot.T + 40)
    assert lms_error(base, moved) < 1e-9
    # open the mouth: move the lower inner lip down by 0.2 inter-ocular distances
    iod = np.linalg.norm(lm[list(g.EYE_R_CORNERS)].mean(0) - lm[list(g.EYE_L_CORNERS)].mean(0))
    opened = lm.copy()
    opened[g.LIP_INNER[1], 1] += 0.2 * iod
    r = landmark_ratios(opened)
    assert r["mouth_open"] - base["mouth_open"] == pytest.approx(0.2, abs=0.02)
    # raise the image-left brow; look to the image right with the image-left iris
    raised = lm.copy()
    raised[g.BROW_L, 1] -= 0.1 * iod
    raised[g.IRIS_L, 0] += 0.05 * iod
    r = landmark_ratios(raised)
    assert r["brow_raise_left"] - base["brow_raise_left"] == pytest.approx(0.1, abs=0.01)
    assert r["brow_raise_right"] == pytest.approx(base["brow_raise_right"])
    assert r["gaze_x_left"] > base["gaze_x_left"] + 0.1
    no_iris = landmark_ratios(lm[:468])
    assert np.isnan(no_iris["gaze_x_left"]) and no_iris["mouth_open"] == pytest.approx(base["mouth_open"], abs=0.02)


def test_lms_same_expression_closer_than_different(analyzer, astronaut, hopper, ast_face, hop_face):
    ast = analyzer.measure_expression(astronaut, ast_face)  # open smile
    hop = analyzer.measure_expression(hopper, hop_face)  # closed mouth
    flipped = ImageOps.mirror(astronaut)
    flip = analyzer.measure_expression(flipped, analyzer.detect(flipped)[0])
    assert ast["mouth_open"] > hop["mouth_open"] + 0.1 and ast["mouth_corner_lift"] > hop["mouth_corner_lift"]
    assert lms_error(ast, flip) < 0.5 * lms_error(ast, hop)


def test_metric_inputs():
    a = {k: 0.1 for k in LMS_KEYS}
    b = dict(a, mouth_open=0.7)
    assert lms_error(a, b) == pytest.approx(0.6 / len(LMS_KEYS))
    assert lms_error(list(a.values()), list(b.values())) == pytest.approx(lms_error(a, b))
    with pytest.raises(InputError, match="different lengths"):
        lms_error([0.1, 0.2], [0.1])
    bs_a = {n: 0.0 for n in BLENDSHAPE_NAMES}
    bs_b = dict(bs_a, jawOpen=0.52, mouthSmileLeft=0.52)
    assert len(BLENDSHAPE_NAMES) == 52
    assert exp_error(bs_a, bs_b) == pytest.approx(1.04 / 52)
    assert exp_error(np.zeros(52), np.full(52, 0.5)) == pytest.approx(0.5)
    with pytest.raises(InputError, match="no value in common"):
        exp_error({}, {})


@pytest.fixture(scope="module")
def variants(astronaut, hopper):
    return {
        "flip": ImageOps.mirror(astronaut),
        "crop": astronaut.crop((120, 30, 340, 260)),
        "rotate": astronaut.rotate(8, resample=Image.Resampling.BICUBIC).resize((384, 384)),
        "hopper_flip": ImageOps.mirror(hopper),
        "hopper_crop": hopper.crop((100, 80, 480, 500)),
    }


def test_dlib_identity_same_person_closer(analyzer, astronaut, hopper, ast_face, hop_face, variants):
    assert analyzer.identity_dim == 128 and analyzer.recognizer_name == "dlib-resnet-v1"
    e_ast = analyzer.identity_embedding(astronaut, ast_face)
    e_hop = analyzer.identity_embedding(hopper, hop_face)
    assert e_ast.shape == (128,) and abs(np.linalg.norm(e_ast) - 1) < 1e-5
    emb = {k: analyzer.identity_embedding(im, analyzer.detect(im)[0]) for k, im in variants.items()}
    different = float(e_ast @ e_hop)
    same_ast = [float(e_ast @ emb[k]) for k in ("flip", "crop", "rotate")]
    same_hop = [float(e_hop @ emb[k]) for k in ("hopper_flip", "hopper_crop")]
    cross = [float(e_hop @ emb[k]) for k in ("flip", "crop", "rotate")]
    thr = analyzer.recognizer.same_person_cosine
    assert min(same_ast + same_hop) > thr > max([different] + cross)
    # in dlib's own units (Euclidean distance of raw descriptors is about 1.46x the unit-vector distance)
    assert min(same_ast) > different + 0.05


def test_several_identity_photos_average_and_outlier(analyzer, astronaut, hopper, variants):
    res = identity_from_images(analyzer, [astronaut, variants["flip"], variants["rotate"]])
    assert res.outliers == [] and abs(np.linalg.norm(res.embedding) - 1) < 1e-5
    assert res.recognizer == "dlib-resnet-v1" and res.per_photo.shape == (3, 128)
    res = identity_from_images(analyzer, [astronaut, variants["flip"], hopper, variants["crop"]], drop_outliers=True)
    assert res.outliers == [2]
    assert "disagrees" in res.report()[2]
    assert float(res.embedding @ res.per_photo[2]) < float(res.embedding @ res.per_photo[0])


def test_identity_from_files_and_bad_file(analyzer, astronaut, tmp_path):
    p = tmp_path / "me.png"
    astronaut.save(p)
    res = identity_from_images(analyzer, [p])
    assert res.names == [str(p)] and res.outliers == []
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        identity_from_images(analyzer, [p, bad])
