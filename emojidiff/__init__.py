"""EmojiDiff: portraits of a given person wearing an exact expression taken from any face image.

An implementation of arXiv 2412.01254 on diffusers.
"""

__version__ = "0.1.0"

from .errors import AdapterError, EmojiDiffError, FaceBackendError, InputError, NoFaceError  # noqa: E402


def __getattr__(name):  # lazy: importing torch/diffusers only when the pipeline is used
    if name == "EmojiDiffPipeline":
        from .pipeline import EmojiDiffPipeline

        return EmojiDiffPipeline
    raise AttributeError(name)


__all__ = [
    "AdapterError",
    "EmojiDiffError",
    "EmojiDiffPipeline",
    "FaceBackendError",
    "InputError",
    "NoFaceError",
    "__version__",
]
