"""Round reports: counts, kept ratio, rejection reasons, score summaries and score histograms (PNG, drawn with PIL)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: (record key, title, threshold setting of IDIConfig or None)
HISTOGRAMS = [
    ("exp_err", "expression error vs template (keep <= max)", "max_expression_error"),
    ("id_sim", "identity similarity to B (keep >= min)", "min_identity_sim"),
    ("leak_sim", "identity similarity to template person A (keep <= max)", "max_template_identity_sim"),
    ("strength", "re-identification strength chosen", None),
]


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def summarize(records: list[dict], cfg, n_templates_without_partner: int = 0) -> dict:
    """The ``report.json`` content of a round."""
    kept = [r for r in records if r["kept"]]
    reasons = Counter(x for r in records for x in r["reasons"])
    scores = {}
    for key, _, _ in HISTOGRAMS + [("g_exp_err", "", None), ("g_id_sim", "", None), ("g_leak_sim", "", None)]:
        v = _finite(r.get(key) for r in records)
        if v:
            a = np.asarray(v)
            scores[key] = {
                "n": len(v), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
                "p10": float(np.percentile(a, 10)), "p50": float(np.percentile(a, 50)),
                "p90": float(np.percentile(a, 90)),
            }  # fmt: skip
    return {
        "candidates": len(records),
        "kept": len(kept),
        "kept_ratio": len(kept) / len(records) if records else 0.0,
        "rejected_by": dict(sorted(reasons.items())),
        "templates_without_other_identity": n_templates_without_partner,
        "mean_attempts": float(np.mean([len(r.get("attempts", [])) for r in records])) if records else 0.0,
        "scores": scores,
        "thresholds": {k: getattr(cfg, k) for _, _, k in HISTOGRAMS if k},
    }


def write_markdown(path: Path, report: dict, round_index: int) -> None:
    lines = [
        f"# IDI round {round_index}",
        "",
        f"- candidates: {report['candidates']}",
        f"- kept: {report['kept']} ({100 * report['kept_ratio']:.1f} %)",
        f"- rejected by: {', '.join(f'{k} {v}' for k, v in report['rejected_by'].items()) or 'nothing'}",
        "",
        "| score | mean | p10 | p50 | p90 |",
        "|---|---|---|---|---|",
    ]
    for k, s in report["scores"].items():
        lines.append(f"| {k} | {s['mean']:.3f} | {s['p10']:.3f} | {s['p50']:.3f} | {s['p90']:.3f} |")
    lines += ["", "![score histograms](histograms.png)", ""]
    _atomic_text(path, "\n".join(lines))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, data) -> None:
    _atomic_text(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def _panel(values_kept, values_rej, title: str, threshold: float | None, size=(360, 220), bins: int = 20):
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((6, 4), title, fill="black", font=font)
    allv = values_kept + values_rej
    left, right, top, bottom = 36, w - 10, 22, h - 24
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not allv:
        d.text((left + 8, (top + bottom) // 2), "no values", fill="gray", font=font)
        return img
    lo, hi = min(allv), max(allv)
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    hk, _ = np.histogram(values_kept, edges)
    hr, _ = np.histogram(values_rej, edges)
    peak = max(1, int((hk + hr).max()))
    bw = (right - left) / bins
    for i in range(bins):
        x0, x1 = left + i * bw + 1, left + (i + 1) * bw - 1
        yk = bottom - (bottom - top) * hk[i] / peak
        yr = yk - (bottom - top) * hr[i] / peak
        if hk[i]:
            d.rectangle([x0, yk, x1, bottom], fill=(60, 160, 80))
        if hr[i]:
            d.rectangle([x0, yr, x1, yk], fill=(200, 80, 70))
    if threshold is not None and math.isfinite(threshold):
        x = left + (right - left) * (threshold - lo) / (hi - lo)
        d.line([x, top, x, bottom], fill=(40, 60, 220), width=2)
    d.text((left, bottom + 4), f"{lo:.3g}", fill="black", font=font)
    d.text((right - 40, bottom + 4), f"{hi:.3g}", fill="black", font=font)
    d.text((4, top), str(peak), fill="black", font=font)
    return img


def draw_histograms(path: Path, records: list[dict], cfg) -> None:
    """A 2x2 grid of histograms (kept green, rejected red, threshold blue), written atomically."""
    panels = []
    for key, title, thr in HISTOGRAMS:
        kept = _finite(r.get(key) for r in records if r["kept"])
        rej = _finite(r.get(key) for r in records if not r["kept"])
        panels.append(_panel(kept, rej, title, getattr(cfg, thr) if thr else None))
    pw, ph = panels[0].size
    grid = Image.new("RGB", (2 * pw, 2 * ph), "white")
    for i, p in enumerate(panels):
        grid.paste(p, ((i % 2) * pw, (i // 2) * ph))
    tmp = path.with_name(path.name + ".tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
