"""Procedural, anti-aliased portraits of the synthetic world, rendered in batches with numpy.

Every shape is a signed distance field evaluated on a pixel grid for the whole batch at once (arrays of shape
``(N, S, S)``), and its coverage ``clip(0.5 - d / pixel, 0, 1)`` gives one-pixel anti-aliasing at any size.
Geometry is in normalised units: x and y in [-1, 1], y pointing down, the face centred a little below the
middle. Nothing here is random: a :class:`~emojidiff.synthetic.factors.Portrait` fully determines its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .factors import (
    EYE_RGB,
    HAIR_RGB,
    HAIR_STYLES,
    NAMED_RGB,
    Expression,
    Identity,
    Portrait,
)

_F = np.float32
_SKIN_LIGHT = np.array([0.98, 0.86, 0.76], _F)
_SKIN_DARK = np.array([0.42, 0.27, 0.17], _F)
_PAPER = np.array([0.96, 0.94, 0.89], _F)
#: the canvas spans [-_ZOOM, _ZOOM] in scene units (smaller = the face fills more of the picture)
_ZOOM = 0.82


def _col(values: Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 3) colours -> (N, 1, 1, 3) for broadcasting against images."""
    return np.asarray(values, _F).reshape(-1, 1, 1, 3)


def _p(values) -> np.ndarray:
    """(N,) per-portrait parameters -> (N, 1, 1) for broadcasting against the pixel grid."""
    return np.asarray(values, _F).reshape(-1, 1, 1)


def _ellipse(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse of half-axes a, b centred at the origin."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _segment(x, y, ax, ay, bx, by):
    """Distance to the segment (ax, ay)-(bx, by)."""
    px, py = x - ax, y - ay
    dx, dy = bx - ax, by - ay
    h = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2)


def _box(x, y, hw, hh, r):
    """Signed distance to a rounded box of half-size (hw, hh) and corner radius r."""
    qx = np.abs(x) - hw + r
    qy = np.abs(y) - hh + r
    return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - r


class _Canvas:
    def __init__(self, n: int, size: int):
        self.size = size
        c = ((np.arange(size, dtype=_F) + 0.5) / size * 2.0 - 1.0) * _ZOOM
        self.x = c[None, None, :]
        self.y = c[None, :, None]
        self.px = _F(2.0 / size * _ZOOM)
        self.img = np.zeros((n, size, size, 3), _F)
        self.fg = np.zeros((n, size, size), _F)

    def cover(self, d) -> np.ndarray:
        return np.clip(0.5 - d / self.px, 0.0, 1.0)

    def paint(self, d, colour, alpha=1.0, fg: bool = True) -> None:
        """Alpha-blend ``colour`` where the shape ``d`` covers pixels (only the rows/columns it touches)."""
        a = np.broadcast_to(self.cover(d) * alpha, self.fg.shape)
        rows = np.flatnonzero(a.max(axis=(0, 2)) > 0)
        if rows.size == 0:
            return
        cols = np.flatnonzero(a.max(axis=(0, 1)) > 0)
        r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        a = a[:, r, c]
        colour = np.asarray(colour, _F)
        if colour.ndim == 4 and colour.shape[1] > 1:
            colour = colour[:, r, c]
        img = self.img[:, r, c]
        img += (colour - img) * a[..., None]
        if fg:
            f = self.fg[:, r, c]
            f += (1.0 - f) * a


def _geometry(ids: list[Identity], exps: list[Expression]) -> dict[str, np.ndarray]:
    """All shape parameters of a batch, as (N, 1, 1) arrays (expression changes proportions too)."""
    g: dict[str, np.ndarray] = {}
    e = {k: _p([getattr(x, k) for x in exps]) for k in vars(exps[0])}
    i = {k: _p([getattr(x, k) for x in ids]) for k, v in vars(ids[0]).items() if isinstance(v, float)}
    smile_pos = np.maximum(e["smile"], 0)
    g["cy"] = _F(0.02) + 0 * i["face_width"]
    g["a"] = (0.36 + 0.12 * i["face_width"]) * (1.0 + 0.04 * smile_pos - 0.03 * e["mouth_open"])
    # an open mouth drops the jaw: the face gets longer
    g["b"] = 0.50 + 0.10 * i["face_length"] + 0.07 * e["mouth_open"]
    g["jaw"] = 0.15 + 0.45 * i["jaw"]
    g["ey"] = g["cy"] - 0.10 + 0.08 * i["eye_height"] - 0.02 * e["mouth_open"]
    g["ex"] = g["a"] * (0.36 + 0.16 * i["eye_spacing"])
    g["ew"] = 0.065 + 0.03 * i["eye_size"]
    g["eh"] = g["ew"] * 0.75
    g["ny"] = g["ey"] + 0.16 + 0.06 * i["nose_length"]
    g["nw"] = 0.03 + 0.03 * i["nose_width"]
    g["nl"] = 0.07 + 0.07 * i["nose_length"]
    g["mw"] = g["a"] * (0.32 + 0.22 * i["mouth_width"]) * (1.0 - 0.4 * e["pout"]) * (1.0 + 0.12 * smile_pos)
    g["oh"] = 0.20 * e["mouth_open"] * (1.0 - 0.3 * e["pout"])
    chin = g["cy"] + g["b"]
    g["my"] = g["ny"] + 0.45 * (chin - g["ny"]) - 0.05 + 0.02 * e["mouth_open"]
    g["lip"] = (0.008 + 0.016 * i["lip_fullness"]) * (1.0 + 1.2 * e["pout"])
    g["bt"] = 0.010 + 0.016 * i["brow_thickness"]
    g["ear_w"] = 0.045 + 0.035 * i["ear_size"]
    g["ear_h"] = 0.08 + 0.05 * i["ear_size"]
    g.update({"e_" + k: v for k, v in e.items()})
    g.update({"i_" + k: v for k, v in i.items()})
    return g


def _face_sdf(cv: _Canvas, g) -> np.ndarray:
    """The head outline: an ellipse whose lower half narrows towards the chin (``jaw``)."""
    yr = cv.y - g["cy"]
    t = np.clip(yr / g["b"], 0, 1)
    squeeze = 1.0 - g["jaw"] * t * t
    return _ellipse(cv.x / squeeze, yr, g["a"], g["b"]) * np.minimum(squeeze, 1.0)


def render_array(portraits: Sequence[Portrait], size: int = 64) -> np.ndarray:
    """Render a batch to a float32 array ``(N, size, size, 3)`` in [0, 1]."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    n = len(portraits)
    if n == 0:
        return np.zeros((0, size, size, 3), _F)
    chunk = max(1, 32 * 64 * 64 // (size * size))  # keep the working set in cache
    if n > chunk:
        return np.concatenate([render_array(portraits[k : k + chunk], size) for k in range(0, n, chunk)])
    ids = [p.identity for p in portraits]
    exps = [p.expression for p in portraits]
    sts = [p.style for p in portraits]
    cv = _Canvas(n, size)
    g = _geometry(ids, exps)
    x, y = cv.x, cv.y

    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * np.asarray([[i.skin_tone] for i in ids], _F)
    skin = skin.reshape(-1, 1, 1, 3)
    shade = 0.75 + 0.5 * _p([i.hair_shade for i in ids])[..., None]
    hair = np.clip(_col([HAIR_RGB[i.hair_colour] for i in ids]) * shade, 0, 1)
    brow_col = np.where(
        _p([i.hair_style == "bald" or i.hair_colour in ("grey", "blonde") for i in ids])[..., None] > 0,
        hair * 0.6,
        hair * 0.8,
    )
    style_idx = np.array([HAIR_STYLES.index(i.hair_style) for i in ids])
    has = {s: _p(style_idx == k) for k, s in enumerate(HAIR_STYLES)}

    # background
    cv.img[:] = _col([NAMED_RGB[s.background] for s in sts])

    a, b, cy = g["a"], g["b"], g["cy"]
    # long hair behind the head
    d_back = _box(x, y - (cy + 0.08), a * 1.28, b * 1.05, 0.2)
    cv.paint(np.where(has["long"] > 0, d_back, 9.0), hair)
    # shoulders and neck
    shirt = _col([NAMED_RGB[s.shirt] for s in sts])
    cv.paint(_ellipse(x, y - 1.25, 0.85, 0.45), shirt)
    cv.paint(_box(x, y - (cy + b + 0.05), a * 0.42, 0.2, 0.02), skin * 0.85)
    # ears (hidden by long hair, drawn before the head)
    ear_y = g["ey"] + 0.06
    d_ears = _ellipse(np.abs(x) - a * 0.97, y - ear_y, g["ear_w"], g["ear_h"])
    cv.paint(np.where(has["long"] > 0, 9.0, d_ears), skin * 0.92)
    # head
    d_face = _face_sdf(cv, g)
    cv.paint(d_face, skin)
    face_cov = cv.cover(d_face)
    # hair on top
    hr = np.sqrt(x * x + (y - cy) ** 2) + 1e-6
    wobble = 1.0 + 0.05 * np.sin(14.0 * np.arctan2(y - cy, x)) * has["curly"]
    d_cap = _ellipse(x / wobble, (y - cy + 0.03) / wobble, a * 1.07, b * 1.03)
    hairline = cy - b * 0.50 + 0.30 * b * (x / a) ** 2
    d_cap = np.maximum(d_cap, y - hairline)
    d_bun = np.sqrt(x * x + (y - (cy - b - 0.1)) ** 2) - 0.14
    d_hair = np.where(has["bun"] > 0, np.minimum(d_cap, d_bun), d_cap)
    cv.paint(np.where(has["bald"] > 0, 9.0, d_hair), hair)
    del hr

    # face marks
    mark = np.array([["none", "mole", "freckles"].index(i.mark) for i in ids])
    mx = _p([(i.mark_x - 0.5) for i in ids]) * a * 1.1
    my_ = g["ey"] + 0.15 + 0.2 * _p([i.mark_y for i in ids])
    d_mole = np.sqrt((x - mx) ** 2 + (y - my_) ** 2) - 0.018
    cv.paint(np.where(_p(mark == 1) > 0, d_mole, 9.0), skin * 0.45)
    fx = np.abs(x) - g["ex"]
    fy = y - (g["ey"] + 0.14)
    d_fr = np.minimum(
        np.minimum(np.sqrt((fx + 0.03) ** 2 + fy**2), np.sqrt((fx - 0.03) ** 2 + fy**2)),
        np.sqrt(fx**2 + (fy - 0.04) ** 2),
    )
    cv.paint(np.where(_p(mark == 2) > 0, d_fr - 0.011, 9.0), skin * 0.7, alpha=0.8)
    # cheeks (blush when raised)
    d_cheek = _ellipse(np.abs(x) - g["ex"] * 1.05, y - (g["ey"] + 0.15), 0.08, 0.05)
    cv.paint(d_cheek, (0.95, 0.45, 0.45), alpha=0.45 * g["e_cheek_raise"])

    # eyes: sclera (lids close from above, the cheek pushes the lower lid up), iris, pupil, lid line
    lw = np.maximum(0.012, cv.px * 0.6)
    for side, sign in (("l", -1.0), ("r", 1.0)):
        ex = sign * g["ex"]
        ey = g["ey"]
        op = g["e_eye_open_" + side]
        up = np.maximum(g["eh"] * op, 0.004)
        lo = np.maximum(g["eh"] * op * (1.0 - 0.5 * g["e_cheek_raise"]) * 0.8, 0.004)
        dx, dy = x - ex, y - ey
        d_scl = np.maximum(_ellipse(dx, dy, g["ew"], np.where(dy < 0, up, lo)), np.abs(dx) - g["ew"])
        cv.paint(d_scl, (0.98, 0.98, 0.97))
        ir = g["ew"] * 0.48
        gx = ex + g["e_gaze_x"] * g["ew"] * 0.45
        gy = ey + g["e_gaze_y"] * g["eh"] * 0.35
        d_iris = np.sqrt((x - gx) ** 2 + (y - gy) ** 2)
        iris = _col([EYE_RGB[i.eye_colour] for i in ids])
        cv.paint(np.maximum(d_iris - ir, d_scl), iris)
        cv.paint(np.maximum(d_iris - ir * 0.45, d_scl), (0.05, 0.05, 0.06))
        cv.paint(np.maximum(np.abs(d_scl) - lw, dy - lw), (0.12, 0.08, 0.07))
        # brow: a thick segment; raise moves it up, tilt lifts its inner end
        by = ey - g["eh"] - 0.07 - 0.07 * g["e_brow_raise_" + side]
        tilt = 0.05 * g["e_brow_tilt_" + side]
        inner_x = ex - sign * g["ew"] * 1.1
        outer_x = ex + sign * g["ew"] * 1.1
        d_brow = _segment(x, y, inner_x, by - tilt, outer_x, by + 0.4 * tilt + 0.01) - g["bt"]
        cv.paint(d_brow, brow_col)

    # nose: a soft shadow line and the tip
    ny = g["ny"]
    nose_col = skin * 0.78
    cv.paint(_segment(x, y, 0.01, ny - g["nl"], 0.025, ny - 0.01) - 0.007, nose_col, alpha=0.6)
    cv.paint(_ellipse(x, y - ny, g["nw"], g["nw"] * 0.5), nose_col, alpha=0.8)

    # mouth: centre line curved by smile and smirk, opened by mouth_open, lips thickened by pout
    mw = g["mw"]
    t = np.clip(x / mw, -1.0, 1.0)
    sm = g["e_smirk"]
    centre = g["my"] - g["e_smile"] * 0.07 * t * t - 0.06 * np.abs(sm) * np.clip(np.sign(sm) * t, 0, 1) ** 2
    bulge = g["oh"] * (1.0 - t * t)
    upper = centre - 0.25 * bulge
    lower = centre + bulge
    d_end = np.abs(x) - mw
    lip = g["lip"]
    d_lips = np.maximum(np.maximum(upper - lip - y, y - lower - lip * 1.3), d_end - lip * 0.5)
    lip_col = skin * 0.6 + _F(0.4) * np.array([0.75, 0.28, 0.3], _F)
    cv.paint(d_lips, lip_col, alpha=0.85)
    d_pout = _ellipse(x, y - (centre + 0.4 * bulge), mw * 1.1, lip * 1.6 + 0.5 * bulge + 0.01)
    cv.paint(d_pout, lip_col, alpha=0.9 * np.clip(g["e_pout"] * 1.5, 0, 1))
    d_open = np.maximum(np.maximum(upper - y, y - lower), d_end)
    d_line = np.maximum(np.abs(y - centre) - lw * 0.8, d_end)
    cv.paint(np.minimum(d_open, d_line), (0.35, 0.08, 0.1))
    teeth = np.maximum(d_open, y - (upper + 0.3 * (lower - upper)))
    cv.paint(teeth, (0.97, 0.96, 0.92), alpha=np.clip(g["oh"] / 0.04, 0, 1) * np.clip(g["e_smile"] * 3.0, 0, 1))

    # accessories
    glasses = np.array([["none", "round", "square"].index(s.glasses) for s in sts])
    gw = np.maximum(0.010, cv.px * 0.7)
    for sign in (-1.0, 1.0):
        gx = x - sign * g["ex"]
        gy = y - g["ey"]
        rg = g["ew"] * 1.45
        d_round = np.abs(np.sqrt(gx * gx + gy * gy) - rg) - gw
        d_square = np.abs(_box(gx, gy, rg, rg * 0.75, 0.03)) - gw
        d_g = np.where(_p(glasses == 1) > 0, d_round, np.where(_p(glasses == 2) > 0, d_square, 9.0))
        cv.paint(d_g, (0.1, 0.1, 0.12))
    d_bridge = np.abs(y - g["ey"] + 0.01) - gw
    d_bridge = np.maximum(d_bridge, np.abs(x) - (g["ex"] - g["ew"] * 1.45))
    cv.paint(np.where(_p(glasses > 0) > 0, d_bridge, 9.0), (0.1, 0.1, 0.12))
    hat_on = _p([s.hat != "none" for s in sts])
    hat_col = _col([NAMED_RGB[s.hat] if s.hat != "none" else (0, 0, 0) for s in sts])
    brim_y = cy - b * 0.62
    d_crown = np.maximum(_ellipse(x, y - (brim_y + 0.02), a * 1.05, b * 0.62), y - brim_y)
    d_brim = _box(x, y - brim_y, a * 1.3, 0.035, 0.03)
    cv.paint(np.where(hat_on > 0, np.minimum(d_crown, d_brim), 9.0), hat_col)

    img = cv.img
    fg = cv.fg[..., None]
    # shading: light on a sphere around the head for "shaded", flat fills otherwise
    shading = np.array([s.shading for s in sts])
    shaded = _p(shading == "shaded")[..., None]
    if shaded.any():
        lx = (_p([s.light_x for s in sts]) * 2.0 - 1.0) * 0.8
        nx = np.clip(x / (a * 1.3), -1, 1)
        ny_ = np.clip((y - cy) / (b * 1.3), -1, 1)
        nz = np.sqrt(np.clip(1.0 - nx * nx - ny_ * ny_, 0.0, 1.0))
        lam = np.clip(nx * lx - ny_ * 0.4 + nz * 0.8, 0.0, 1.0)
        light = (0.55 + 0.55 * lam)[..., None]
        bg_light = (1.12 - 0.35 * (y + 1.0) / 2.0)[..., None]
        lit = img * (fg * light + (1.0 - fg) * bg_light)
        img = np.where(shaded > 0, lit, img)
    # palette
    palette = np.array([s.palette for s in sts])
    lum = (img @ np.array([0.299, 0.587, 0.114], _F))[..., None]
    img = np.where(_p(palette == "pastel")[..., None] > 0, 0.55 * img + 0.45, img)
    img = np.where(_p(palette == "vivid")[..., None] > 0, lum + 1.6 * (img - lum), img)
    img = np.where(_p(palette == "monochrome")[..., None] > 0, lum * np.array([1.0, 0.97, 0.9], _F), img)
    img = np.clip(img, 0.0, 1.0)
    # sketch: a light wash of the colours on paper, with dark strokes along every edge
    sketch = _p(shading == "sketch")[..., None]
    if sketch.any():
        gxm = np.zeros_like(img)
        gym = np.zeros_like(img)
        gxm[:, :, 1:] = np.abs(np.diff(img, axis=2))
        gym[:, 1:] = np.abs(np.diff(img, axis=1))
        edge = np.clip((gxm + gym).sum(-1, keepdims=True) * (size / 64.0) * 2.5, 0.0, 1.0)
        drawn = (0.55 * _PAPER + 0.45 * img) * (1.0 - 0.85 * edge)
        img = np.where(sketch > 0, drawn, img)
    del face_cov
    return np.clip(img, 0.0, 1.0)


def render(portraits: Portrait | Sequence[Portrait], size: int = 64) -> Image.Image | list[Image.Image]:
    """Render one portrait to a PIL image, or a sequence of them to a list of images."""
    single = isinstance(portraits, Portrait)
    batch = [portraits] if single else list(portraits)
    arr = (render_array(batch, size) * 255.0 + 0.5).astype(np.uint8)
    images = [Image.fromarray(a, "RGB") for a in arr]
    return images[0] if single else images


def face_geometry(portrait: Portrait, size: int = 64) -> dict:
    """Exact geometry of a portrait in pixels: the face box, five landmarks and the landmark ratios.

    The box is the head ellipse's bounding box (skin only: no hair, ears or hat). Landmarks are the two eye
    centres, the nose tip and the two mouth corners (image left first). Ratios are the LMS-style measures the
    analysers also predict: eye openings over eye width, mouth opening over mouth width, mouth width over face
    width, and brow heights above the eyes over the face height.
    """
    g = _geometry([portrait.identity], [portrait.expression])
    g = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in g.items()}

    def px(v: float) -> float:
        return (v / _ZOOM + 1.0) / 2.0 * size

    py = px

    e = portrait.expression
    smile_corner = g["my"] - e.smile * 0.07
    corner_l = smile_corner - (0.06 * abs(e.smirk) if e.smirk < 0 else 0.0)
    corner_r = smile_corner - (0.06 * abs(e.smirk) if e.smirk > 0 else 0.0)
    landmarks = np.array(
        [
            [px(-g["ex"]), py(g["ey"])],
            [px(g["ex"]), py(g["ey"])],
            [px(0.0), py(g["ny"])],
            [px(-g["mw"]), py(corner_l)],
            [px(g["mw"]), py(corner_r)],
        ],
        dtype=np.float32,
    )
    box = (px(-g["a"]), py(g["cy"] - g["b"]), px(g["a"]), py(g["cy"] + g["b"]))
    brow_l = 0.07 + 0.07 * e.brow_raise_l
    brow_r = 0.07 + 0.07 * e.brow_raise_r
    ratios = {
        "eye_l": e.eye_open_l * g["eh"] * 1.8 / (2 * g["ew"]),
        "eye_r": e.eye_open_r * g["eh"] * 1.8 / (2 * g["ew"]),
        "mouth_open": 1.25 * g["oh"] / (2 * g["mw"]),
        "mouth_width": g["mw"] / g["a"],
        "brow_l": (brow_l + g["eh"]) / (2 * g["b"]),
        "brow_r": (brow_r + g["eh"]) / (2 * g["b"]),
    }
    return {"box": box, "landmarks": landmarks, "ratios": ratios}


RATIO_NAMES = ("eye_l", "eye_r", "mouth_open", "mouth_width", "brow_l", "brow_r")
