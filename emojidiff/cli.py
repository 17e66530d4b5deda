"""``emojidiff`` command line.

Every user-facing problem is an :class:`~emojidiff.errors.EmojiDiffError`; the CLI prints its one-line message
to stderr and exits 1, never a traceback (set ``EMOJIDIFF_DEBUG=1`` to see one).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import click

from . import __version__
from .errors import EmojiDiffError


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        dlog.set_verbosity_error()
        # Local loads take a second; keep stderr for the denoising progress bar and for errors.
        tlog.disable_progress_bar()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _one_line_warnings() -> None:
    """EmojiDiff's own warnings print as one line, ``warning: ...``, like its errors (not file:line and source)."""
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if category.__module__.startswith("emojidiff."):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def user_errors(fn):
    """Turn EmojiDiffError (and unexpected errors) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmojiDiffError as e:
            if os.environ.get("EMOJIDIFF_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # e.g. `emojidiff models check | head`
            sys.stderr.close()
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - last resort: still one line
            if os.environ.get("EMOJIDIFF_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            click.echo(
                f"error: unexpected {type(e).__name__}: {first} (set EMOJIDIFF_DEBUG=1 for the traceback)", err=True
            )
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emojidiff")
def main() -> None:
    """EmojiDiff: portraits of a given person wearing an exact expression taken from any face image.

    Start with `emojidiff generate --help`.
    """
    _quiet_libraries()
    _one_line_warnings()


# Sub-command modules register themselves on `main` when imported (one import line each, below).
from . import cli_core  # noqa: E402,F401
from .eval import cli as _eval_cli  # noqa: E402,F401
from .faces import cli as _faces_cli  # noqa: E402,F401
from .ica import cli as _ica_cli  # noqa: E402,F401
from .idi import cli as _idi_cli  # noqa: E402,F401
from .probe import cli as _probe_cli  # noqa: E402,F401
from .synthetic import cli as _synthetic_cli  # noqa: E402,F401
from .train import cli as _train_cli  # noqa: E402,F401
