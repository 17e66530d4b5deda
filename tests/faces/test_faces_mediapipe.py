"""MediaPipe backend on real photos: detection, multi-face policy, landmarks, masks, crops, pose, bad faces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from emojidiff.errors import InputError, NoFaceError
from emojidiff.faces import geometry as g
from emojidiff.faces.base import select_face


def test_single_face_each_photo(analyzer, astronaut, hopper):
    for img, (cx, cy) in [(astronaut, (225, 130)), (hopper, (268, 244))]:
        faces = analyzer.detect(img)
        assert len(faces) == 1
        f = faces[0]
        x0, y0, x1, y1 = f.box
        assert f.score > 0.85 and x0 < cx < x1 and y0 < cy < y1 and 80 < f.size < 260
        assert f.landmarks.shape == (478, 2) and f.extra["landmarks3d"].shape == (478, 3)
        # landmarks lie on the face: the nose tip inside the box, all points near it
        nx, ny = f.landmarks[g.NOSE_TIP]
        assert x0 < nx < x1 and y0 < ny < y1
        assert f.extra["warnings"] == []


def test_no_face(analyzer, gray_canvas):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    for img in (gray_canvas(320, 240), noise):
        faces = analyzer.detect(img)
        assert faces == []
        with pytest.raises(NoFaceError, match="no face found in template 'x.png'"):
            select_face(faces, "template 'x.png'")


def test_several_faces_best_first_and_index(analyzer, astronaut, hopper, gray_canvas):
    canvas = gray_canvas(1124, 600)
    canvas.paste(astronaut.resize((400, 400)), (0, 100))  # face about 75 px
    canvas.paste(hopper, (500, 0))  # face about 200 px
    faces = analyzer.detect(canvas)
    assert len(faces) == 2
    assert faces[0].box[0] > 500 and faces[1].box[0] < 400  # best (confident, largest) first: Grace Hopper
    assert all(f.landmarks is not None for f in faces)
    assert select_face(faces, "img") is faces[0] and select_face(faces, "img", 1) is faces[1]
    with pytest.raises(InputError, match=r"face index 5 is out of range .*2 face\(s\) found"):
        select_face(faces, "img", 5)


def test_tiny_face_warns(analyzer, astronaut, gray_canvas):
    canvas = gray_canvas(400, 400, 120)
    canvas.paste(astronaut.resize((154, 154)), (120, 120))  # face ~28 px
    faces = analyzer.detect(canvas)
    assert len(faces) == 1 and faces[0].size < 40
    assert any("small face" in w for w in faces[0].extra["warnings"])
    from emojidiff.faces.mediapipe_backend import FaceQualityWarning

    with pytest.warns(FaceQualityWarning, match="small face"):
        analyzer.expression_crop(canvas, faces[0])


def test_too_tiny_face_is_no_face(analyzer, astronaut, gray_canvas):
    canvas = gray_canvas(400, 400, 120)
    canvas.paste(astronaut.resize((60, 60)), (170, 170))  # face ~11 px
    assert analyzer.detect(canvas) == []


def test_head_pose_frontal_and_extreme(ast_face, hop_face):
    for f in (ast_face, hop_face):
        pose = f.extra["pose"]
        assert abs(pose["yaw"]) < 12 and abs(pose["pitch"]) < 12 and abs(pose["roll"]) < 10
    # turn the astronaut's 3-D landmarks by 60° about the vertical axis: the estimate must follow
    lm = ast_face.extra["landmarks3d"].copy()
    c = lm.mean(0)
    yaws = []
    for deg in (60, -60):
        t = np.radians(deg)
        rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
        yaws.append(g.head_pose((lm - c) @ rot.T + c)["yaw"])
    assert all(abs(abs(y) - 60) < 12 for y in yaws) and yaws[0] * yaws[1] < 0


def test_extreme_pose_warns(analyzer, astronaut, monkeypatch):
    from emojidiff.faces import mediapipe_backend as mb

    monkeypatch.setattr(mb.g, "head_pose", lambda lm: {"yaw": 70.0, "pitch": 0.0, "roll": 0.0})
    face = analyzer.detect(astronaut)[0]
    assert any("extreme head pose (yaw +70" in w for w in face.extra["warnings"])
    with pytest.warns(mb.FaceQualityWarning, match="extreme head pose"):
        analyzer.measure_expression(astronaut, face)


def test_flipped_photo_mirrors_yaw_and_roll(analyzer, astronaut, ast_face):
    flipped = analyzer.detect(ImageOps.mirror(astronaut))[0]
    assert abs(flipped.extra["pose"]["roll"] + ast_face.extra["pose"]["roll"]) < 3


def test_face_mask_covers_face_not_hair_neck_background(analyzer, astronaut, ast_face):
    m = analyzer.face_mask(astronaut, ast_face)
    assert m.shape == (512, 512) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    lm = ast_face.landmarks
    for idx in (g.NOSE_TIP, g.IRIS_L, g.IRIS_R, g.LIP_INNER[0], 152 - 100):  # nose, eyes, mouth, cheek
        x, y = lm[idx]
        assert m[int(y), int(x)] > 0.9
    x0, y0, x1, y1 = ast_face.box
    assert m[int(y0) - 25, int((x0 + x1) / 2)] == 0  # hair above the forehead
    chin = lm[g.CHIN]
    assert m[int(chin[1]) + 25, int(chin[0])] == 0  # neck below the chin
    assert m[5, 5] == 0 and m[500, 500] == 0  # background
    area = float(m.sum())
    assert 0.5 * (x1 - x0) * (y1 - y0) < area < 1.3 * (x1 - x0) * (y1 - y0)


def test_expression_crop_aligned_and_masked(analyzer, astronaut, ast_face):
    crop = analyzer.expression_crop(astronaut, ast_face)
    assert crop.size == (g.EXPRESSION_CROP_SIZE, g.EXPRESSION_CROP_SIZE) and crop.mode == "RGB"
    a = np.asarray(crop, dtype=int)
    assert a[:8, :8].max() == 0 and a[-8:, -8:].max() == 0  # outside the face: filled
    # the face's 5 points land on the template (least squares: eyes within a few pixels, mouth and nose looser)
    m = g.expression_transform(g.five_points(ast_face.landmarks))
    moved = g.apply_transform(m, g.five_points(ast_face.landmarks))
    err = np.abs(moved - g.expression_template())
    assert err[:2].max() < 7 and err.max() < 20
    # eyes are level after alignment even when the photo is rotated
    rotated = astronaut.rotate(15, resample=Image.Resampling.BICUBIC)
    f = analyzer.detect(rotated)[0]
    pts = g.apply_transform(g.expression_transform(g.five_points(f.landmarks)), g.five_points(f.landmarks))
    assert abs(pts[0, 1] - pts[1, 1]) < 3
    mask = analyzer.expression_crop_mask(ast_face)
    assert mask.shape == (256, 256) and mask[128, 128] > 0.99 and mask[2, 2] == 0
    unmasked = analyzer.expression_crop(astronaut, ast_face, masked=False)
    assert np.asarray(unmasked)[:8, :8].max() > 0


def test_arcface_crop(analyzer, astronaut, ast_face):
    crop = analyzer.arcface_crop(astronaut, ast_face)
    assert crop.size == (112, 112)
    # re-detecting on the (upscaled) crop finds the eyes where the template puts them
    big = crop.resize((448, 448), Image.Resampling.BICUBIC)
    f = analyzer.detect(big)[0]
    eyes = g.five_points(f.landmarks)[:2] / 4
    assert np.abs(eyes - g.ARCFACE_TEMPLATE[:2]).max() < 5


def test_similarity_transform_exact():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 2)) * 30 + 100
    t = np.radians(23)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    dst = 1.7 * src @ rot.T + np.array([5.0, -12.0])
    m = g.similarity_transform(src, dst)
    assert np.allclose(g.apply_transform(m, src), dst, atol=1e-9)
    # a mirrored target is fitted by a rotation (never a reflection)
    m2 = g.similarity_transform(src, src * np.array([-1, 1]))
    assert np.linalg.det(m2[:2, :2]) > 0


def test_unknown_backend_one_line():
    from emojidiff.errors import FaceBackendError
    from emojidiff.faces import get_face_analyzer

    with pytest.raises(FaceBackendError, match="unknown face backend 'nope'.*mediapipe"):
        get_face_analyzer("nope")
