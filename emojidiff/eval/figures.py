"""Benchmark figures drawn with PIL (matplotlib is not a core dependency): image grids and the trade-off plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: one colour per method, in order
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]  # fmt: skip


def _save(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def image_grid(
    rows: Sequence[Sequence[Image.Image | None]],
    header: Sequence[str],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    tile: int = 128,
) -> Path:
    """A table of images (None: a grey tile, e.g. a skipped method) with column headers and optional row labels."""
    font = ImageFont.load_default()
    head, left = 18, (150 if row_labels else 0)
    ncol = max(len(header), max((len(r) for r in rows), default=0))
    canvas = Image.new("RGB", (left + ncol * tile, head + len(rows) * tile), "white")
    d = ImageDraw.Draw(canvas)
    for j, text in enumerate(header):
        d.text((left + j * tile + 3, 3), text[:22], fill="black", font=font)
    for i, row in enumerate(rows):
        y = head + i * tile
        if row_labels:
            d.text((4, y + tile // 2 - 6), row_labels[i][:26], fill="black", font=font)
        for j, img in enumerate(row):
            x = left + j * tile
            if img is None:
                d.rectangle([x + 1, y + 1, x + tile - 2, y + tile - 2], fill=(215, 215, 215))
                d.text((x + 6, y + tile // 2 - 6), "skipped", fill=(90, 90, 90), font=font)
            else:
                canvas.paste(img.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
    return _save(canvas, path)


def tradeoff_plot(results: dict, path: str | Path, size: tuple[int, int] = (720, 480)) -> Path:
    """Identity similarity against expression error, one line per method through its exp_scale values (labelled);
    the dashed line is the identity similarity of unrelated people."""
    w, h = size
    font = ImageFont.load_default()
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    series = []
    for key, m in results.get("methods", {}).items():
        pts = [(float(s), v.get("exp_err"), v.get("id_sim")) for s, v in (m.get("by_scale") or {}).items()]
        pts = [(s, x, y) for s, x, y in pts if x is not None and y is not None]
        if key == "identity_only":  # scale-independent: one point
            pts = pts[-1:]
        if pts:
            series.append((key, sorted(pts)))
    floor = results.get("unrelated_id_sim")
    xs = [p[1] for _, pts in series for p in pts]
    ys = [p[2] for _, pts in series for p in pts] + ([floor] if floor is not None else [])
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 0.5)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    padx, pady = max((x1 - x0) * 0.1, 0.01), max((y1 - y0) * 0.1, 0.02)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    L, R, T, B = 70, w - 170, 40, h - 50  # noqa: N806 - plot box edges

    def px(x: float, y: float) -> tuple[float, float]:
        return L + (x - x0) / (x1 - x0) * (R - L), B - (y - y0) / (y1 - y0) * (B - T)

    d.text((L, 10), "identity vs expression over exp_scale (up-left is better)", fill="black", font=font)
    d.rectangle([L, T, R, B], outline="black")
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        gx, _ = px(xv, y0)
        _, gy = px(x0, yv)
        d.line([gx, B, gx, B + 4], fill="black")
        d.text((gx - 14, B + 6), f"{xv:.3f}", fill="black", font=font)
        d.line([L - 4, gy, L, gy], fill="black")
        d.text((L - 44, gy - 6), f"{yv:.3f}", fill="black", font=font)
    d.text(((L + R) // 2 - 90, h - 22), "exp_err (fraction of factor range)", fill="black", font=font)
    d.text((6, T - 16), "id_sim", fill="black", font=font)
    if floor is not None and not math.isnan(floor):
        _, fy = px(x0, floor)
        for xx in range(L, R, 10):
            d.line([xx, fy, min(xx + 5, R), fy], fill=(120, 120, 120))
        d.text((R + 6, fy - 6), "unrelated people", fill=(90, 90, 90), font=font)
    for i, (key, pts) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        coords = [px(x, y) for _, x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=c, width=2)
        for (s, _, _), (cx, cy) in zip(pts, coords, strict=True):
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=c)
            if key != "identity_only":
                d.text((cx + 5, cy - 12), f"{s:g}", fill=c, font=font)
        ly = T + 8 + i * 16
        d.rectangle([R + 10, ly + 2, R + 20, ly + 10], fill=c)
        d.text((R + 26, ly), key, fill="black", font=font)
    return _save(img, path)
