"""The synthetic portrait world: a procedural renderer with exact factors, face analysers trained on it, and a
tiny pretrained Stable Diffusion base model (see DESIGN.md section 3)."""

from .factors import (
    EXPRESSION_NAMES,
    EXPRESSION_RANGES,
    TEMPLATES,
    Expression,
    Identity,
    Portrait,
    Style,
    caption,
    sample_portrait,
)
from .render import face_geometry, render, render_array

__all__ = [
    "EXPRESSION_NAMES",
    "EXPRESSION_RANGES",
    "TEMPLATES",
    "Expression",
    "Identity",
    "Portrait",
    "Style",
    "caption",
    "face_geometry",
    "render",
    "render_array",
    "sample_portrait",
]
