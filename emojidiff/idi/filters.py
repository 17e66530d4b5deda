"""Scores of a candidate target G' and the IDI filters (thresholds from :class:`~emojidiff.idi.config.IDIConfig`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError


@dataclass
class Scores:
    """How a candidate image relates to its template T (person A) and its identity reference B.

    - ``exp_err``: mean absolute difference of the analyser's expression measurements, image vs T (lower is better);
    - ``id_sim``: cosine similarity of identity embeddings, image vs B (higher is better);
    - ``leak_sim``: cosine similarity of identity embeddings, image vs T's own face, i.e. person A (lower is better).
    """

    exp_err: float
    id_sim: float
    leak_sim: float

    @property
    def margin(self) -> float:
        return self.id_sim - self.leak_sim

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def expression_error(a: dict[str, float], b: dict[str, float]) -> float:
    """Mean absolute difference over the measurements both dicts share."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise InputError("the face backend's expression measurements of the two images share no key")
    return float(np.mean([abs(float(a[k]) - float(b[k])) for k in keys]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def identity_reasons(s: Scores, cfg) -> list[str]:
    """Why the identity part of the filter fails (empty: identity is B's and not A's)."""
    out = []
    if not s.id_sim >= cfg.min_identity_sim:
        out.append("identity_not_B")
    if not s.leak_sim <= cfg.max_template_identity_sim:
        out.append("identity_leak_A")
    if not s.margin >= cfg.min_identity_margin:
        out.append("identity_margin")
    return out


def expression_reasons(s: Scores, cfg) -> list[str]:
    return [] if s.exp_err <= cfg.max_expression_error else ["expression_lost"]


def filter_reasons(s: Scores, cfg) -> list[str]:
    """All reasons ``s`` is rejected under ``cfg``'s thresholds; empty means the triplet is kept.

    Keep iff ``exp_err <= max_expression_error``, ``id_sim >= min_identity_sim``,
    ``leak_sim <= max_template_identity_sim`` and ``id_sim - leak_sim >= min_identity_margin``.
    A NaN score fails its test.
    """
    if any(math.isnan(v) for v in (s.exp_err, s.id_sim, s.leak_sim)):
        return ["nan_score"]
    return expression_reasons(s, cfg) + identity_reasons(s, cfg)
