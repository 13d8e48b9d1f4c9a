"""Shared fixtures. Tests run with their own Prefect home and keys, never the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medanon.samples import PLANTED_PHI

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEST_KEY = "medanon-test-key-0123456789abcdef"


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the medanon CLI in a subprocess with an isolated Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDANON_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MEDANON_KEY=TEST_KEY,
        PYTHONWARNINGS="ignore",
    )
    return env


def run_cli(args: list[str], env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "medanon.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"medanon {args[0]} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def run_json(args: list[str], env: dict) -> dict:
    proc = run_cli([*args, "--json"], env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative path -> bytes (to compare two outputs whole)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def count_manifest_builds(monkeypatch) -> list:
    """Records the target URL each time manifest.csv is built from the ledger (``manifest_blocks``)."""
    from medanon import export

    built: list = []
    real = export.manifest_blocks

    def counting(store, url):
        built.append(url)
        yield from real(store, url)

    monkeypatch.setattr(export, "manifest_blocks", counting)
    return built


def source_instances(root: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if "cut_" in f:  # the deliberately truncated copy shares its SOP Instance UID
                continue
            try:
                ds = pydicom.dcmread(p, force=True)
            except Exception:  # noqa: BLE001
                continue
            if "SOPInstanceUID" in ds:
                out[p] = ds
    return out


def exported_pairs(sources: dict, outputs: dict, pseudo) -> list[tuple]:
    """(source dataset, where, output dataset) for every output, found by the keyed pseudonym of
    its source's SOP Instance UID. Checks each pair: pixel data bit-exact, transfer syntax kept,
    marked de-identified; and that every output has a source and at least 12 carry pixel data."""
    pairs, pixel_checked = [], 0
    for ds in sources.values():
        new_uid = pseudo.uid(str(ds.SOPInstanceUID))
        if new_uid not in outputs:
            continue
        where, new = outputs[new_uid]
        if "PixelData" in ds:
            assert new.PixelData == ds.PixelData
            pixel_checked += 1
        if "TransferSyntaxUID" in ds.file_meta:
            assert new.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert new.PatientIdentityRemoved == "YES"
        pairs.append((ds, where, new))
    assert len(pairs) == len(outputs) and pixel_checked >= 12
    return pairs


def phi_needles(sources: dict) -> list[bytes]:
    strings = set(PLANTED_PHI)
    for ds in sources.values():
        strings |= {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
        if "FrameOfReferenceUID" in ds:
            strings.add(str(ds.FrameOfReferenceUID))
    out = set()
    for s in strings:
        for enc in ("utf-8", "latin-1"):
            try:
                out.add(s.encode(enc))
                out.add(s.upper().encode(enc))
            except UnicodeEncodeError:
                pass
    return sorted(out)


def resident_pages(path) -> int | None:
    """How many of a file's pages are in the kernel's page cache (mincore(2) on a private mapping);
    None where mincore is not available."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    if size == 0 or not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)  # mapping, not reading: nothing is loaded
    try:
        anchor = ctypes.c_char.from_buffer(mm)
        vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), size, vec)
        del anchor  # the mapping cannot close while a ctypes object points into it
    finally:
        mm.close()
    return sum(v & 1 for v in vec) if rc == 0 else None


def dirty_pages(path) -> int | None:
    """How many of a file's cached pages are dirty, not yet written back (cachestat(2), Linux 6.5+);
    None where cachestat is not available."""
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return None

    class Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class Stat(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in
                    ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    stat = Stat()
    with open(path, "rb") as fh:  # 451: cachestat on x86_64 and aarch64; len 0: to the end of the file
        rc = libc.syscall(ctypes.c_long(451), ctypes.c_int(fh.fileno()), ctypes.byref(Range(0, 0)),
                          ctypes.byref(stat), ctypes.c_uint(0))
    return stat.nr_dirty if rc == 0 else None


def fs_type(path) -> str | None:
    """The filesystem type holding ``path`` (from /proc/mounts), e.g. 'tmpfs', where it can be read."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return None
    path = os.path.realpath(path)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None
