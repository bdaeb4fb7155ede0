"""Exceptions that polyfuse raises on purpose, each carrying where the problem is."""
from __future__ import annotations


class PolyfuseError(Exception):
    """Base class for every error polyfuse raises deliberately."""


class SpecError(PolyfuseError, ValueError):
    """The spec is invalid; the message names the field path, the value and what is allowed."""


class BadInputError(PolyfuseError, ValueError):
    """One value of one record could not be used (missing file, corrupt image, silent audio...).

    ``row`` and ``column`` say where, when known; the message already includes them.
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.reason = message
        self.row = row
        self.column = column


class ArtifactError(PolyfuseError):
    """A saved model directory is missing, corrupt or was modified after saving."""


class MediaTooLarge(BadInputError):
    """An image or audio value whose header promises more than the decode budget allows: refused
    before it is decoded (the server answers 413)."""


class DeadlineExceeded(PolyfuseError):
    """Decoding stopped because the request it serves ran out of time or was cancelled."""


class MissingExtra(PolyfuseError, ImportError):
    """An optional part of polyfuse is not installed; the message names the pip extra that installs
    it (see :mod:`polyfuse.extras`). An ImportError too, so ``except ImportError`` still catches it."""
