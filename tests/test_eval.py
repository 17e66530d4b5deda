"""The benchmark harness on a stub analyser: left half of an image = who, right half = which expression."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emojidiff.eval import Case, evaluate, pearson, write_report
from emojidiff.faces.base import Face

S = 16


class HalfAnalyzer:
    name = "half-stub"
    identity_dim = 12

    def detect(self, image):
        return [Face((0.0, 0.0, float(S), float(S)))]

    def _arr(self, image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0

    def identity_embedding(self, image, face):
        left = self._arr(image)[:, : S // 2]
        v = np.concatenate([left[:8, :4].mean((0, 1)), left[:8, 4:].mean((0, 1)), left[8:, :4].mean((0, 1)),
                            left[8:, 4:].mean((0, 1))]) - 0.5  # fmt: skip
        return v / np.linalg.norm(v)

    def measure_expression(self, image, face):
        right = self._arr(image)[:, S // 2 :]
        return {"smile": float(right[..., 0].mean()), "open": float(right[..., 1].mean())}

    def face_mask(self, image, face):  # pragma: no cover - protocol completeness
        return np.ones((S, S))

    def expression_crop(self, image, face):  # pragma: no cover
        return image


def _person(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).rand(S, S // 2, 3)


def _face(who: np.ndarray, exp: tuple[float, float], strength: float = 1.0) -> Image.Image:
    right = np.full((S, S // 2, 3), 0.5)
    right[..., 0] = 0.5 + strength * (exp[0] - 0.5)
    right[..., 1] = 0.5 + strength * (exp[1] - 0.5)
    return Image.fromarray((np.concatenate([who, right], axis=1) * 255).round().astype(np.uint8))


def _exp_of(image: Image.Image) -> tuple[float, float]:
    m = HalfAnalyzer().measure_expression(image, None)
    return m["smile"], m["open"]


@pytest.fixture
def cases():
    exps = [(0.9, 0.2), (0.1, 0.8), (0.7, 0.7)]
    out = []
    for i in range(3):
        b, a = _person(10 + i), _person(20 + i)
        out.append(Case([_face(b, (0.5, 0.5))], f"B{i}", _face(a, exps[i]), f"A{i}", meta={"who": b}))
    return out


def test_metrics_separate_ideal_copying_and_identity_only(cases, tmp_path):
    methods = {
        "ideal": lambda c, s, seed: _face(c.meta["who"], _exp_of(c.template), strength=s),
        "copy_template": lambda c, s, seed: c.template,
        "identity_only": lambda c, s, seed: c.identity[0],
    }
    res = evaluate(methods, cases, HalfAnalyzer(), seed=3, exp_scales=(0.0, 0.5, 1.0))
    ideal, copy, ident = (res["methods"][k] for k in ("ideal", "copy_template", "identity_only"))
    assert ideal["id_sim"] == pytest.approx(1.0, abs=1e-3) and ideal["exp_err"] == pytest.approx(0.0, abs=0.01)
    assert ideal["intensity_r"] > 0.95 and abs(ideal["leakage_gap"]) < 0.3
    assert copy["leakage"] == pytest.approx(1.0, abs=1e-3) and copy["exp_err"] == pytest.approx(0.0, abs=1e-6)
    assert copy["id_sim"] < 0.9 and copy["intensity_r"] is None  # no response to the commanded scale
    assert ident["exp_err"] > 0.1 and ident["id_sim"] == pytest.approx(1.0, abs=1e-6)
    assert ideal["lms_err"] is None and ideal["style_leakage"] is None  # no landmarks, no style scorer
    assert res["n_pairs"] == 3 and res["seed"] == 3 and ideal["face_found"] == 1.0

    j, md = write_report(res, tmp_path / "out")
    data = json.loads(j.read_text())
    assert set(data["methods"]) == set(methods) and data["methods"]["copy_template"]["intensity_r"] is None
    assert "| ideal |" in md.read_text()


def test_pearson_edge_cases():
    assert pearson([0, 1, 2], [0, 2, 4]) == pytest.approx(1.0)
    assert np.isnan(pearson([0, 1], [0, 1])) and np.isnan(pearson([1, 1, 1], [0, 1, 2]))


def test_ground_truth_spans_template_references_prepare_and_set_scorers(cases):
    from emojidiff.eval import markdown_table

    for i, c in enumerate(cases):
        sm, op = _exp_of(c.template)
        c.target_expression = {"smile": sm, "open": op + 0.2}  # truth differs from what the template shows
        c.template_identity = [_face(_person(20 + i), (0.5, 0.5))]  # the template's person, neutral

    class Copy:
        prepared: list = []

        def prepare(self, cs, scales, seed):
            self.prepared.append((len(cs), tuple(scales), seed))

        def __call__(self, c, s, seed):
            return c.template

    res = evaluate({"copy": Copy()}, cases, HalfAnalyzer(), seed=2, exp_scales=(0.0, 1.0),
                   expression_spans={"smile": 1.0, "open": 0.5},
                   set_scorers={"n_out": lambda imgs, cs: float(len(imgs))})  # fmt: skip
    m = res["methods"]["copy"]
    assert Copy.prepared == [(3, (0.0, 1.0), 2)]
    assert m["exp_err"] == pytest.approx((0 + 0.2 / 0.5) / 2, abs=0.01)  # only span keys, divided by the span
    assert m["leakage"] == pytest.approx(1.0, abs=1e-3)  # the template's person, through its own reference photo
    assert m["n_out"] == 3.0 and set(m["by_scale"]) == {"0.0", "1.0"}
    res["methods"]["other"] = {"skipped": "adapter not installed"}
    assert "| other | skipped: adapter not installed |" in markdown_table(res)
