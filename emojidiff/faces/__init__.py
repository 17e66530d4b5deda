"""Face handling behind one protocol: detection, alignment, masks, identity embeddings, expression."""

from .base import Face, FaceAnalyzer, normalize_embeddings, select_face
from .registry import available_face_analyzers, get_face_analyzer, register_face_analyzer

__all__ = [
    "Face",
    "FaceAnalyzer",
    "available_face_analyzers",
    "get_face_analyzer",
    "normalize_embeddings",
    "register_face_analyzer",
    "select_face",
]
