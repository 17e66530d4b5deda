"""The benchmark runner: every method on the same cases with one seed, scored by one evaluation analyser.

A *method* is any callable ``method(case, exp_scale, seed) -> PIL.Image`` (an adapter + pipeline, a baseline, a
two-stage animation pipeline...), so the harness does not care how an image was made. A *case* pairs identity
references of one person with an expression template of another person (and a prompt/style). Results follow the JSON
form of issue 5: ``{"methods": {key: {"id_sim", "exp_err", "lms_err", "leakage", "style_leakage", "prompt_acc",
"quality", "intensity_r", ...}}, "seed", "n_pairs", ...}``; the metrics this harness cannot compute without extra
scorers (style leakage, prompt following, quality) are ``null`` unless a scorer is passed in ``scorers``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..faces.base import FaceAnalyzer
from .metrics import FaceReading, cosine, dict_l1, mean_embedding, nanmean, pearson, read_face

Method = Callable[["Case", float, int], Image.Image]
#: extra per-image scorers: ``scorer(output, case) -> float`` for style_leakage, prompt_acc, quality
Scorer = Callable[[Image.Image, "Case"], float]

METRIC_KEYS = ("id_sim", "exp_err", "lms_err", "leakage", "style_leakage", "prompt_acc", "quality", "intensity_r")


@dataclass
class Case:
    identity: list[Image.Image]  # reference photos of the target person
    identity_key: str  # who the target person is
    template: Image.Image  # expression template (another person)
    template_key: str  # who the template shows
    prompt: str = "a portrait photo of a person"
    style: str | None = None
    meta: dict = field(default_factory=dict)


def unrelated_level(readings: Mapping[str, FaceReading]) -> float:
    """Mean identity similarity between different people (one reading per person): the floor leakage should reach."""
    keys = [k for k, r in readings.items() if r.embedding is not None]
    sims = [cosine(readings[a].embedding, readings[b].embedding) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    return nanmean(sims)


def evaluate(
    methods: Mapping[str, Method],
    cases: Sequence[Case],
    analyzer: FaceAnalyzer,
    seed: int = 0,
    exp_scales: Sequence[float] = (0.0, 0.5, 1.0),
    main_scale: float = 1.0,
    scorers: Mapping[str, Scorer] | None = None,
    keep_images: bool = False,
) -> dict:
    """Run and score every method on every case; returns the results dict (and images under ``_images`` if asked)."""
    scorers = dict(scorers or {})
    scales = sorted({float(s) for s in exp_scales} | {float(main_scale)})
    refs = [mean_embedding([read_face(analyzer, im) for im in c.identity]) for c in cases]
    templates = [read_face(analyzer, c.template) for c in cases]
    people: dict[str, FaceReading] = {}
    for c, emb, tr in zip(cases, refs, templates, strict=True):
        people.setdefault(c.identity_key, FaceReading(None, emb))
        people.setdefault(c.template_key, tr)
    floor = unrelated_level(people)
    results: dict = {"methods": {}, "seed": seed, "n_pairs": len(cases), "exp_scales": scales,
                     "unrelated_level": floor}  # fmt: skip
    images: dict = {}
    for key, method in methods.items():
        rows: dict[str, list[float]] = {k: [] for k in METRIC_KEYS if k != "intensity_r"}
        found, per_case_r = 0, []
        for ci, case in enumerate(cases):
            by_scale: dict[float, FaceReading] = {}
            for s in scales:
                img = method(case, s, seed)
                if keep_images:
                    images[(key, ci, s)] = img
                r = read_face(analyzer, img)
                by_scale[s] = r
                if s != main_scale:
                    continue
                found += r.face is not None
                rows["id_sim"].append(cosine(r.embedding, refs[ci]))
                rows["exp_err"].append(dict_l1(r.expression, templates[ci].expression))
                rows["lms_err"].append(dict_l1(r.ratios, templates[ci].ratios))
                rows["leakage"].append(cosine(r.embedding, templates[ci].embedding))
                for name in ("style_leakage", "prompt_acc", "quality"):
                    if name in scorers:
                        rows[name].append(float(scorers[name](img, case)))
            low = by_scale[scales[0]]
            per_case_r.append(pearson(scales, [dict_l1(by_scale[s].expression, low.expression) for s in scales]))
        m = {k: (None if not v or math.isnan(nanmean(v)) else round(nanmean(v), 4)) for k, v in rows.items()}
        r_val = nanmean(per_case_r)
        m["intensity_r"] = None if math.isnan(r_val) else round(r_val, 4)
        m["leakage_gap"] = None if m["leakage"] is None or math.isnan(floor) else round(m["leakage"] - floor, 4)
        m["face_found"] = round(found / max(len(cases), 1), 4)
        results["methods"][key] = m
    if keep_images:
        results["_images"] = images
    return results


def markdown_table(results: dict) -> str:
    cols = ("id_sim", "exp_err", "lms_err", "leakage", "leakage_gap", "intensity_r", "face_found",
            "style_leakage", "prompt_acc", "quality")  # fmt: skip
    fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, m in results["methods"].items():
        lines.append(f"| {key} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |")
    floor = results.get("unrelated_level")
    lines.append("")
    lines.append(f"{results['n_pairs']} identity × template pairs, seed {results['seed']}; unrelated-people identity "
                 f"similarity {fmt(floor if floor is None or not math.isnan(floor) else None)}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | Path) -> tuple[Path, Path]:
    """``out/results.json`` and ``out/results.md`` (images, if kept, are not written here)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = _no_nan({k: v for k, v in results.items() if not k.startswith("_")})
    j, md = out / "results.json", out / "results.md"
    j.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    md.write_text(markdown_table(results))
    return j, md


def _no_nan(v):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_nan(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
