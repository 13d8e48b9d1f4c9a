"""Pure batch logic of each stage, importable and testable without Prefect.

The Prefect tasks in ``tasks/`` are thin wrappers around these functions.
Worker-side functions (``inspect_batch``, ``scrub_batch``) need only the
source, the target and the key (a :class:`WorkerConfig`); they never open the
state store, and what they return to the flow is PHI-free except
``inspect_batch``'s header fields, which the flow keeps in memory and writes to
the state store (that task never persists its result).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from collections import deque
from typing import Callable, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretBytes, field_serializer

from . import __version__
from . import fastpath
from .discover import Inspected, in_memory, inspect_entry
from .keys import Pseudonymizer
from .profile import Profile
from .storage import EntryChanged, SourceEntry, StorageError, TargetFull, open_source, open_target

Layout = Literal["flat", "patient", "study", "series"]
LAYOUTS = ("flat", "patient", "study", "series")


class WorkerConfig(BaseModel):
    """What a batch worker needs: source, target, profile and key (never shown in reprs)."""

    model_config = ConfigDict(frozen=True)

    source: str
    target: str
    profile: Profile
    key: SecretBytes
    layout: Layout = "study"
    allow_burned_in: bool = False
    allow_recognizable_features: bool = False
    byte_budget: int | None = None
    sync: bool = True  # flush each batch to disk before the ledger records it
    # the state store's identity: a cached batch result only stands in for a write recorded by
    # the same state store (a fresh state dir never trusts another run's cache)
    cache_scope: str = ""
    # each side's endpoint, region and possibly credentials (from the run or an S3 block): never in
    # reprs, masked in dumps. A bucket source and a bucket target may be on different services.
    source_options: dict = Field(default_factory=dict, repr=False)
    target_options: dict = Field(default_factory=dict, repr=False)

    _S3_SECRET_OPTIONS: ClassVar[frozenset] = frozenset({"aws_access_key_id", "aws_secret_access_key",
                                                         "session_token"})

    @field_serializer("source_options", "target_options")
    def _mask_s3_secrets(self, opts: dict) -> dict:
        return {k: ("**********" if k in self._S3_SECRET_OPTIONS and v else v) for k, v in opts.items()}

    def open_source(self):
        return open_source(self.source, **self.source_options)

    @property
    def remote_source(self) -> bool:
        """A bucket source: each read is a round trip, so a batch task overlaps its reads
        (``inspect_batch``, ``scrub_batch``)."""
        return self.source.startswith("s3://")

    @property
    def remote_target(self) -> bool:
        """A bucket target: each write is a round trip or two (HEAD, PUT), so a scrub task overlaps
        its writes of small instances (``scrub_batch``)."""
        return self.target.startswith("s3://")

    def open_target(self, byte_budget: int | None = None):
        """The target, with ``byte_budget`` (default: this config's)."""
        return open_target(self.target, byte_budget=self.byte_budget if byte_budget is None else byte_budget,
                           **self.target_options)

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(self.key.get_secret_value(), self.profile.uid_root, self.profile.date_shift_max_days)

    def code_identity(self) -> str:
        """Everything besides the batch content that changes the output (PHI-free)."""
        parts = [__version__, self.profile.identity(), self.pseudonymizer().fingerprint(), self.layout,
                 self.target, str(self.allow_burned_in), self.cache_scope]
        if self.allow_recognizable_features:  # appended only when set: existing cache keys stand
            parts.append("recognizable")
        if self.target.startswith("s3://"):  # the same bucket name on another endpoint is another target
            parts.append(str(self.target_options.get("endpoint_url") or ""))
        return "|".join(parts)


class Batch:
    """A batch's rows, handed to a Prefect task as one object.

    Prefect walks every list, tuple and dict of a task's parameters element by element, looking
    for futures to track: for batch manifests that cost about a second per 2 000 instances. It
    does not walk into other objects. (Its ``opaque`` annotation does the same, but the Dask task
    runner hands the annotation itself to the task instead of its value.)"""

    __slots__ = ("rows",)

    def __init__(self, rows):
        self.rows = list(rows)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def __getstate__(self):
        return self.rows

    def __setstate__(self, rows) -> None:
        self.rows = rows


# ---------------------------------------------------------------------------- discover (inspect)

REMOTE_HEADER_READS = 8  # headers read at once by an inspection task from an S3 source (boto3 pools 10)


def inspect_batch(cfg: WorkerConfig, entries: list[tuple]) -> list[tuple[int, Inspected]]:
    """entries: (file_id, relpath, size, token). Header-only reads, results in the entries' order.

    From an S3 source each header is a ranged GET: ``REMOTE_HEADER_READS`` threads overlap their
    round trips (the parsing still takes turns with the GIL). From a local source, one thread:
    reading a header from disk is almost all Python."""
    from .reports_hook import report_sniffer

    source = cfg.open_source()
    sniffer, memo = report_sniffer(), {}  # the memo is a cache: shared by threads, at worst a value twice

    def one(entry):
        file_id, relpath, size, token = entry
        return file_id, inspect_entry(source, SourceEntry(relpath, size, token), sniffer, memo)

    if not cfg.remote_source or len(entries) < 2:
        return [one(entry) for entry in entries]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(REMOTE_HEADER_READS, thread_name_prefix="medanon-header") as pool:
        return list(pool.map(one, entries))


# ---------------------------------------------------------------------------- remap

def out_path(layout: str, patient: str, study: str, series: str, instance: str) -> str:
    name = f"{instance}.dcm"
    if layout == "flat":
        return name
    if layout == "patient":
        return f"{patient}/{name}"
    if layout == "study":
        return f"{patient}/{study}/{name}"
    if layout == "series":
        return f"{patient}/{study}/{series}/{name}"
    raise ValueError(f"unknown layout {layout!r}")


def remap_rows(rows, pseudo: Pseudonymizer, layout: str, retain_uids: bool = False):
    """Pseudonyms and output paths for manifest rows (no file is read).

    Returns (plans [(file_id, out_relpath)], crosswalk [(kind, original, pseudonym)]).
    """
    plans, cross = [], []
    for r in rows:
        patient = pseudo.patient_id(r["patient_key"])
        study, series, inst = r["study_uid"], r["series_uid"], r["sop_uid"]
        if not retain_uids:
            cross += [("study", study, pseudo.uid(study)), ("series", series, pseudo.uid(series)),
                      ("instance", inst, pseudo.uid(inst))]
        cross.append(("patient", r["patient_key"], patient))
        if r["accession"]:
            cross.append(("accession", f"{study}\x00{r['accession']}", pseudo.accession(study, r["accession"])))
        path = out_path(layout, patient, pseudo.study_code(study), pseudo.series_code(series),
                        pseudo.instance_code(inst))
        plans.append((r["id"], path))
    return plans, cross


# ---------------------------------------------------------------------------- scrub + write

def _ensure_file_meta(ds) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                             ImplicitVRLittleEndian)

    from .scrub import put_element

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    if 0x00020010 not in meta._dict:  # Transfer Syntax UID
        implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (True, True)
        put_element(meta, 0x00020010, "UI",
                    ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    # the writer is medanon, not the modality: its software identity is not carried over
    put_element(meta, 0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID)
    put_element(meta, 0x00020013, "SH", f"MEDANON {__version__}"[:16])
    for meta_tag, tag in ((0x00020002, 0x00080016), (0x00020003, 0x00080018)):  # Media Storage SOP Class, Instance
        if tag in ds._dict:
            put_element(meta, meta_tag, "UI", ds[tag].value)


def prepare(ds, scrubber, ctx=None):
    """Scrub a dataset in place and give it a clean Part 10 file meta and preamble.

    ``ctx``: the instance's ScrubContext when already known (else read from ``ds``)."""
    ctx = scrubber.scrub(ds, ctx)
    _ensure_file_meta(ds)
    ds.preamble = b"\x00" * 128  # the preamble may hold anything (TIFF headers, vendor data)
    return ctx


def deidentify_bytes(ds, scrubber) -> tuple[bytes, object]:
    """Scrub a whole dataset and encode it as a Part 10 file in its original transfer syntax."""
    ctx = prepare(ds, scrubber)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ctx


def manifest_info(out: fastpath.Deidentified, relpath: str) -> dict:
    """A PHI-free manifest row of an exported (already de-identified) instance."""
    return {
        "path": relpath,
        "patient_id": out.field("PatientID"),
        "study_instance_uid": out.field("StudyInstanceUID"),
        "series_instance_uid": out.field("SeriesInstanceUID"),
        "sop_instance_uid": out.field("SOPInstanceUID"),
        "sop_class_uid": out.field("SOPClassUID"),
        "modality": out.field("Modality"),
        "transfer_syntax_uid": str(out.ds.file_meta.get("TransferSyntaxUID", "")),
        "size": out.size,
        "sha256": out.sha256,
    }


class BatchIncomplete(Exception):
    """The target filled up during a batch: carries the PHI-free partial summary.

    Raised (not returned) so that Prefect never caches an incomplete batch."""

    def __init__(self, result: dict):
        self.result = result
        super().__init__(f"batch {result['batch']}: target full after {result['exported']} instances")

    def __reduce__(self):
        return (BatchIncomplete, (self.result,))


REMOTE_READS_AHEAD = 4  # objects a scrub task downloads ahead from an S3 source (each spooled in memory to 64 MiB)


def _opened_in_turn(source, items: list[tuple], ahead: int) -> Iterator[tuple[tuple, Callable]]:
    """(item, open) for each (file_id, relpath, out_relpath, token) in order, where ``open()`` gives
    the item's source stream or raises what ``source.open`` raised.

    With ``ahead`` > 1 the next ``ahead`` items are downloaded in threads while the current one is
    scrubbed (from an S3 source a download is a round trip, or several, plus the transfer; one after
    another, the task would mostly wait). Close the generator when done: streams downloaded but not
    used (a full target ends the batch) are then closed, and downloads not started are cancelled."""
    if ahead <= 1:
        for item in items:
            yield item, (lambda item=item: source.open(item[1], item[3]))
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(ahead, thread_name_prefix="medanon-read")
    rest = iter(items)
    window = deque((item, pool.submit(source.open, item[1], item[3])) for item in itertools.islice(rest, ahead))
    try:
        while window:
            item, download = window.popleft()
            for following in itertools.islice(rest, 1):
                window.append((following, pool.submit(source.open, following[1], following[3])))
            yield item, download.result
    finally:
        for _, download in window:
            download.cancel()
        pool.shutdown(wait=True)
        for _, download in window:
            if not download.cancelled() and download.exception() is None:
                download.result().close()


REMOTE_WRITES_AT_ONCE = 4  # instances a scrub task uploads at once to an S3 target
REMOTE_WRITE_OVERLAP_MAX = 8 << 20  # larger ones one at a time, each a multipart upload of s3.PARTS_AT_ONCE parts at once


class _Uploads:
    """The overlapped writes of a scrub batch to an S3 target: up to ``at_once`` small instances are
    uploaded in threads while the next ones are read and scrubbed. Each write's outcome is given to
    ``settle(n, item, outcome)`` (``outcome()`` returns it or raises what the write raised) in the
    order the instances were submitted. Leaving the ``with`` waits for every write started."""

    def __init__(self, target, at_once: int, settle: Callable):
        from concurrent.futures import ThreadPoolExecutor

        self.target, self.at_once, self.settle = target, at_once, settle
        self.pool = ThreadPoolExecutor(at_once, thread_name_prefix="medanon-write")
        self.window: deque = deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def takes(self, out: fastpath.Deidentified) -> bool:
        return out.parts is not None and out.size <= REMOTE_WRITE_OVERLAP_MAX

    def submit(self, n: int, item: tuple, out: fastpath.Deidentified) -> None:
        upload = self.pool.submit(lambda: (out, fastpath.write(self.target, item[2], out)))
        self.window.append((n, item, upload))
        while len(self.window) > self.at_once:  # at_once uploads go on while the next one is scrubbed
            self.settle(*self._oldest())

    def settle_all(self) -> None:
        while self.window:
            self.settle(*self._oldest())

    def _oldest(self) -> tuple:
        n, item, upload = self.window.popleft()
        return n, item, upload.result


def scrub_batch(cfg: WorkerConfig, batch_no: int, items: list[tuple[int, str, str, str]]) -> dict:
    """items: (file_id, source relpath, out relpath, listed token). Returns a PHI-free summary.

    Per-file failures become quarantine reasons; a full target stops the batch and reports how far
    it got (``target_full``; ``pending``: the file ids from the first refused write on that were not
    written). From an S3 source the next objects are downloaded while one is scrubbed; to an S3
    target, small instances are uploaded while the next ones are scrubbed (``_Uploads``).
    """
    from .scrub import Scrubber

    source = cfg.open_source()
    target = cfg.open_target()
    scrubber = Scrubber(cfg.profile, cfg.pseudonymizer())
    memo = scrubber.element_memo()

    def scrub(ds, ctx=None):
        return prepare(ds, scrubber, ctx)

    result = {"batch": batch_no, "exported": 0, "skipped_identical": 0, "bytes_out": 0,
              "quarantined": {}, "outputs": {}, "target_full": False, "pending": []}
    full_at = len(items)  # the first item a full target refused

    def settle(n: int, item: tuple, outcome: Callable[[], tuple | None]) -> None:
        """Count one item's outcome: (out, written), None (nothing to count yet), or what it raised."""
        nonlocal full_at
        file_id = item[0]
        try:
            done = outcome()
        except TargetFull:
            result["target_full"] = True
            full_at = min(full_at, n)
            return
        except EntryChanged:  # not the version discovery classified and remap planned
            result["quarantined"][file_id] = "changed"
            return
        except StorageError:
            result["quarantined"][file_id] = "write-error"
            return
        except OSError:
            result["quarantined"][file_id] = "read-error"
            return
        if done is None:
            return
        out, written = done
        if written:
            result["exported"] += 1
            result["bytes_out"] += out.size
        else:
            result["skipped_identical"] += 1
        result["outputs"][file_id] = manifest_info(out, item[2])

    def read_scrub_write(n: int, item: tuple, opened: Callable, uploads: _Uploads | None) -> tuple | None:
        with opened() as raw_fh:
            size = raw_fh.seek(0, io.SEEK_END)
            fh = in_memory(raw_fh, size)
            try:
                out = fastpath.deidentify_file(fh, size, scrub, scrubber.keeps_as_read, memo)
            except OSError:
                raise
            except Exception:  # noqa: BLE001 - never crash, never echo a value
                result["quarantined"][item[0]] = "scrub-error"
                return None
            if uploads is not None:
                if uploads.takes(out):
                    uploads.submit(n, item, out)  # its bytes are in memory: settled later, in turn
                    return None
                uploads.settle_all()  # a large one streams from the source now
                if result["target_full"]:
                    return None
            return out, fastpath.write(target, item[2], out)

    ahead = REMOTE_READS_AHEAD if cfg.remote_source else 1
    overlap = cfg.remote_target and REMOTE_WRITES_AT_ONCE > 1
    with contextlib.closing(_opened_in_turn(source, items, ahead)) as in_turn, \
            (_Uploads(target, REMOTE_WRITES_AT_ONCE, settle) if overlap else contextlib.nullcontext()) as uploads:
        for n, (item, opened) in enumerate(in_turn):
            settle(n, item, lambda: read_scrub_write(n, item, opened, uploads))
            if result["target_full"]:  # the batch ends at the first refused write
                break
        if uploads is not None:
            uploads.settle_all()
    if result["target_full"]:
        result["pending"] = [i[0] for i in items[full_at:]
                             if i[0] not in result["outputs"] and i[0] not in result["quarantined"]]
    if cfg.sync:
        make_durable(target, result)  # before the flow records the batch in the ledger
    return result


def make_durable(target, result: dict) -> None:
    """Flush a batch's writes to disk (``target.sync``), then let the kernel drop its output
    files from the page cache (``drop_cached``, local disk): an export is not read back. Nothing
    to do for a batch that wrote nothing, or for a target without ``sync`` (a bucket: a completed
    PUT is durable)."""
    if not result["exported"] or getattr(target, "sync", None) is None:
        return
    target.sync()
    drop = getattr(target, "drop_cached", None)
    if drop is not None:
        drop(row["path"] for row in result["outputs"].values())


# ---------------------------------------------------------------------------- where batch tasks run

AUTO_PROCESSES_FROM = 4000  # files to look at: below this, starting processes costs more than it saves
WORKER_MEMORY = 512 << 20  # what the automatic choice keeps free for each worker process


def worker_processes(requested: int, pending: int, batch_size: int | None, cpus: int | None = None,
                     available_memory: int | None = -1) -> int:
    """Local worker processes for the batch tasks; 1 means threads in the flow process.

    ``requested`` of 1 or more is the operator's choice. 0 is automatic: one process per usable
    CPU, no more than there are batches (of ``batch_size``, or the automatic size in processes) or
    than available memory allows (``WORKER_MEMORY`` each),
    once the run has at least ``AUTO_PROCESSES_FROM`` files to look at; threads otherwise. In
    threads the scrub keeps about one core busy (the GIL); a process costs about 1.5 s to start
    (an interpreter importing Prefect and pydicom), which pays back over a few thousand instances."""
    if requested >= 1:
        return requested
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 2 or pending < AUTO_PROCESSES_FROM:
        return 1
    n = min(cpus, -(-pending // max(1, batch_size or WORKER_BATCH_SIZE)))  # no more than there are batches
    memory = available_memory_bytes() if available_memory == -1 else available_memory
    if memory is not None:
        n = min(n, max(1, memory // WORKER_MEMORY))
    return max(1, n)


# A task run in a worker process or on Dask costs about 0.11 s of worker time (Prefect hydrates its
# settings and context, opens an API client, and records the run's states), against about 5 ms in a
# thread. So batches there are bigger: scrub batches of WORKER_BATCH_SIZE unless the operator gives
# a size (a worker scrubs a CT instance in about 2 ms: 1 250 of them take about 2.5 s, of which the
# task run is about 4 %). Reading a header is a small part of a scrub's work per file, so
# inspection tasks hold INSPECT_BATCH_FACTOR times a scrub batch's files (``inspection_plan``).
DEFAULT_BATCH_SIZE = 500
WORKER_BATCH_SIZE = 1250
INSPECT_BATCH_FACTOR = 4


def batch_size_for(requested: int | None, in_threads: bool) -> int:
    """Instances per scrub task: the operator's choice, else ``DEFAULT_BATCH_SIZE`` in threads and
    ``WORKER_BATCH_SIZE`` in worker processes or on Dask."""
    if requested:
        return requested
    return DEFAULT_BATCH_SIZE if in_threads else WORKER_BATCH_SIZE


def scrub_batch_size(requested: int | None, in_threads: bool, planned: int, processes: int) -> int:
    """Instances per scrub task once remap has counted the ``planned`` ones: the operator's size as
    given, else the automatic size (``batch_size_for``), an ``even_share`` per worker in a small
    run."""
    return requested or even_share(batch_size_for(None, in_threads), planned, processes)


def inspection_plan(batch_size: int, in_threads: bool, max_in_flight: int, pending: int = 0,
                    processes: int = 1) -> tuple[int, int]:
    """(files per inspection task, inspection tasks at once), for scrub batches of ``batch_size``:
    ``INSPECT_BATCH_FACTOR`` times a scrub batch's files (a task run costs a worker process about
    0.1 s; a header is a small part of a scrub's work per file).

    - Worker processes and Dask: ``max_in_flight`` at once, and in a small run an ``even_share`` of
      the ``pending`` files per worker (``processes``).
    - Threads: one at a time. Reading a header from disk is almost all Python (pydicom), so threads
      only take turns with the GIL, and on a VM each hand-over costs more than the short reads
      between them save (2 000 CT headers: 0.23 s in one thread, 0.50 s in four, without Prefect).
      From an S3 source, the task itself overlaps its ranged GETs (``inspect_batch``)."""
    size = batch_size * INSPECT_BATCH_FACTOR
    if in_threads:
        return size, 1
    return even_share(size, pending, processes), max_in_flight


def even_share(size: int, count: int, processes: int) -> int:
    """Items per batch for ``count`` items on ``processes`` worker processes (local, or a Dask
    cluster's workers): ``size``, or, when ``count`` is less than a full batch per process, an even
    share each (rounded up).

    The local process pool starts a process on demand, when a task is submitted while no process is
    idle. With fewer batches than processes, the idle ones would start only at the next stage, one
    after another (about 1.5 s each); on Dask they would stay idle. With a last batch smaller than the
    others, one process would wait for another. Threads (``processes`` <= 1): ``size``."""
    if processes <= 1 or count <= 0:
        return size
    return max(1, min(size, -(-count // processes)))


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.readline().strip()
    except OSError:
        return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = (_read_first_line("/sys/fs/cgroup/cpu.max") or "max").split()
    if quota and quota[0] != "max" and len(quota) == 2 and int(quota[1]) > 0:
        n = min(n, max(1, int(quota[0]) // int(quota[1])))
    return max(1, n)


def available_memory_bytes() -> int | None:
    """Memory available to new processes: MemAvailable, capped by a cgroup v2 memory limit; None if unknown."""
    found = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit, used = _read_first_line("/sys/fs/cgroup/memory.max"), _read_first_line("/sys/fs/cgroup/memory.current")
    if limit and limit != "max" and used and limit.isdigit() and used.isdigit():
        left = max(0, int(limit) - int(used))
        found = left if found is None else min(found, left)
    return found


def default_state_dir() -> str:
    return os.environ.get("MEDANON_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".medanon", "state")
