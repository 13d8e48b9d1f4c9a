"""Sources and targets: local disk, and S3-compatible object storage (``s3://bucket/prefix``)."""

from __future__ import annotations

from .base import EntryChanged, SourceEntry, StorageError, Target, TargetFull, Source
from .local import LocalSource, LocalTarget

__all__ = [
    "EntryChanged", "SourceEntry", "StorageError", "Target", "TargetFull", "Source",
    "LocalSource", "LocalTarget", "open_source", "open_target",
]


def open_target(url: str, byte_budget: int | None = None, **s3_options):
    """A target for a local folder or an ``s3://bucket/prefix`` URL."""
    if url.startswith("s3://"):
        from .s3 import S3Target

        return S3Target(url, byte_budget=byte_budget, **s3_options)
    return LocalTarget(url, byte_budget=byte_budget)


def open_source(url: str, **s3_options):
    if url.startswith("s3://"):
        from .s3 import S3Source

        return S3Source(url, **s3_options)
    return LocalSource(url)
