"""The errors of the training script that are the user's to fix (docs/training.md, "Options").

``python -m fgdkern.train`` reports a UsageError as one line on stderr,
``fgdkern.train: error: <message>``, and exits with code 2, as argparse does
for a bad flag; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A problem with the options or files the user gave (reported, exit code 2)."""


class DataError(UsageError):
    """A dataset file that cannot be used: the message names the file and what is wrong."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    A DataLoader worker's error reaches the main process re-raised with the worker's
    traceback as its message; the last line of that traceback is the original message.
    """
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return lines[-1].removeprefix(prefix)


def brief(exc: BaseException, limit: int = 200) -> str:
    """What went wrong, for inside a one-line message: the first sentence of ``exc``'s text
    with its line breaks folded (load_state_dict lists keys on lines of their own), cut at
    ``limit``. The type is named where the text alone would not say it (KeyError: '101')."""
    text = " ".join(str(exc).split()).split(". ")[0].strip()
    if not isinstance(exc, (RuntimeError, ValueError, OSError)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
