"""Stage 2: ID-enhanced Contrast Alignment (ICA) fine-tuning on the shared training loop.

Names are imported lazily, so that `emojidiff --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ANIController": ".ani",
    "ANIState": ".ani",
    "ICAConfig": ".config",
    "ICASettings": ".config",
    "DifferentiableFaceModels": ".face_models",
    "available_face_models": ".face_models",
    "get_face_models": ".face_models",
    "register_face_models": ".face_models",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(name)
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


__all__ = sorted(_EXPORTS)
