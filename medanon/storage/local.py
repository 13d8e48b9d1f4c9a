"""Local filesystem source and target."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .base import EntryChanged, SourceEntry, StorageError, TargetFull

TMP_PREFIX = ".medanon-tmp-"


class LocalSource:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.url = str(self.root)
        self.unlisted_dirs = 0  # folders the last listing could not read: their files are not in it

    def iter_entries(self) -> Iterator[SourceEntry]:
        """Every regular file under the root (symlinks not followed), as (path relative to the root,
        size, mtime in ns). Each run lists every file of the archive, so this works on the strings
        ``scandir`` gives (no Path object per file). A folder that cannot be read (permissions, an
        I/O error) is counted in ``unlisted_dirs`` and the listing goes on."""
        skip = len(os.path.join(str(self.root), ""))  # the root and one separator
        stack = [str(self.root)]
        self.unlisted_dirs = 0
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                self.unlisted_dirs += 1
                continue
            with it:
                dirs = []
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            dirs.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            rel = e.path[skip:]
                            yield SourceEntry(rel if os.sep == "/" else rel.replace(os.sep, "/"), st.st_size,
                                              str(st.st_mtime_ns))
                    except OSError:
                        continue
                stack.extend(sorted(dirs, reverse=True))

    def open(self, relpath: str, token: str | None = None) -> BinaryIO:
        """With the listed ``token`` (the file's mtime then), a file modified since raises
        EntryChanged: it is read by the next run, whose listing sees the new mtime."""
        fh = open(self.root / relpath, "rb")
        if token is not None and str(os.fstat(fh.fileno()).st_mtime_ns) != token:
            fh.close()
            raise EntryChanged("file changed since it was listed")
        return fh

    def open_header(self, entry: SourceEntry) -> BinaryIO:
        return self.open(entry.relpath, entry.token)

    def local_path(self, relpath: str) -> str:
        return str(self.root / relpath)


def advise_dontneed(fd: int) -> None:
    """``posix_fadvise(DONTNEED)`` on a whole file, where the platform has it (a hint: errors are
    ignored). On Linux it starts writing the file's dirty pages back without waiting for them, and
    drops the pages that are already clean from the page cache.

    ``LocalTarget`` calls it twice per file. Right after writing, nothing is clean yet, so it only
    starts the writeback: the batch's ``sync`` then waits for writes already under way instead of
    starting them all at the end of the batch (in threads, where the scrub keeps about one core
    busy, that end-of-batch sync took about 0.5 s of a 2 000-instance run during which nothing else
    ran). After the sync, it drops the now clean pages (``drop_cached``)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


class LocalTarget:
    """Writes via a hidden temp file in the destination folder, then rename; sync() per batch."""

    def __init__(self, root: str | os.PathLike, byte_budget: int | None = None, reserve: int = 1 << 20,
                 fsync_each: bool = False):
        self.root = Path(root).resolve()
        self.url = str(self.root)
        self.byte_budget = byte_budget
        self.reserve = reserve
        self.bytes_written = 0
        # Free space is read from the filesystem at most every RECHECK_BYTES written by this
        # target, and before every write once it is within NEAR_FULL of the reserve; a disk that
        # fills up anyway (other writers) still ends the write with ENOSPC, reported as TargetFull.
        self._free_seen: int | None = None
        self._written_since = 0
        self._made_dirs: set = set()
        # Durability: instead of an fsync per file, sync() flushes a whole batch before the
        # ledger records it (a crash before that leaves files the next run re-checks by SHA-256).
        self.fsync_each = fsync_each

    RECHECK_BYTES = 64 << 20
    NEAR_FULL = 1 << 30

    # -- space -------------------------------------------------------------
    def _disk_free(self) -> int:
        """Free bytes on the filesystem that holds (or will hold) the target root."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def free_bytes(self) -> int | None:
        free = self._disk_free() - self.reserve
        if self.byte_budget is not None:
            free = min(free, self.byte_budget - self.bytes_written)
        return max(free, 0)

    def _check_space(self, size: int, reserved: bool = False) -> None:
        """Refuse a write that would exceed the budget or eat into the reserve (kept for the manifest)."""
        if not reserved and self.byte_budget is not None and self.bytes_written + size > self.byte_budget:
            raise TargetFull(size, self.byte_budget - self.bytes_written)
        if reserved:
            free = self._disk_free()
        else:
            estimate = None if self._free_seen is None else self._free_seen - self._written_since
            if (estimate is None or self._written_since >= self.RECHECK_BYTES
                    or estimate - self.reserve - size < self.NEAR_FULL):
                self._free_seen, self._written_since = self._disk_free(), 0
                estimate = self._free_seen
            free = estimate - self.reserve
        if size + 4096 > free:
            raise TargetFull(size, max(free, 0))

    # -- files -------------------------------------------------------------
    def _dest(self, relpath: str) -> Path:
        if relpath.startswith("/") or ".." in Path(relpath).parts:
            raise StorageError("invalid relative path")
        return self.root / relpath

    def exists_same(self, relpath: str, sha256: str, size: int) -> bool:
        dest = self._dest(relpath)
        try:
            if dest.stat().st_size != size:
                return False
            with open(dest, "rb") as fh:  # in blocks: an output (or the manifest) may be gigabytes
                return hashlib.file_digest(fh, "sha256").hexdigest() == sha256
        except FileNotFoundError:
            return False

    def _write(self, relpath: str, size: int, sha256: str, writer, reserved: bool = False) -> bool:
        if self.exists_same(relpath, sha256, size):
            return False
        self._check_space(size, reserved)
        dest = self._dest(relpath)
        if dest.parent not in self._made_dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(dest.parent)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                if self.fsync_each:
                    os.fsync(fh.fileno())
                else:
                    advise_dontneed(fh.fileno())  # starts its writeback
            os.replace(tmp, dest)
        except OSError as exc:
            _unlink_quiet(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TargetFull(size, self.free_bytes()) from None
            raise StorageError(f"write failed: {errno.errorcode.get(exc.errno, 'EIO')}") from None
        except BaseException:
            _unlink_quiet(tmp)
            raise
        if not reserved:
            self.bytes_written += size
            self._written_since += size
        return True

    def put_bytes(self, relpath: str, data: bytes, sha256: str) -> bool:
        return self._write(relpath, len(data), sha256, lambda fh: fh.write(data))

    def put_stream(self, relpath: str, chunks, sha256: str, size: int) -> bool:
        """Write a large file from an iterator of byte blocks (bounded memory)."""

        def copy(fh):
            for block in chunks:
                fh.write(block)

        return self._write(relpath, size, sha256, copy)

    def put_file(self, relpath: str, local_path: str, sha256: str, reserved: bool = False) -> bool:
        size = os.path.getsize(local_path)

        def copy(fh):
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._write(relpath, size, sha256, copy, reserved=reserved)

    def put_reserved_file(self, relpath: str, local_path: str, sha256: str) -> bool:
        """A bookkeeping file (the manifest) that may use the reserve and is outside the budget."""
        return self.put_file(relpath, local_path, sha256, reserved=True)

    def sync(self) -> None:
        """Make everything written so far durable (called once per batch)."""
        os.sync()

    def drop_cached(self, relpaths: Iterable[str]) -> None:
        """Let the kernel drop these files' pages from its page cache (once they are on disk).

        An export is written once and not read back here: cached, a run larger than the free
        memory fills it with output pages, which the kernel must then reclaim while workers write
        (and which push out what other programs on the machine had cached)."""
        if not hasattr(os, "posix_fadvise"):  # not on this platform: the kernel's page cache policy decides
            return
        for relpath in relpaths:
            try:
                fd = os.open(self._dest(relpath), os.O_RDONLY)
            except OSError:  # gone since: nothing cached to drop
                continue
            try:
                advise_dontneed(fd)
            finally:
                os.close(fd)

    def read_bytes(self, relpath: str) -> bytes:
        return self._dest(relpath).read_bytes()

    def iter_files(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.startswith(TMP_PREFIX):
                    continue
                p = Path(dirpath) / f
                yield p.relative_to(self.root).as_posix(), p.stat().st_size

    def remove_stale_temp(self) -> int:
        """Delete temp files left by a killed run; returns how many."""
        n = 0
        if not self.root.exists():
            return 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if f.startswith(TMP_PREFIX):
                    _unlink_quiet(os.path.join(dirpath, f))
                    n += 1
        return n


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
