"""Face backends by name.

Backends register a zero-argument factory (so heavy imports happen only when chosen). Backends that live in
optional extras register themselves lazily: their factory imports the extra and raises a one-line
:class:`FaceBackendError` naming the missing package when it is absent.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import FaceBackendError
from .base import FaceAnalyzer

_FACTORIES: dict[str, Callable[[], FaceAnalyzer]] = {}
_INSTANCES: dict[str, FaceAnalyzer] = {}


def register_face_analyzer(name: str, factory: Callable[[], FaceAnalyzer]) -> None:
    """Make a backend available under ``name`` (replacing any backend of that name)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def available_face_analyzers() -> list[str]:
    return sorted(_FACTORIES)


def get_face_analyzer(name: str | FaceAnalyzer) -> FaceAnalyzer:
    """Return the backend registered as ``name`` (instances are created once and reused)."""
    if not isinstance(name, str):
        return name
    if name not in _FACTORIES:
        raise FaceBackendError(
            f"unknown face backend '{name}': available backends are {', '.join(available_face_analyzers())}"
        )
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def _none_factory() -> FaceAnalyzer:
    from .none_backend import NoneFaceAnalyzer

    return NoneFaceAnalyzer()


register_face_analyzer("none", _none_factory)


def _register_real_photo_backends() -> None:
    from .backends import FACTORIES

    for _name, _factory in FACTORIES.items():
        register_face_analyzer(_name, _factory)


_register_real_photo_backends()


def _synthetic_factory(kind: str) -> Callable[[], FaceAnalyzer]:
    def factory() -> FaceAnalyzer:
        from ..synthetic.analysers import SyntheticFaceAnalyzer

        return SyntheticFaceAnalyzer(kind)

    return factory


# The synthetic world's analysers: "synthetic" for training losses, "synthetic-eval" (another architecture, seed and
# identity split) for scoring only.
register_face_analyzer("synthetic", _synthetic_factory("train"))
register_face_analyzer("synthetic-eval", _synthetic_factory("eval"))
