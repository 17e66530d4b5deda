"""The factors of the synthetic portrait world: identity, expression and style, all known exactly.

Every portrait is fully described by three small dataclasses. Identities are sampled from an integer id (so a
data split is just a range of ids), expressions from a set of named templates plus jitter, styles from a few
categorical and continuous choices. Left and right always mean the *image's* left and right, as the viewer
sees them (``eye_open_l`` is the eye on the left half of the picture).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

HAIR_COLOURS = ("black", "brown", "blonde", "red", "grey")
HAIR_STYLES = ("bald", "short", "long", "curly", "bun")
EYE_COLOURS = ("brown", "blue", "green", "grey")
MARKS = ("none", "mole", "freckles")
BACKGROUNDS = ("blue", "green", "red", "yellow", "purple", "grey", "orange", "pink")
SHADINGS = ("flat", "shaded", "sketch")
PALETTES = ("natural", "pastel", "vivid", "monochrome")
GLASSES = ("none", "round", "square")
HAT_COLOURS = ("red", "blue", "green", "black", "yellow")

#: RGB in [0, 1] for the named colours used by backgrounds, hats and shirts.
NAMED_RGB = {
    "blue": (0.30, 0.50, 0.85),
    "green": (0.35, 0.70, 0.40),
    "red": (0.85, 0.30, 0.28),
    "yellow": (0.95, 0.85, 0.35),
    "purple": (0.60, 0.40, 0.78),
    "grey": (0.62, 0.62, 0.64),
    "orange": (0.95, 0.60, 0.25),
    "pink": (0.95, 0.65, 0.78),
    "black": (0.15, 0.15, 0.17),
    "white": (0.95, 0.95, 0.95),
}
HAIR_RGB = {
    "black": (0.10, 0.09, 0.09),
    "brown": (0.40, 0.25, 0.13),
    "blonde": (0.90, 0.76, 0.42),
    "red": (0.75, 0.30, 0.12),
    "grey": (0.70, 0.70, 0.70),
}
EYE_RGB = {
    "brown": (0.40, 0.24, 0.10),
    "blue": (0.25, 0.50, 0.90),
    "green": (0.25, 0.62, 0.30),
    "grey": (0.52, 0.56, 0.6),
}


@dataclass
class Identity:
    """Who the person is. Continuous factors are in [0, 1]; categorical ones are names."""

    face_width: float = 0.5
    face_length: float = 0.5
    jaw: float = 0.5  # 0 = round chin, 1 = narrow/pointed chin
    skin_tone: float = 0.3  # 0 = light, 1 = dark
    hair_colour: str = "brown"
    hair_style: str = "short"
    hair_shade: float = 0.5  # small per-person variation of the hair colour
    eye_colour: str = "brown"
    eye_spacing: float = 0.5
    eye_size: float = 0.5
    eye_height: float = 0.5
    nose_length: float = 0.5
    nose_width: float = 0.5
    brow_thickness: float = 0.5
    mouth_width: float = 0.5
    lip_fullness: float = 0.5
    ear_size: float = 0.5
    mark: str = "none"
    mark_x: float = 0.5
    mark_y: float = 0.5

    @classmethod
    def from_id(cls, identity_id: int, world_seed: int = 0) -> Identity:
        """The identity with this integer id (deterministic: the same id is always the same person)."""
        rng = np.random.default_rng([world_seed, 7919, int(identity_id)])
        u = rng.random(14)
        return cls(
            face_width=float(u[0]),
            face_length=float(u[1]),
            jaw=float(u[2]),
            skin_tone=float(u[3]),
            hair_colour=str(rng.choice(HAIR_COLOURS)),
            hair_style=str(rng.choice(HAIR_STYLES, p=[0.12, 0.28, 0.25, 0.2, 0.15])),
            hair_shade=float(u[4]),
            eye_colour=str(rng.choice(EYE_COLOURS)),
            eye_spacing=float(u[5]),
            eye_size=float(u[6]),
            eye_height=float(u[7]),
            nose_length=float(u[8]),
            nose_width=float(u[9]),
            brow_thickness=float(u[10]),
            mouth_width=float(u[11]),
            lip_fullness=float(u[12]),
            ear_size=float(u[13]),
            mark=str(rng.choice(MARKS, p=[0.6, 0.2, 0.2])),
            mark_x=float(rng.random()),
            mark_y=float(rng.random()),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: (name, low, high) of every expression factor, in the order of expression vectors.
EXPRESSION_RANGES: tuple[tuple[str, float, float], ...] = (
    ("smile", -1.0, 1.0),  # negative = frown (mouth corners down)
    ("mouth_open", 0.0, 1.0),
    ("eye_open_l", 0.0, 1.0),
    ("eye_open_r", 0.0, 1.0),
    ("brow_raise_l", -1.0, 1.0),
    ("brow_raise_r", -1.0, 1.0),
    ("brow_tilt_l", -1.0, 1.0),  # positive = inner end up (worried), negative = inner end down (angry)
    ("brow_tilt_r", -1.0, 1.0),
    ("gaze_x", -1.0, 1.0),  # positive = looking towards the image's right
    ("gaze_y", -1.0, 1.0),  # positive = looking down
    ("cheek_raise", 0.0, 1.0),
    ("smirk", -1.0, 1.0),  # positive raises the image-right mouth corner, negative the left one
    ("pout", 0.0, 1.0),
)
EXPRESSION_NAMES = tuple(n for n, _, _ in EXPRESSION_RANGES)


@dataclass
class Expression:
    smile: float = 0.0
    mouth_open: float = 0.0
    eye_open_l: float = 0.7
    eye_open_r: float = 0.7
    brow_raise_l: float = 0.0
    brow_raise_r: float = 0.0
    brow_tilt_l: float = 0.0
    brow_tilt_r: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    cheek_raise: float = 0.0
    smirk: float = 0.0
    pout: float = 0.0

    def to_vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in EXPRESSION_NAMES], dtype=np.float32)

    @classmethod
    def from_vector(cls, v) -> Expression:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return cls(**{n: float(np.clip(x, lo, hi)) for (n, lo, hi), x in zip(EXPRESSION_RANGES, v, strict=True)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Expression:
        names = set(EXPRESSION_NAMES)
        return cls(**{k: float(v) for k, v in d.items() if k in names})

    def mirrored(self) -> Expression:
        """The same expression seen in a mirror (left and right swapped)."""
        return Expression(
            smile=self.smile,
            mouth_open=self.mouth_open,
            eye_open_l=self.eye_open_r,
            eye_open_r=self.eye_open_l,
            brow_raise_l=self.brow_raise_r,
            brow_raise_r=self.brow_raise_l,
            brow_tilt_l=self.brow_tilt_r,
            brow_tilt_r=self.brow_tilt_l,
            gaze_x=-self.gaze_x,
            gaze_y=self.gaze_y,
            cheek_raise=self.cheek_raise,
            smirk=-self.smirk,
            pout=self.pout,
        )


def _both(**kw) -> dict:
    """Expand symmetric shorthands (eye_open, brow_raise, brow_tilt) to the per-side factors."""
    out = {}
    for k, v in kw.items():
        if k in ("eye_open", "brow_raise", "brow_tilt"):
            out[k + "_l"] = v
            out[k + "_r"] = v
        else:
            out[k] = v
    return out


#: Named expression templates (the expression gallery and the caption words are built from these).
TEMPLATES: dict[str, Expression] = {
    "neutral": Expression(),
    "smile": Expression(**_both(smile=0.8, cheek_raise=0.4, eye_open=0.6)),
    "grin": Expression(**_both(smile=1.0, mouth_open=0.45, cheek_raise=0.8, eye_open=0.45)),
    "laugh": Expression(**_both(smile=0.9, mouth_open=0.9, cheek_raise=0.9, eye_open=0.2, brow_raise=0.3)),
    "frown": Expression(**_both(smile=-0.8, brow_raise=-0.5, brow_tilt=-0.6, eye_open=0.6)),
    "sad": Expression(**_both(smile=-0.6, brow_tilt=0.9, brow_raise=0.1, eye_open=0.5, gaze_y=0.5)),
    "surprise": Expression(**_both(mouth_open=0.8, eye_open=1.0, brow_raise=1.0)),
    "wink_left": Expression(smile=0.6, cheek_raise=0.5, eye_open_l=0.0, eye_open_r=0.7, smirk=-0.3),
    "wink_right": Expression(smile=0.6, cheek_raise=0.5, eye_open_l=0.7, eye_open_r=0.0, smirk=0.3),
    "pout": Expression(**_both(pout=1.0, smile=-0.1, brow_raise=0.2, eye_open=0.65)),
    "sceptical": Expression(
        eye_open_l=0.75, eye_open_r=0.45, brow_raise_l=0.9, brow_raise_r=-0.4, brow_tilt_r=-0.4, smirk=0.7
    ),
    "angry": Expression(**_both(smile=-0.5, mouth_open=0.2, brow_raise=-0.7, brow_tilt=-1.0, eye_open=0.55)),
    "sleepy": Expression(**_both(eye_open=0.12, brow_raise=-0.2, mouth_open=0.1)),
    "look_left": Expression(**_both(gaze_x=-1.0, eye_open=0.7)),
    "look_up": Expression(**_both(gaze_y=-1.0, eye_open=0.85, brow_raise=0.5)),
    "worried": Expression(**_both(brow_tilt=1.0, brow_raise=0.6, eye_open=0.95, mouth_open=0.25, smile=-0.3)),
}

#: The caption word of each template.
TEMPLATE_WORDS = {
    "neutral": "calm",
    "smile": "smiling",
    "grin": "grinning",
    "laugh": "laughing",
    "frown": "frowning",
    "sad": "sad",
    "surprise": "surprised",
    "wink_left": "winking",
    "wink_right": "winking",
    "pout": "pouting",
    "sceptical": "sceptical",
    "angry": "angry",
    "sleepy": "sleepy",
    "look_left": "glancing",
    "look_up": "glancing",
    "worried": "worried",
}

_SPANS = np.array([hi - lo for _, lo, hi in EXPRESSION_RANGES], dtype=np.float32)
_TEMPLATE_MATRIX = np.stack([t.to_vector() for t in TEMPLATES.values()])


def nearest_template(expr: Expression) -> str:
    """The named template closest to ``expr`` (range-normalised L1 distance)."""
    d = np.abs((_TEMPLATE_MATRIX - expr.to_vector()[None]) / _SPANS).sum(axis=1)
    return list(TEMPLATES)[int(np.argmin(d))]


#: Below this range-normalised L1 distance to its nearest template an expression is that template's (jittered
#: template draws: 95th percentile 0.76, 99th 0.89; uniform draws: 5th percentile 2.36).
NAMED_DISTANCE = 1.5


def template_distance(expr: Expression) -> float:
    """Range-normalised L1 distance from ``expr`` to its nearest named template."""
    return float(np.abs((_TEMPLATE_MATRIX - expr.to_vector()[None]) / _SPANS).sum(axis=1).min())


def expression_caption(expr: Expression) -> str:
    """A caption naming only the expression, e.g. 'a smiling person'."""
    return f"a {TEMPLATE_WORDS[nearest_template(expr)]} person"


def sample_expression(rng: np.random.Generator, uniform_prob: float = 0.3, jitter: float = 0.12) -> Expression:
    """A template with jitter (most of the time) or a uniformly random factor vector (``uniform_prob``)."""
    return sample_expression_with_source(rng, uniform_prob, jitter)[0]


def sample_expression_with_source(
    rng: np.random.Generator, uniform_prob: float = 0.3, jitter: float = 0.12
) -> tuple[Expression, bool]:
    """:func:`sample_expression` (same draws from ``rng``), and whether the vector was drawn uniformly. Template
    draws keep the templates' correlations (a frown tilts the brows), so an analyser can score well on them by
    recognising the template; uniform draws tell whether it reads each factor on its own."""
    lo = np.array([r[1] for r in EXPRESSION_RANGES])
    hi = np.array([r[2] for r in EXPRESSION_RANGES])
    uniform = bool(rng.random() < uniform_prob)
    if uniform:
        v = lo + rng.random(len(lo)) * (hi - lo)
    else:
        v = _TEMPLATE_MATRIX[rng.integers(len(_TEMPLATE_MATRIX))] + rng.normal(0, jitter, len(lo)) * (hi - lo) / 2
    return Expression.from_vector(np.clip(v, lo, hi)), uniform


@dataclass
class Style:
    background: str = "blue"
    shading: str = "flat"
    palette: str = "natural"
    glasses: str = "none"
    hat: str = "none"  # "none" or a colour of HAT_COLOURS
    shirt: str = "grey"
    light_x: float = 0.5  # light direction for the shaded style, 0 = from the left, 1 = from the right

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Style:
        return cls(
            background=str(rng.choice(BACKGROUNDS)),
            shading=str(rng.choice(SHADINGS)),
            palette=str(rng.choice(PALETTES, p=[0.4, 0.2, 0.2, 0.2])),
            glasses=str(rng.choice(GLASSES, p=[0.7, 0.15, 0.15])),
            hat="none" if rng.random() < 0.8 else str(rng.choice(HAT_COLOURS)),
            shirt=str(rng.choice(list(NAMED_RGB))),
            light_x=float(rng.random()),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Style:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Portrait:
    """One picture: who, wearing what expression, drawn how."""

    identity_id: int
    identity: Identity
    expression: Expression
    style: Style

    def caption(self) -> str:
        return caption(self.identity, self.expression, self.style)

    def to_record(self) -> dict:
        return {
            "identity_id": int(self.identity_id),
            "identity": self.identity.to_dict(),
            "expression": self.expression.to_dict(),
            "expression_name": nearest_template(self.expression),
            "style": self.style.to_dict(),
            "caption": self.caption(),
        }

    @classmethod
    def from_record(cls, rec: dict) -> Portrait:
        return cls(
            identity_id=int(rec["identity_id"]),
            identity=Identity.from_dict(rec["identity"]),
            expression=Expression.from_dict(rec["expression"]),
            style=Style.from_dict(rec["style"]),
        )


def sample_portrait(rng: np.random.Generator, identity_ids: tuple[int, int] = (0, 100_000), world_seed: int = 0):
    """A random portrait whose identity id is drawn from ``range(*identity_ids)``."""
    iid = int(rng.integers(*identity_ids))
    return Portrait(iid, Identity.from_id(iid, world_seed), sample_expression(rng), Style.sample(rng))


def caption(identity: Identity, expression: Expression, style: Style, name_expression: bool = True) -> str:
    """e.g. 'a shaded pastel portrait of a smiling person with red curly hair, blue eyes and glasses, on a green
    background'. Every style factor and the main appearance factors are named, so prompts can steer them;
    ``name_expression=False`` leaves the expression word out ('... of a person with ...')."""
    word = TEMPLATE_WORDS[nearest_template(expression)] + " " if name_expression else ""
    palette, accessories = style_words(style)
    hair = "bald" if identity.hair_style == "bald" else f"{identity.hair_colour} {identity.hair_style} hair"
    parts = [hair, f"{identity.eye_colour} eyes", *accessories]
    if identity.hair_style == "bald":
        who = f"a {word}bald person with " + _join(parts[1:])
    else:
        who = f"a {word}person with " + _join(parts)
    return f"a {style.shading} {palette}portrait of {who}, on a {style.background} background"


def style_words(style: Style) -> tuple[str, list[str]]:
    """The caption words of a style besides shading and background: the palette prefix ('' for natural, else
    'pastel ' ...) and the accessories ('round glasses', 'a red hat'), shared by full and style-only captions."""
    palette = "" if style.palette == "natural" else style.palette + " "
    accessories = [f"{style.glasses} glasses"] if style.glasses != "none" else []
    if style.hat != "none":
        accessories.append(f"a {style.hat} hat")
    return palette, accessories


#: the values of each style field a caption names ('none': no glasses, no hat)
CAPTIONED_STYLE_VALUES = {
    "background": BACKGROUNDS,
    "shading": SHADINGS,
    "palette": PALETTES,
    "glasses": GLASSES,
    "hat": ("none", *HAT_COLOURS),
}
#: the style fields a caption names, each of which :func:`style_swapped` can change
CAPTIONED_STYLE_FIELDS = tuple(CAPTIONED_STYLE_VALUES)


def style_swapped(style: Style, name: str, rng: np.random.Generator) -> Style:
    """``style`` with the captioned field ``name`` set to another of its values, drawn uniformly: the style of a
    hard-negative caption, one word away from the true one (glasses and hats may appear or go; glasses worn change
    shape, the one difference a caption names that in-batch negatives almost never show)."""
    if name == "glasses" and style.glasses != "none":
        return replace(style, glasses="square" if style.glasses == "round" else "round")
    other = [v for v in CAPTIONED_STYLE_VALUES[name] if v != getattr(style, name)]
    return replace(style, **{name: str(rng.choice(other))})


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_vocabulary() -> list[str]:
    """Every word any caption can contain (the base model's tokenizer is built from these)."""
    words = set("a of portrait person with hair eyes and glasses hat on background bald".split())
    words |= set(TEMPLATE_WORDS.values()) | set(HAIR_COLOURS) | set(HAIR_STYLES) | set(EYE_COLOURS)
    words |= set(BACKGROUNDS) | set(SHADINGS) | set(PALETTES) | set(GLASSES) | set(HAT_COLOURS)
    words.discard("none")
    return sorted(words)
