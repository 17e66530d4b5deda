"""The benchmark harness: metrics generic over a FaceAnalyzer, a runner over method callables, JSON/markdown reports."""

from .metrics import FaceReading, cosine, dict_l1, pearson, read_face
from .runner import METRIC_KEYS, Case, evaluate, expression_error, markdown_table, write_report

__all__ = [
    "METRIC_KEYS",
    "Case",
    "FaceReading",
    "cosine",
    "dict_l1",
    "evaluate",
    "expression_error",
    "markdown_table",
    "pearson",
    "read_face",
    "write_report",
]
