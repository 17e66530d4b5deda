"""InsightFace's SCRFD face detector (ONNX) through onnxruntime: boxes, scores and 5 keypoints.

The detector of InsightFace's model packs (user-supplied, non-commercial): ``buffalo_l/det_10g.onnx``,
``antelopev2/scrfd_10g_bnkps.onnx`` (also ``buffalo_s/det_500m.onnx``). What this module relies on, as in
InsightFace's ``model_zoo/scrfd.py``:

* input: RGB, ``(x - 127.5) / 128``, NCHW; the image is letterboxed into the model's square (640x640 unless the
  model fixes another size): scaled to fit, placed top-left, the rest zero (black);
* outputs, per stride 8/16/32 (or 8..128 for 5-level models): scores ``(A, 1)``, box distances ``(A, 4)`` and,
  for ``*_kps`` models, keypoint offsets ``(A, 10)``, with ``A = (H/s) * (W/s) * anchors`` (2 anchors per location
  for 3-level models, 1 for 5-level ones), in stride units, row-major over locations with the anchors of one
  location adjacent; an optional leading batch dimension of 1;
* decoding: anchor centre ``(col * s, row * s)``; box ``(cx - d0, cy - d1, cx + d2, cy + d3)`` (distance2bbox);
  keypoint ``k`` at ``(cx + o[2k], cy + o[2k + 1])`` (distance2kps), all times the stride; then the score threshold
  (0.5) and greedy non-maximum suppression (IoU 0.4), best first.

Outputs are grouped by their last dimension (1 scores, 4 boxes, 10 keypoints) and ordered by anchor count (largest:
stride 8), so the order of the outputs in the graph does not matter.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FaceBackendError, ModelMissingError

#: detector file inside each known InsightFace pack
KNOWN_DETECTORS = {"buffalo_l": "det_10g.onnx", "antelopev2": "scrfd_10g_bnkps.onnx", "buffalo_s": "det_500m.onnx"}
#: SCRFD's standard input side (used when the model's input size is dynamic)
DEFAULT_INPUT = 640
#: output counts of SCRFD exports: (levels, with keypoints)
_LAYOUTS = {6: (3, False), 9: (3, True), 10: (5, False), 15: (5, True)}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise FaceBackendError(
            "the InsightFace detector needs onnxruntime: pip install onnxruntime (see the faces extra)"
        ) from None
    return ort


def _session(path: Path):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def find_scrfd(path: str | os.PathLike) -> Path:
    """The SCRFD detector .onnx in an InsightFace model folder (or the file itself)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if p.name in KNOWN_DETECTORS and (p / KNOWN_DETECTORS[p.name]).is_file():
            return p / KNOWN_DETECTORS[p.name]
        for fname in KNOWN_DETECTORS.values():
            if (p / fname).is_file():
                return p / fname
        for c in sorted(p.glob("*.onnx")):  # the detector is the model with an SCRFD output count
            try:
                if len(_session(c).get_outputs()) in _LAYOUTS:
                    return c
            except Exception:  # noqa: BLE001
                continue
    raise ModelMissingError(f"no SCRFD face detector .onnx (det_10g.onnx, scrfd_10g_bnkps.onnx) found in '{p}'")


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes ``(N, 4)`` x0, y0, x1, y1 from anchor centres ``(N, 2)`` and distances left, top, right, bottom."""
    return np.stack(
        [points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
         points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1,
    )  # fmt: skip


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints ``(N, K, 2)`` from anchor centres ``(N, 2)`` and offsets ``(N, 2K)`` (x, y interleaved)."""
    off = distance.reshape(len(distance), distance.shape[-1] // 2, 2)
    return points[:, None, :] + off


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4) -> list[int]:
    """Greedy non-maximum suppression: indices kept, highest score first."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        ov = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[ov <= iou]
    return keep


class ScrfdDetector:
    """An SCRFD ONNX face detector. :meth:`detect` returns ``(boxes (N, 4), scores (N,), keypoints (N, 5, 2))``
    in pixels of the given image, best first."""

    def __init__(
        self,
        path: str | os.PathLike,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_size: int | tuple[int, int] | None = None,
    ):
        self.path = find_scrfd(path)
        try:
            self._sess = _session(self.path)
        except FaceBackendError:
            raise
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelMissingError(f"SCRFD detector '{self.path}' could not be loaded ({first[:160]})") from None
        outs = self._sess.get_outputs()
        if len(outs) not in _LAYOUTS:
            raise ModelMissingError(
                f"'{self.path}' is not an SCRFD detector: it has {len(outs)} outputs (expected 6, 9, 10 or 15)"
            )
        self.levels, self.has_kps = _LAYOUTS[len(outs)]
        if not self.has_kps:
            raise ModelMissingError(
                f"SCRFD detector '{self.path}' has no keypoint outputs: a *_kps model (det_10g, scrfd_10g_bnkps) is "
                "needed for alignment"
            )
        self.strides = [8, 16, 32] if self.levels == 3 else [8, 16, 32, 64, 128]
        self.num_anchors = 2 if self.levels == 3 else 1
        self._outputs = [o.name for o in outs]
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        if input_size is None:
            h, w = (list(inp.shape[2:4]) + [None, None])[:2]
            input_size = (w, h) if isinstance(h, int) and isinstance(w, int) else DEFAULT_INPUT
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)  # (w, h)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ScrfdDetector('{self.path}', input={self.input_size})"

    # --- pre/post-processing -----------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """Letterbox ``image`` into the input: ``(blob (1, 3, H, W), scale)``, input pixel = image pixel * scale."""
        iw, ih = self.input_size
        img = image.convert("RGB")
        w, h = img.size
        if h / w > ih / iw:
            new_h = ih
            new_w = max(1, int(new_h / (h / w)))
        else:
            new_w = iw
            new_h = max(1, int(new_w * (h / w)))
        scale = new_h / h
        canvas = np.zeros((ih, iw, 3), np.float32)
        canvas[:new_h, :new_w] = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob, dtype=np.float32), scale

    def _anchor_centres(self, stride: int) -> np.ndarray:
        iw, ih = self.input_size
        key = (ih // stride, iw // stride, stride)
        if key not in self._centres:
            rows, cols = key[0], key[1]
            yy, xx = np.mgrid[:rows, :cols]
            c = (np.stack([xx, yy], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            self._centres[key] = np.repeat(c, self.num_anchors, axis=0)
        return self._centres[key]

    def _group(self, outs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        arrs = [np.asarray(o, dtype=np.float32) for o in outs]
        arrs = [a[0] if a.ndim == 3 else a for a in arrs]  # batched exports: (1, A, C)
        groups: dict[int, list[np.ndarray]] = {1: [], 4: [], 10: []}
        for a in arrs:
            a = a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(-1, 1)
            if a.shape[-1] not in groups:
                raise FaceBackendError(f"SCRFD detector '{self.path}' gave an output of unexpected shape {a.shape}")
            groups[a.shape[-1]].append(a)
        for k in groups:
            groups[k].sort(key=lambda a: -len(a))  # most anchors first: stride 8
        if not all(len(v) == self.levels for v in groups.values()):
            raise FaceBackendError(f"SCRFD detector '{self.path}' has outputs that do not form {self.levels} levels")
        return groups[1], groups[4], groups[10]

    def decode(self, outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs → (boxes, scores, keypoints) in model-input pixels above the score threshold, unsorted."""
        scores_l, boxes_l, kps_l = self._group(outs)
        all_b, all_s, all_k = [], [], []
        for stride, sc, bb, kp in zip(self.strides, scores_l, boxes_l, kps_l, strict=True):
            centres = self._anchor_centres(stride)
            if len(sc) != len(centres):
                raise FaceBackendError(
                    f"SCRFD detector '{self.path}' gave {len(sc)} anchors at stride {stride}, expected {len(centres)} "
                    f"for input {self.input_size}"
                )
            pos = np.where(sc[:, 0] >= self.score_threshold)[0]
            all_s.append(sc[pos, 0])
            all_b.append(distance2bbox(centres[pos], bb[pos] * stride))
            all_k.append(distance2kps(centres[pos], kp[pos] * stride))
        return np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_k)

    # --- detection ---------------------------------------------------------------------------------------------

    def detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in ``image``: boxes ``(N, 4)``, scores ``(N,)``, keypoints ``(N, 5, 2)`` in image pixels, best first.

        Keypoints: image-left eye, image-right eye, nose tip, image-left and image-right mouth corner (the ArcFace
        template order).
        """
        blob, scale = self.preprocess(image)
        with self._lock:
            outs = self._sess.run(self._outputs, {self._input: blob})
        boxes, scores, kps = self.decode(outs)
        keep = nms(boxes, scores, self.nms_threshold)
        return (
            boxes[keep].astype(np.float64) / scale,
            scores[keep].astype(np.float64),
            kps[keep].astype(np.float64) / scale,
        )
