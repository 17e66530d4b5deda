"""InsightFace SCRFD detector and the insightface-* backends, on a stand-in SCRFD-shaped ONNX model built here.

The stand-in emits SCRFD's outputs (scores, box distances, keypoint offsets per stride 8/16/32, 2 anchors per
location) with values chosen by the test, two of them computed from input pixels, so the decoding (anchor centres,
distance2bbox, distance2kps, letterbox scale), the preprocessing (RGB, (x - 127.5) / 128, letterbox padding), the
score threshold, NMS and the ordering are all checked against exact numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emojidiff.errors import FaceBackendError, ModelMissingError
from emojidiff.faces import geometry as g

STRIDES = (8, 16, 32)
SIDE = 640
R_NORM = (255 - 127.5) / 128  # a red pixel's red channel after preprocessing
B_NORM = (0 - 127.5) / 128  # ... its blue channel, and every channel of the black letterbox padding


def _index(stride: int, row: int, col: int, anchor: int) -> int:
    return (row * (SIDE // stride) + col) * 2 + anchor


def _scrfd_standin(path, entries, batched: bool = False) -> None:
    """Write an SCRFD-shaped ONNX model. ``entries``: (stride, row, col, anchor, score, dist4, kps10) in stride
    units; score "rb" = 0.45 + 0.25 * (R - B) of input pixel (0, 0), "pad" = 0.3 - 0.5 * R of input pixel (600, 0)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx", reason="onnx not installed: the faces extra is missing")

    sizes = {s: (SIDE // s) ** 2 * 2 for s in STRIDES}
    scores = {s: torch.zeros(sizes[s], 1) for s in STRIDES}
    boxes = {s: torch.zeros(sizes[s], 4) for s in STRIDES}
    kps = {s: torch.zeros(sizes[s], 10) for s in STRIDES}
    rb = {s: torch.zeros(sizes[s], 1) for s in STRIDES}
    pad = {s: torch.zeros(sizes[s], 1) for s in STRIDES}
    for stride, row, col, anchor, score, dist, kp in entries:
        i = _index(stride, row, col, anchor)
        if score == "rb":
            scores[stride][i, 0], rb[stride][i, 0] = 0.45, 1.0
        elif score == "pad":
            scores[stride][i, 0], pad[stride][i, 0] = 0.3, 1.0
        else:
            scores[stride][i, 0] = score
        boxes[stride][i] = torch.tensor(dist, dtype=torch.float32)
        kps[stride][i] = torch.tensor(kp, dtype=torch.float32)

    class Standin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for s in STRIDES:
                for name, d in (("score", scores), ("box", boxes), ("kps", kps), ("rb", rb), ("pad", pad)):
                    self.register_buffer(f"{name}{s}", d[s])

        def forward(self, x):
            r_minus_b = x[0, 0, 0, 0] - x[0, 2, 0, 0]
            pad_r = x[0, 0, 600, 0]
            zero = x.mean() * 0
            outs = [getattr(self, f"score{s}") + 0.25 * r_minus_b * getattr(self, f"rb{s}")
                    - 0.5 * pad_r * getattr(self, f"pad{s}") for s in STRIDES]  # fmt: skip
            outs += [getattr(self, f"box{s}") + zero for s in STRIDES]
            outs += [getattr(self, f"kps{s}") + zero for s in STRIDES]
            return tuple(o[None] for o in outs) if batched else tuple(outs)

    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(Standin().eval(), (torch.zeros(1, 3, SIDE, SIDE),), str(path), input_names=["input.1"],
                      output_names=names, opset_version=13, dynamo=False)  # fmt: skip


# face A at stride 8 (score from the input's RGB), C: A's duplicate at stride 16 (suppressed), E: overlapping A a
# little (kept), B at stride 32 (score from the letterbox padding), D: below the score threshold
KP_A = [-2, -2, 2, -2, 0, 1, -1.5, 4, 1.5, 4]
ENTRIES = [
    (8, 30, 40, 1, "rb", [5, 6, 5, 8], KP_A),
    (16, 15, 20, 0, 0.7, [2.5, 3, 2.5, 4], [v / 2 for v in KP_A]),
    (16, 15, 24, 0, 0.6, [2.5, 3, 2.5, 4], [0] * 10),
    (32, 2, 3, 0, "pad", [1, 1, 1, 1], [0] * 10),
    (8, 60, 10, 0, 0.45, [2, 2, 2, 2], [0] * 10),
]
# in pixels of the 1280x960 image (letterbox scale 0.5)
EXPECTED = [
    ((560, 384, 720, 608), 0.45 + 0.25 * (R_NORM - B_NORM),
     [(608, 448), (672, 448), (640, 496), (616, 544), (664, 544)]),
    ((128, 64, 256, 192), 0.3 - 0.5 * B_NORM, [(192, 128)] * 5),
    ((688, 384, 848, 608), 0.6, [(768, 480)] * 5),
]  # fmt: skip


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the faces extra is missing")
    path = tmp_path_factory.mktemp("scrfd") / "det_10g.onnx"
    _scrfd_standin(path, ENTRIES)
    return path


def _red(w: int = 1280, h: int = 960) -> Image.Image:
    return Image.new("RGB", (w, h), (255, 0, 0))


def test_scrfd_decodes_standin_exactly(standin_path):
    from emojidiff.faces.scrfd import ScrfdDetector

    det = ScrfdDetector(standin_path.parent)  # a folder: finds det_10g.onnx
    assert det.path == standin_path and det.input_size == (640, 640) and det.strides == [8, 16, 32]
    boxes, scores, kps = det.detect(_red())
    assert boxes.shape == (3, 4) and kps.shape == (3, 5, 2)  # C suppressed by NMS, D under the threshold
    for i, (box, score, pts) in enumerate(EXPECTED):  # best first
        assert np.allclose(boxes[i], box, atol=1e-3), (i, boxes[i])
        assert abs(scores[i] - score) < 1e-5, (i, scores[i])
        assert np.allclose(kps[i], pts, atol=1e-3), (i, kps[i])
    # BGR input (red and blue swapped) would score A at 0.45 - 0.498: not found; a stretched (not letterboxed)
    # image would put red where the padding is and score B at 0.3 - 0.498: not found
    blob, scale = det.preprocess(_red())
    assert scale == 0.5 and blob.shape == (1, 3, 640, 640)
    assert np.allclose(blob[0, :, 0, 0], [R_NORM, B_NORM, B_NORM]) and np.allclose(blob[0, :, 600, 0], B_NORM)
    # a portrait image letterboxes on the right: scale from the height
    _, scale = det.preprocess(_red(480, 960))
    assert scale == 640 / 960


def test_scrfd_threshold_and_batched_layout(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the faces extra is missing")
    from emojidiff.faces.scrfd import ScrfdDetector

    path = tmp_path / "scrfd_10g_bnkps.onnx"
    _scrfd_standin(path, ENTRIES, batched=True)  # outputs (1, A, C), like some SCRFD exports
    det = ScrfdDetector(path, score_threshold=0.65)
    boxes, scores, _ = det.detect(_red())
    assert len(scores) == 2 and np.allclose(boxes[0], EXPECTED[0][0], atol=1e-3)
    assert np.allclose(boxes[1], EXPECTED[1][0], atol=1e-3)  # E (0.6) is now under the threshold
    det.score_threshold = 0.99  # nothing left: empty arrays, not an error
    boxes, scores, kps = det.detect(_red())
    assert boxes.shape == (0, 4) and scores.shape == (0,) and kps.shape == (0, 5, 2)


def test_nms_and_decode_order_free():
    from emojidiff.faces.scrfd import ScrfdDetector, distance2bbox, distance2kps, nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.5], dtype=np.float32)
    assert nms(boxes, scores, 0.4) == [1, 2]  # best first; 0 and 3 overlap box 1 by IoU > 0.4
    assert nms(boxes, scores, 0.99) == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0)) == []
    pts = np.array([[10.0, 20.0]])
    assert np.allclose(distance2bbox(pts, np.array([[1.0, 2, 3, 4]])), [[9, 18, 13, 24]])
    assert np.allclose(distance2kps(pts, np.arange(10.0)[None]), [[[10, 21], [12, 23], [14, 25], [16, 27], [18, 29]]])
    # the outputs are grouped by shape, so their order in the graph does not matter
    det = ScrfdDetector.__new__(ScrfdDetector)
    det.path, det.levels, det.strides, det.num_anchors = "x", 3, [8, 16, 32], 2
    det.input_size, det.score_threshold, det._centres = (640, 640), 0.5, {}
    outs = [np.zeros(((640 // s) ** 2 * 2, c), np.float32) for c in (1, 4, 10) for s in (8, 16, 32)]
    i = _index(16, 15, 20, 0)
    outs[1][i, 0], outs[4][i] = 0.8, [1, 1, 1, 1]
    b, s, k = det.decode(outs[::-1])
    assert np.allclose(b, [[304, 224, 336, 256]]) and np.allclose(s, [0.8]) and np.allclose(k, [[[320, 240]] * 5])


def test_insightface_backend_missing_models(face_models_dir, standin_path):
    from emojidiff.faces import backends
    from emojidiff.faces.registry import available_face_analyzers

    assert {"insightface-buffalo_l", "insightface-antelopev2"} <= set(available_face_analyzers())
    for make, needle in [
        (backends.make_insightface_buffalo_l, "buffalo_l/det_10g.onnx"),
        (backends.make_insightface_antelopev2, "antelopev2/scrfd_10g_bnkps.onnx"),
    ]:
        with pytest.raises(ModelMissingError) as exc:
            make()
        msg = str(exc.value)
        assert "\n" not in msg and needle in msg and str(face_models_dir) in msg and "$EMOJIDIFF_SCRFD_ONNX" in msg
        assert "-detector' needed for face backend 'insightface-" in msg
    # the detector present, the recogniser not: the message names the recogniser
    (face_models_dir / "buffalo_l").mkdir()
    (face_models_dir / "buffalo_l" / "det_10g.onnx").write_bytes(standin_path.read_bytes())
    with pytest.raises(ModelMissingError, match="no ArcFace recognition .onnx"):
        backends.make_insightface_buffalo_l()
    bad = face_models_dir / "antelopev2" / "scrfd_10g_bnkps.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelMissingError, match="SCRFD detector .* could not be loaded"):
        backends.make_insightface_antelopev2()


def test_models_check_lists_detectors(face_models_dir):
    from emojidiff.faces import models as M

    rows = {r["name"]: r for r in M.check()}
    for name, fname in [("insightface-buffalo_l-detector", "det_10g.onnx"),
                        ("insightface-antelopev2-detector", "scrfd_10g_bnkps.onnx")]:  # fmt: skip
        r = rows[name]
        assert not r["present"] and "non-commercial" in r["licence"] and fname in r["feature"]
        assert any(p.endswith(fname) and str(face_models_dir) in p for p in r["looked_in"])


def _install_pack(face_models_dir, standin_path, entries=None):
    from test_faces_recognizers import _standin_onnx

    pack = face_models_dir / "buffalo_l"
    pack.mkdir(exist_ok=True)
    if entries is None:
        (pack / "det_10g.onnx").write_bytes(standin_path.read_bytes())
    else:
        _scrfd_standin(pack / "det_10g.onnx", entries)
    _standin_onnx(pack / "w600k_r50.onnx")
    return pack


def test_insightface_backend_on_standins(face_models_dir, standin_path):
    ort = pytest.importorskip("onnxruntime")
    from emojidiff.faces import backends
    from emojidiff.faces.insightface_backend import InsightFaceAnalyzer
    from emojidiff.faces.scrfd import ScrfdDetector

    pack = _install_pack(face_models_dir, standin_path)
    fa = backends.make_insightface_buffalo_l()
    assert isinstance(fa, InsightFaceAnalyzer) and fa.name == "insightface-buffalo_l"
    assert fa.identity_dim == 512 and fa.recognizer_name == "insightface-buffalo_l"
    # no mediapipe needed: 5 keypoints only, ellipse mask
    fa = InsightFaceAnalyzer(ScrfdDetector(pack), fa.recognizer, name="t", use_mesh=False)
    assert fa.landmarks_source == "scrfd-5"
    img = _red()
    faces = fa.detect(img)
    assert [round(f.score, 4) for f in faces] == [round(e[1], 4) for e in EXPECTED]
    f = faces[0]
    assert np.allclose(f.box, EXPECTED[0][0], atol=1e-3) and f.landmarks is None
    assert np.allclose(f.extra["kps5"], EXPECTED[0][2], atol=1e-3)
    # identity: ArcFace alignment on SCRFD's keypoints, then the recogniser, as by hand
    e = fa.identity_embedding(img, f)
    crop = np.asarray(g.align_arcface(img, np.array(EXPECTED[0][2], float)), dtype=np.float32)
    sess = ort.InferenceSession(str(pack / "w600k_r50.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input.1": ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
    assert e.shape == (512,) and np.allclose(e, ref / np.linalg.norm(ref), atol=1e-5)
    assert np.allclose(fa.recognizer.embed(img, f), e, atol=1e-6)  # the recogniser alone uses kps5 too
    # expression crop and mask: the ellipse from the 5 keypoints
    mask = fa.face_mask(img, f)
    assert mask.shape == (960, 1280) and mask[496, 640] > 0.99 and mask[10, 10] == 0 and mask[100, 1200] == 0
    crop = fa.expression_crop(img, f)
    assert crop.size == (256, 256) and np.asarray(crop)[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(crop)[128, 128].tolist() == [255, 0, 0]
    with pytest.raises(FaceBackendError, match="MediaPipe FaceMesh landmarks"):
        fa.measure_expression(img, f)


def test_insightface_backend_with_facemesh(face_models_dir, standin_path, analyzer, astronaut, ast_face):
    """An SCRFD stand-in that puts its box and keypoints on the astronaut's face: FaceMesh adds 478 landmarks."""
    from emojidiff.faces import backends

    scale = 640 / 512
    x0, y0, x1, y1 = (v * scale for v in ast_face.box)
    kp = g.five_points(ast_face.landmarks) * scale
    row, col = round((y0 + y1) / 32), round((x0 + x1) / 32)
    cx, cy = col * 16, row * 16
    dist = [(cx - x0) / 16, (cy - y0) / 16, (x1 - cx) / 16, (y1 - cy) / 16]
    offs = ((kp - [cx, cy]) / 16).ravel().tolist()
    _install_pack(face_models_dir, standin_path, [(16, row, col, 1, 0.9, dist, offs)])
    fa = backends.make_insightface_buffalo_l()
    assert fa.landmarks_source == "mediapipe-facemesh"
    faces = fa.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert np.allclose(f.box, ast_face.box, atol=0.05) and abs(f.score - 0.9) < 1e-6
    assert f.landmarks.shape == (478, 2) and f.extra["warnings"] == []
    assert np.abs(f.landmarks - ast_face.landmarks).max() < 6  # the same face's mesh
    ratios = fa.measure_expression(astronaut, f)
    assert ratios.keys() == analyzer.measure_expression(astronaut, ast_face).keys()
    assert np.abs(fa.face_mask(astronaut, f) - analyzer.face_mask(astronaut, ast_face)).mean() < 0.01
    assert fa.identity_embedding(astronaut, f).shape == (512,)
