"""User-facing errors.

Every problem with what a user passed in (a file, an embedding, an adapter, a backend name) is raised as
an :class:`EmojiDiffError` whose message is one sentence naming the input and what is wrong. The CLI prints
that sentence alone (no traceback) and exits non-zero.
"""

from __future__ import annotations


class EmojiDiffError(Exception):
    """Base class: a one-line, user-facing error."""


class InputError(EmojiDiffError, ValueError):
    """A file or value given by the user is missing, corrupt or of the wrong kind."""


class NoFaceError(InputError):
    """No usable face was found in an image."""


class AdapterError(EmojiDiffError):
    """An adapter folder is missing, malformed, or made for another base model."""


class FaceBackendError(EmojiDiffError):
    """A face backend is unknown, not installed, or cannot do what was asked."""


class ModelMissingError(FaceBackendError):
    """A model file that a backend needs is not present on this machine."""


class BaseMismatchWarning(UserWarning):
    """An adapter is loaded into another version of the base it was trained on (same architecture, other weights)."""
