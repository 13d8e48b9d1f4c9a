"""Prefect tasks: thin wrappers around medanon's pure stage functions."""

from __future__ import annotations

import functools

from medanon.pipeline import BatchIncomplete


class BatchFailed(RuntimeError):
    """A batch failed unexpectedly. Only the exception type is kept: an exception message may
    quote a value from the data, and Prefect stores task failures and logs on its server."""


def phi_safe(fn):
    """Re-raise any unexpected exception of a batch task without its message or chained context."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BatchIncomplete:
            raise
        except Exception as exc:  # noqa: BLE001
            name = type(exc).__name__
        raise BatchFailed(f"batch task failed ({name})")

    return wrapper
