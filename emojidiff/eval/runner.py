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
#: extra set-level scorers over a method's main-scale outputs: ``scorer(outputs, cases) -> float`` (e.g. a distance
#: between feature statistics of the outputs and of real images)
SetScorer = Callable[[Sequence[Image.Image], Sequence["Case"]], float]

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
    #: ground truth, where known: the expression the output should show (default: the template, as measured)
    target_expression: dict[str, float] | None = None
    #: landmark ratios of the ideal output (default: the template's, as measured)
    target_ratios: dict[str, float] | None = None
    #: reference photos of the template's person, for leakage and the unrelated level (default: the template itself)
    template_identity: list[Image.Image] | None = None


def unrelated_level(readings: Mapping[str, FaceReading]) -> float:
    """Mean identity similarity between different people (one reading per person): the floor leakage should reach."""
    keys = [k for k, r in readings.items() if r.embedding is not None]
    sims = [cosine(readings[a].embedding, readings[b].embedding) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    return nanmean(sims)


def expression_error(
    measured: Mapping[str, float] | None, target: Mapping[str, float] | None, spans: Mapping[str, float] | None = None
) -> float:
    """Mean L1 over the keys both have; with ``spans``, only those keys, each divided by its span (range)."""
    if spans is None:
        return dict_l1(measured, target)
    if not measured or not target:
        return math.nan
    diffs = [abs(float(measured[k]) - float(target[k])) / spans[k] for k in spans
             if k in measured and k in target and math.isfinite(measured[k]) and math.isfinite(target[k])]  # fmt: skip
    return nanmean(diffs)


def evaluate(
    methods: Mapping[str, Method],
    cases: Sequence[Case],
    analyzer: FaceAnalyzer,
    seed: int = 0,
    exp_scales: Sequence[float] = (0.0, 0.5, 1.0),
    main_scale: float = 1.0,
    scorers: Mapping[str, Scorer] | None = None,
    keep_images: bool = False,
    expression_spans: Mapping[str, float] | None = None,
    set_scorers: Mapping[str, SetScorer] | None = None,
    progress: bool = False,
) -> dict:
    """Run and score every method on every case; returns the results dict (and images under ``_images`` if asked).

    Besides the main-scale metrics, every method gets ``by_scale``: mean ``id_sim``, ``exp_err`` and ``leakage`` at
    each ``exp_scales`` value (the identity-expression trade-off).
    """
    scorers = dict(scorers or {})
    set_scorers = dict(set_scorers or {})
    scales = sorted({float(s) for s in exp_scales} | {float(main_scale)})
    refs = [mean_embedding([read_face(analyzer, im) for im in c.identity]) for c in cases]
    templates = [read_face(analyzer, c.template) for c in cases]
    tpl_refs = [
        mean_embedding([read_face(analyzer, im) for im in c.template_identity]) if c.template_identity else t.embedding
        for c, t in zip(cases, templates, strict=True)
    ]
    targets = [c.target_expression or t.expression for c, t in zip(cases, templates, strict=True)]
    target_ratios = [c.target_ratios or t.ratios for c, t in zip(cases, templates, strict=True)]
    people: dict[str, FaceReading] = {}
    for c, emb, temb in zip(cases, refs, tpl_refs, strict=True):
        people.setdefault(c.identity_key, FaceReading(None, emb))
        people.setdefault(c.template_key, FaceReading(None, temb))
    floor = unrelated_level(people)
    results: dict = {"methods": {}, "seed": seed, "n_pairs": len(cases), "exp_scales": scales,
                     "unrelated_level": floor}  # fmt: skip
    images: dict = {}
    for key, method in methods.items():
        prepare = getattr(method, "prepare", None)
        if callable(prepare):
            prepare(cases, scales, seed)
        rows: dict[str, list[float]] = {k: [] for k in METRIC_KEYS if k != "intensity_r"}
        per_scale: dict[float, dict[str, list[float]]] = {
            s: {"id_sim": [], "exp_err": [], "leakage": []} for s in scales
        }
        found, per_case_r, main_images = 0, [], []
        bar = _progress(cases, f"score {key}", progress)
        for ci, case in enumerate(bar):
            by_scale: dict[float, FaceReading] = {}
            for s in scales:
                img = method(case, s, seed)
                if keep_images:
                    images[(key, ci, s)] = img
                r = read_face(analyzer, img)
                by_scale[s] = r
                per_scale[s]["id_sim"].append(cosine(r.embedding, refs[ci]))
                per_scale[s]["exp_err"].append(expression_error(r.expression, targets[ci], expression_spans))
                per_scale[s]["leakage"].append(cosine(r.embedding, tpl_refs[ci]))
                if s != main_scale:
                    continue
                main_images.append(img)
                found += r.face is not None
                rows["id_sim"].append(per_scale[s]["id_sim"][-1])
                rows["exp_err"].append(per_scale[s]["exp_err"][-1])
                rows["lms_err"].append(dict_l1(r.ratios, target_ratios[ci]))
                rows["leakage"].append(per_scale[s]["leakage"][-1])
                for name in ("style_leakage", "prompt_acc", "quality"):
                    if name in scorers:
                        rows[name].append(float(scorers[name](img, case)))
            low = by_scale[scales[0]]
            strength = [expression_error(by_scale[s].expression, low.expression, expression_spans) for s in scales]
            per_case_r.append(pearson(scales, strength))
        m = {k: _mean_or_none(v) for k, v in rows.items()}
        m["intensity_r"] = _mean_or_none(per_case_r)
        m["leakage_gap"] = None if m["leakage"] is None or math.isnan(floor) else round(m["leakage"] - floor, 4)
        m["face_found"] = round(found / max(len(cases), 1), 4)
        for name, fn in set_scorers.items():
            v = float(fn(main_images, cases))
            m[name] = None if math.isnan(v) else round(v, 4)
        m["by_scale"] = {str(s): {k: _mean_or_none(v) for k, v in d.items()} for s, d in per_scale.items()}
        results["methods"][key] = m
    if keep_images:
        results["_images"] = images
    return results


def _mean_or_none(values: Sequence[float]) -> float | None:
    v = nanmean(values)
    return None if math.isnan(v) else round(v, 4)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, mininterval=2)


DEFAULT_COLUMNS = ("id_sim", "exp_err", "lms_err", "leakage", "leakage_gap", "intensity_r", "face_found",
                   "style_leakage", "prompt_acc", "quality")  # fmt: skip


def markdown_table(results: dict, columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """One row per method (a method with a ``skipped`` reason gets that reason instead of numbers)."""
    cols = tuple(columns)
    fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, m in results["methods"].items():
        if m.get("skipped"):
            lines.append(f"| {key} | skipped: {m['skipped']} |" + " |" * (len(cols) - 1))
            continue
        lines.append(f"| {key} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |")
    floor = results.get("unrelated_level")
    lines.append("")
    lines.append(f"{results['n_pairs']} identity × template pairs, seed {results['seed']}; unrelated-people identity "
                 f"similarity {fmt(floor if floor is None or not math.isnan(floor) else None)}.")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | Path, markdown: str | None = None) -> tuple[Path, Path]:
    """``out/results.json`` and ``out/results.md`` (images, if kept, are not written here); atomic writes.

    ``markdown``: the text of results.md (default: :func:`markdown_table`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "results.json", out / "results.md"
    _atomic_write(j, json_text(results))
    _atomic_write(md, markdown if markdown is not None else markdown_table(results))
    return j, md


def json_text(results: dict) -> str:
    """The results as JSON: keys starting with ``_`` dropped, NaN written as null."""
    clean = _no_nan({k: v for k, v in results.items() if not k.startswith("_")})
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _no_nan(v):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_nan(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
