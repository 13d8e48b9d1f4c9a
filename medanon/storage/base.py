"""Storage interfaces shared by every source and target kind.

A *target* receives de-identified files under relative paths built only from
pseudonyms. Every write is atomic (no partial file or object is ever visible)
and idempotent (an existing file with the same SHA-256 is left alone).

A *source* lists entries (relative path, size, a change token such as mtime or
ETag) and opens them for reading. Relative paths of a source may contain PHI:
they never leave the hospital side (state store only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol, runtime_checkable


class StorageError(Exception):
    """A storage operation failed. Messages never carry source paths or PHI."""


class EntryChanged(StorageError, OSError):
    """The entry changed after it was listed: this run does not read it (the next run lists its
    new version and reads that)."""


class TargetFull(StorageError):
    """Writing would exceed the free space or the configured byte budget."""

    def __init__(self, needed: int, available: int | None, reason: str | None = None):
        self.needed = needed
        self.available = available
        super().__init__(f"target full: {reason or f'{needed} bytes needed, {available} available'}")


@dataclass(frozen=True)
class SourceEntry:
    relpath: str  # POSIX-style path relative to the source root (may hold PHI)
    size: int
    token: str  # change token: mtime_ns for files, ETag for objects


@runtime_checkable
class Target(Protocol):
    url: str  # PHI-free description of where output goes

    def exists_same(self, relpath: str, sha256: str, size: int) -> bool:
        """True when relpath already holds exactly these bytes."""

    def put_bytes(self, relpath: str, data: bytes, sha256: str) -> bool:
        """Write atomically; return False when skipped as identical, True when written."""

    def put_file(self, relpath: str, local_path: str, sha256: str) -> bool:
        """Same as put_bytes for a local file (streamed, bounded memory)."""

    def free_bytes(self) -> int | None:
        """Bytes that may still be written (free space or remaining budget); None if unknown."""

    def read_bytes(self, relpath: str) -> bytes: ...

    def iter_files(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(relpath, size) of every file under prefix, hidden temp files excluded."""


@runtime_checkable
class Source(Protocol):
    url: str

    def iter_entries(self) -> Iterator[SourceEntry]: ...

    def open(self, relpath: str, token: str | None = None) -> BinaryIO:
        """A seekable binary stream of the entry. With the entry's listed ``token`` (mtime, ETag),
        an entry changed since it was listed raises EntryChanged instead of being read."""

    def open_header(self, entry: SourceEntry) -> BinaryIO:
        """A seekable binary stream of the entry for reading its header: a remote source
        fetches only the byte ranges that are read."""

    def local_path(self, relpath: str) -> str | None:
        """The entry's local filesystem path, or None for remote sources."""
