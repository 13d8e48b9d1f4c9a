#!/usr/bin/env python
"""medanon performance benchmark (issue "5/5 Performance").

Builds an archive of N copies of pydicom-data's real 512x512 CT (``693_UNCI.dcm``), each with its
own patient/study/series/instance identity and PHI-ish names, in nested folders, then times on that
same archive:

    medanon    the CLI end to end (``medanon run SRC OUT --json``, fresh state dir and PREFECT_HOME:
               wall time includes Python/Prefect start-up; the flow's own "seconds" is reported too)
    cp         ``cp -r SRC DST`` (the I/O floor)
    pydicom    a single-process dcmread + save_as loop over every file (the parse/encode floor)
    dicognito  ``dicognito --output-directory OUT --quiet SRC`` (via its main())
    deid       ``deid.dicom.get_files`` + ``replace_identifiers`` with the default recipe

Usage:
    python bench/bench.py --n 2000 [--workdir DIR] [--tools medanon,cp,pydicom,dicognito,deid] [--json]
    python bench/bench.py --n 20000 --memory [--workdir DIR]      # medanon only: peak RSS

Every tool runs as a child process of this script; the bench measures its wall time (and, for
medanon, the peak RSS of the process and of its whole process tree, which includes Prefect's
ephemeral API server). Tools that are not installed are reported as ``skipped``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata, util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ALL_TOOLS = ("medanon", "cp", "pydicom", "dicognito", "deid")
SOURCE_FILE = "693_UNCI.dcm"
RESULT_MARK = "BENCH_RESULT "

FIRST = ["Agnieszka", "José", "Taro", "Siobhan", "Chinedu", "Astrid", "Mehmet", "Olga", "Priya", "Lars",
         "Fatima", "Giulia", "Hiroshi", "Noor", "Pedro", "Ingrid", "Kwame", "Mei", "Tomasz", "Aoife"]
LAST = ["Kowalczyk", "Fernandez", "Yamada", "Brennan", "Okonkwo", "Lindqvist", "Yilmaz", "Petrova", "Sharma",
        "Johansson", "Haddad", "Rossi", "Tanaka", "Rahman", "Silva", "Berg", "Mensah", "Chen", "Nowak", "Byrne"]
STREETS = ["Rue des Lilas", "Baker Street", "Harbor Boulevard", "Main Street", "Kastanienallee", "Via Roma"]
DOCTORS = ["Okonkwo^Chinedu^^Dr", "Lindqvist^Astrid", "Brennan^Siobhan^^Dr.", "House^Gregory^^Dr"]
INSTITUTIONS = ["St. Bartholomew Riverside Hospital", "Springfield General", "Klinikum Nord"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ archive

def build_archive(root: Path, n: int, seed: int = 5) -> dict:
    """Write n instances under root: ~n/200 patients, 2 studies of one ~100-instance series each.

    The source file is read once; each copy is the same in-memory dataset with its identity
    attributes overwritten, then written. File basenames are unique across the tree (deid writes
    its output flat, by basename)."""
    import pydicom
    from pydicom.uid import generate_uid

    from medanon.samples import data_file

    rng = random.Random(seed)
    t0 = time.perf_counter()
    ds = pydicom.dcmread(data_file(SOURCE_FILE))
    ds.SpecificCharacterSet = "ISO_IR 192"
    per_series, per_patient = 100, 200
    n_bytes = 0
    patient = study = series = None
    for i in range(n):
        p, s = divmod(i, per_patient)
        if i % per_patient == 0:  # new patient
            first, last = rng.choice(FIRST), rng.choice(LAST)
            patient = {
                "PatientID": f"MRN{rng.randint(1000000, 9999999)}",
                "PatientName": f"{last}^{first}",
                "PatientBirthDate": f"19{rng.randint(30, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                "PatientSex": rng.choice("MF"),
                "PatientAddress": f"{rng.randint(1, 300)} {rng.choice(STREETS)}",
                "PatientTelephoneNumbers": f"0{rng.randint(10, 99)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                "OtherPatientNames": f"{last.upper()}^{first.upper()}",
                "InstitutionName": rng.choice(INSTITUTIONS),
                "site": f"site{p % 3}",
            }
        if i % per_series == 0:  # new series (and, every 100 instances here, a new study)
            sno = s // per_series
            study = {
                "StudyInstanceUID": generate_uid(),
                "StudyDate": f"20{rng.randint(10, 24)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                "AccessionNumber": f"ACC{rng.randint(10**7, 10**8 - 1)}",
                "StudyID": str(rng.randint(1000, 9999)),
                "ReferringPhysicianName": rng.choice(DOCTORS),
                "StudyDescription": f"CT THORAX {patient['PatientName'].split('^')[0]}",
            }
            series = {"SeriesInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
                      "SeriesNumber": sno + 1, "OperatorsName": rng.choice(DOCTORS)}
        for kw, v in patient.items():
            if kw != "site":
                setattr(ds, kw, v)
        for kw, v in study.items():
            setattr(ds, kw, v)
        for kw, v in series.items():
            setattr(ds, kw, v)
        ds.SeriesDate = ds.ContentDate = study["StudyDate"]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        k = i % per_series
        ds.InstanceNumber = k + 1
        ds.SliceLocation = f"{-k * 1.25:.2f}"
        ds.ImageComments = f"follow-up for {patient['PatientName'].replace('^', ' ')}"
        folder = (root / patient["site"] / patient["PatientID"] / f"{study['StudyDate']}_{study['AccessionNumber']}"
                  / f"S{series['SeriesNumber']:03d}")
        if k == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"IMG{i:06d}" + (".dcm" if i % 2 == 0 else ""))  # some without extension
        ds.save_as(path, enforce_file_format=True)
        n_bytes += path.stat().st_size
        if (i + 1) % 5000 == 0:
            log(f"  {i + 1}/{n} written")
    return {"files": n, "bytes": n_bytes, "patients": (n + per_patient - 1) // per_patient,
            "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------------ child runs

PYDICOM_CHILD = r"""
import json, os, sys, time
import pydicom
src, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter(); n = 0
for root, dirs, files in os.walk(src):
    od = os.path.join(out, os.path.relpath(root, src))
    os.makedirs(od, exist_ok=True)
    for f in files:
        ds = pydicom.dcmread(os.path.join(root, f))
        ds.save_as(os.path.join(od, f))
        n += 1
print("BENCH_RESULT " + json.dumps({"files": n, "seconds": time.perf_counter() - t0}))
"""

# The fixed cost of any medanon run: Python start-up, medanon's imports (Prefect, pydicom), and a
# Prefect flow run that does nothing, with medanon's default task runner, created and torn down
# through the same API. No file is read or written. Then the cost of one task run: TASKS no-op
# task runs submitted as medanon submits its batches, timed inside a second flow run. Then what a
# task run costs a worker process (as medanon's runs of 4 000 files or more use): POOL_TASKS task
# runs that each sleep POOL_WORK s, on 2 processes started beforehand; the time beyond the sleeps.
FLOOR_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import flows.anonymize  # everything a medanon run imports
from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
imported = time.perf_counter() - t0
TASKS = 40
POOL_TASKS, POOL_WORK, POOL = 20, 0.2, 2

@task
def noop(n):
    return n

@flow(name="medanon-bench-floor", persist_result=False)
def floor(tasks):
    # task runs are timed inside the flow run: its own start-up and teardown vary by up to 1 s
    with ThreadPoolTaskRunner(max_workers=4) as runner:
        t, c = time.perf_counter(), time.process_time()
        for n in range(tasks):
            runner.submit(noop, {"n": n}).result()
        return time.perf_counter() - t, time.process_time() - c

@task
def busy(n, seconds):
    time.sleep(seconds)  # stands in for a batch's work
    return n

@flow(name="medanon-bench-floor-pool", persist_result=False)
def pool_floor(tasks, work):
    with ProcessPoolTaskRunner(max_workers=POOL) as runner:
        [f.result() for f in [runner.submit(busy, {"n": -1 - i, "seconds": 0.0}) for i in range(POOL)]]  # start
        t = time.perf_counter()
        [f.result() for f in [runner.submit(busy, {"n": n, "seconds": work}) for n in range(tasks)]]
        return time.perf_counter() - t

if __name__ == "__main__":
    t1 = time.perf_counter()
    floor(0)
    empty = time.perf_counter() - t1
    t2 = time.perf_counter()
    elapsed, cpu = floor(TASKS)
    pooled = pool_floor(POOL_TASKS, POOL_WORK)
    second = time.perf_counter() - t2
    print("BENCH_RESULT " + json.dumps({"imports": imported, "flow_call": empty, "second_flow": second,
                                         "task_run": elapsed / TASKS, "task_run_cpu": cpu / TASKS,
                                         "pool_task_run": (pooled * POOL - POOL_TASKS * POOL_WORK) / POOL_TASKS}))
"""

DICOGNITO_CHILD = r"""
import json, sys, time
from dicognito.__main__ import main
src, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
main(["--output-directory", out, "--quiet", src])
print("BENCH_RESULT " + json.dumps({"seconds": time.perf_counter() - t0}))
"""

DEID_CHILD = r"""
import json, os, sys, time
from deid.dicom import get_files, replace_identifiers
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
t0 = time.perf_counter()
files = list(get_files(src))
replace_identifiers(files, save=True, output_folder=out)   # default recipe
print("BENCH_RESULT " + json.dumps({"files": len(files), "seconds": time.perf_counter() - t0}))
"""


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def bytes_written() -> int:
    """Bytes this process has passed to write calls so far (``wchar`` of /proc/self/io): what the
    state store benches count per file, its pages and journals included."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class TreeRssSampler(threading.Thread):
    """Polls the RSS of a process and of its whole tree (sum over descendants)."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main = self.peak_tree = 0
        self.max_procs = 1
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kids = _proc_children()
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += kids.get(p, [])
            self.peak_main = max(self.peak_main, _rss(self.pid))
            self.peak_tree = max(self.peak_tree, sum(_rss(p) for p in tree))
            self.max_procs = max(self.max_procs, len(tree))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_child(cmd: list[str], env: dict, log_base: Path, sample_rss: bool = False) -> dict:
    """Run cmd; wall time, exit code, rusage (wait4: this child and the descendants it reaped)."""
    with open(f"{log_base}.out", "wb") as out, open(f"{log_base}.err", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        sampler = TreeRssSampler(proc.pid) if sample_rss else None
        if sampler:
            sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler:
            sampler.stop()
    res = {"rc": proc.returncode, "wall": round(wall, 3), "maxrss_mb": round(ru.ru_maxrss / 1024, 1),
           "user_cpu": round(ru.ru_utime, 2), "sys_cpu": round(ru.ru_stime, 2)}
    if sampler:
        res["peak_rss_main_mb"] = round(sampler.peak_main / 2**20, 1)
        res["peak_rss_tree_mb"] = round(sampler.peak_tree / 2**20, 1)
        res["max_processes"] = sampler.max_procs
    stdout = Path(f"{log_base}.out").read_text(errors="replace")
    res["stdout"] = stdout
    if proc.returncode != 0:
        res["stderr_tail"] = Path(f"{log_base}.err").read_text(errors="replace")[-800:]
    return res


def _marked(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return {}


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def medanon_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("medanon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "medanon.cli"]


def available(tool: str) -> str | None:
    """None if the tool can run, else why it is skipped."""
    if tool == "cp":
        return None if shutil.which("cp") else "cp not found"
    if tool == "medanon":
        return None if util.find_spec("medanon") else "medanon not importable"
    return None if util.find_spec(tool) else f"{tool} not installed in {sys.executable}"


def child_env(extra: dict | None = None) -> dict:
    env = os.environ.copy()
    env.pop("PREFECT_API_URL", None)  # always Prefect's ephemeral server, never a configured one
    env.pop("PREFECT_PROFILE", None)
    env.update(extra or {})
    return env


def prefect_env(home: Path, server_url: str | None = None, **extra: str) -> dict:
    """child_env for a Prefect process with its own home: the ephemeral server, or the running
    server at ``server_url``."""
    env = child_env({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})
    if server_url:
        env["PREFECT_API_URL"] = server_url
    return env


def parse_runs(spec: str) -> list[tuple[str, list[str]]]:
    """'embedded;server --workers 2' -> [('embedded', []), ('server', ['--workers', '2'])]."""
    runs = []
    for part in spec.split(";"):
        words = shlex.split(part)
        if not words:
            continue
        if words[0] not in ("embedded", "server", "dask"):
            raise ValueError(f"a medanon run starts with 'embedded', 'server' or 'dask', not {words[0]!r}")
        runs.append((words[0], words[1:]))
    return runs


@contextlib.contextmanager
def dask_cluster(home: Path, workers: int = 2):
    """A Dask scheduler and ``workers`` single-threaded worker processes on 127.0.0.1, started
    before the timed runs like an existing cluster. Each worker preloads the batch task modules
    (Prefect, pydicom, medanon), as a worker that has run any earlier job would have them."""
    from medanon.localserver import free_port, stop_group

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    env = prefect_env(home)
    procs = []
    with open(home / "dask.log", "w") as logf:
        try:
            procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                           "--no-dashboard"], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            for _ in range(workers):
                procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                               "--no-dashboard", "--memory-limit", "0",
                                               "--preload", "tasks.discover", "--preload", "tasks.scrub"],
                                              env=env, stdout=logf, stderr=subprocess.STDOUT,
                                              start_new_session=True, cwd=str(ROOT)))
            from distributed import Client

            with Client(address, timeout=60) as client:
                client.wait_for_workers(workers, timeout=120)
            yield address
        finally:
            for proc in reversed(procs):
                stop_group(proc)


def run_label(api: str, extra: list[str]) -> str:
    return "medanon" + (f" ({api}{', ' + ' '.join(extra) if extra else ''})")


def run_tool(tool: str, src: Path, work: Path, n: int, args, api: str = "embedded", extra=(),
             server_url: str | None = None, dask_address: str | None = None) -> dict:
    why = available(tool)
    label = run_label(api, list(extra)) if tool == "medanon" else tool
    if why:
        return {"tool": tool, "label": label, "status": "skipped", "reason": why}
    out = work / f"out-{tool}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    env = child_env()
    inner = None
    if tool == "medanon":
        state, home = work / "medanon-state", work / "prefect-home"
        for d in (state, home):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        env = prefect_env(home, server_url if api in ("server", "dask") else None, MEDANON_KEY=args.key)
        if api == "dask":
            extra = ["--dask-address", dask_address, *extra]
        cmd = medanon_cmd() + ["run", str(src), str(out), "--json", "--state-dir", str(state)]
        cmd += shlex.split(args.medanon_args) + list(extra)
    elif tool == "cp":
        cmd = ["cp", "-r", str(src), str(out)]
    else:
        code = {"pydicom": PYDICOM_CHILD, "dicognito": DICOGNITO_CHILD, "deid": DEID_CHILD}[tool]
        if tool == "deid":
            env["MESSAGELEVEL"] = "ERROR"
        cmd = [sys.executable, "-c", code, str(src), str(out)]
    os.sync()  # do not make the next tool pay for the previous one's dirty pages
    log(f"running {label} ...")
    r = run_child(cmd, env, logs / tool, sample_rss=(tool == "medanon"))
    res = {"tool": tool, "label": label, "status": "ok" if r["rc"] == 0 else "failed",
           **{k: v for k, v in r.items() if k != "stdout"}}
    if tool == "medanon":
        summary = {}
        for line in reversed(r["stdout"].splitlines()):
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                    break
                except ValueError:
                    pass
        res["summary"] = {k: summary.get(k) for k in ("discovered", "dicom", "exported", "quarantined",
                                                      "bytes_out", "seconds", "batch_tasks")} if summary else None
        inner = summary.get("seconds")
        if r["rc"] == 0 and summary.get("exported") != n:
            res["status"] = "incomplete"
    elif tool != "cp":
        inner = _marked(r["stdout"]).get("seconds")
    res["inner_seconds"] = round(inner, 2) if inner is not None else None
    res["files_out"] = count_files(out) if out.exists() else 0
    if tool == "medanon" and (out / "manifest.csv").exists():
        res["files_out"] -= 1
    set_rates(res, n, inner)
    log(f"  {label}: rc={r['rc']} wall={r['wall']}s" + (f" inner={res['inner_seconds']}s" if inner else ""))
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return res


def set_rates(res: dict, n: int, inner: float | None) -> None:
    """files/s for n files from a result's wall time and from the tool's own time (``inner``)."""
    res["files_per_s"] = round(n / res["wall"], 1) if res["wall"] else None
    res["inner_files_per_s"] = round(n / inner, 1) if inner else None


def run_floor(work: Path, api: str, server_url: str | None) -> dict:
    """Time FLOOR_CHILD: what every medanon run costs before and after its work ("embedded" or
    "server", as the medanon runs)."""
    home = work / "prefect-home-floor"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = prefect_env(home, server_url if api == "server" else None)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    log(f"running the Prefect floor ({api}) ...")
    r = run_child([sys.executable, "-c", FLOOR_CHILD, str(ROOT)], env, logs / f"floor-{api}")
    marked = _marked(r["stdout"])
    res = {"api": api, "status": "ok" if r["rc"] == 0 and marked else "failed",
           "imports": round(marked.get("imports", 0), 2), "flow_call": round(marked.get("flow_call", 0), 2),
           "task_run_ms": round(marked.get("task_run", 0) * 1000, 1),
           "task_run_cpu_ms": round(marked.get("task_run_cpu", 0) * 1000, 1),
           "pool_task_run_ms": round(marked.get("pool_task_run", 0) * 1000, 1)}
    res["wall"] = round(r["wall"] - marked.get("second_flow", 0), 2)  # the process, less the later flow runs
    if res["status"] != "ok":
        res["stderr_tail"] = r.get("stderr_tail", "")
    log(f"  floor ({api}): wall={res['wall']}s imports={res['imports']}s empty flow={res['flow_call']}s "
        f"task run={res['task_run_ms']}ms ({res['task_run_cpu_ms']}ms CPU), "
        f"{res['pool_task_run_ms']}ms of a worker process's time")
    return res


def budget(report: dict) -> list[str]:
    """The issue's targets as time budgets for N files, beside the floor and cp -r."""
    by = {r["tool"]: r for r in report["results"] if r["status"] == "ok"}
    lines = []
    for tool, factor in (("dicognito", 3.0), ("pydicom", 1.5)):
        if tool in by:
            lines.append(f"{factor:g}× {tool}'s files/s means medanon within {by[tool]['wall'] / factor:.2f} s")
    for f in report.get("floor", []):
        if f["status"] == "ok":
            lines.append(f"Prefect floor ({f['api']}): {f['wall']:.2f} s wall for an empty flow run "
                         f"(imports {f['imports']} s, flow run {f['flow_call']} s); one task run takes "
                         f"{f['task_run_ms']} ms one after another, {f['task_run_cpu_ms']} ms of it CPU"
                         + (f"; in a worker process, {f['pool_task_run_ms']} ms of the worker's time"
                            if f.get("pool_task_run_ms") else ""))
    if "cp" in by:
        lines.append(f"cp -r: {by['cp']['wall']:.2f} s")
    runs = [r for r in report["results"] if r["tool"] == "medanon" and r["status"] == "ok" and r.get("inner_seconds")]
    for f in report.get("floor", []):
        for m in runs:
            if f["status"] == "ok" and (m["label"].startswith("medanon (embedded")) == (f["api"] == "embedded"):
                line = task_run_cost(report["n"], report.get("medanon_args", ""), m, f)
                if line:
                    lines.append(line)
    return lines


def task_run_cost(n: int, medanon_args: str, m: dict, f: dict) -> str | None:
    """What Prefect's task runs cost medanon run ``m``, from floor ``f``'s per-task figures.

    Per batch of instances a run makes a scrub and an export task run, one inspect task run per
    INSPECT_BATCH_FACTOR batches' files, plus 4 more (discover, pair, remap, manifest). In threads
    each costs ``task_run_ms`` one after another (an upper bound: scrub batches run 4 at a time),
    ``task_run_cpu_ms`` of it CPU taken from GIL-bound work. With K worker processes the inspect and
    scrub task runs each take ``pool_task_run_ms`` of a worker's time, shared by K workers (a small
    run gives each worker an even share: ``scrub_batch_size``, ``inspection_plan``); export and the 4
    others run in the flow as in threads. Not estimated for Dask."""
    from medanon.pipeline import batch_size_for, inspection_plan, scrub_batch_size

    words = shlex.split(medanon_args) + shlex.split(m["label"].partition("(")[2].rstrip(")"))
    how = (m.get("summary") or {}).get("batch_tasks") or "threads"
    given = int(words[words.index("--batch-size") + 1]) if "--batch-size" in words else None
    size = batch_size_for(given, how == "threads")
    if how == "threads":
        batches = -(-n // size)
        task_runs = 2 * batches + -(-n // inspection_plan(size, True, 4)[0]) + 4
        cost, cpu = (task_runs * f[k] / 1000 for k in ("task_run_ms", "task_run_cpu_ms"))
        return (f"{m['label']}: {task_runs} task runs (batches of {size}) take at most {cost:.2f} s "
                f"({100 * cost / m['inner_seconds']:.1f} % of its flow time), {cpu * 1000:.0f} ms of it CPU "
                f"({100 * cpu / m['inner_seconds']:.1f} %)")
    if not how.endswith(" processes") or not f.get("pool_task_run_ms"):
        return None
    k = int(how.split()[0])
    batches = -(-n // scrub_batch_size(given, False, n, k))
    in_workers = -(-n // inspection_plan(size, False, 4, n, k)[0]) + batches
    in_flow = batches + 4
    cost = in_workers * f["pool_task_run_ms"] / 1000 / k + in_flow * f["task_run_ms"] / 1000
    return (f"{m['label']}: {in_workers} task runs on {k} worker processes ({f['pool_task_run_ms']} ms of a "
            f"worker's time each) and {in_flow} in the flow ({f['task_run_ms']} ms each) take about {cost:.2f} s "
            f"({100 * cost / m['inner_seconds']:.1f} % of its flow time)")


# ------------------------------------------------------------------------------------------ report

def machine_facts() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("medanon", "pydicom", "prefect", "dicognito", "deid", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    cp_version = ""
    try:
        cp_version = subprocess.run(["cp", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "cp": cp_version, "versions": versions}


def median_of(rounds: list[list[dict]], keys: tuple) -> list[dict]:
    """One result per tool run from several rounds: the median of each timing in ``keys``, the
    others (the run summary, peak memory) from the first round, and each round's wall time in
    ``walls``. A run that failed in any round is reported as that failed round, and a skipped
    one (a tool not installed) as skipped."""
    if len(rounds) <= 1:
        return rounds[0] if rounds else []
    out = []
    for same in zip(*rounds):
        bad = [r for r in same if r["status"] != "ok"]
        if bad:
            out.append(bad[0])
            continue
        r = dict(same[0])
        for k in keys:
            values = [x[k] for x in same if x.get(k) is not None]
            if values:
                r[k] = round(statistics.median(values), 2)
        r["walls"] = [x.get("wall") for x in same]
        out.append(r)
    return out


def ratios(results: list[dict]) -> dict:
    """Time ratios medanon / tool for the same N files (> 1: medanon takes that many times longer).

    ``wall``: both wall times (medanon's includes Python + Prefect start-up); ``flow``: medanon's
    flow "seconds" against the tool's wall time."""
    by = {r["tool"]: r for r in results if r["status"] in ("ok", "incomplete") and r["tool"] != "medanon"}
    out = {}
    for m in results:
        if m["tool"] != "medanon" or m["status"] not in ("ok", "incomplete"):
            continue
        for other in ("dicognito", "deid", "pydicom", "cp"):
            o = by.get(other)
            if not o or not o.get("wall"):
                continue
            out.setdefault(m["label"], {})[other] = {
                "wall": round(m["wall"] / o["wall"], 2),
                "flow": round(m["inner_seconds"] / o["wall"], 2) if m.get("inner_seconds") else None,
            }
    return out


def table(report: dict) -> str:
    rat = report.get("ratios", {})
    labels = list(rat)
    rows = ["| tool | status | wall s | own s | files out | files/s (wall) | files/s (own) |"
            + "".join(f" {lab} ÷ tool, files/s (wall / flow) |" for lab in labels),
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(labels)]
    for r in report["results"]:
        if r["status"] == "skipped":
            rows.append(f"| {r['label']} | skipped ({r['reason']}) | | | | | |" + " |" * len(labels))
            continue
        cells = []
        for lab in labels:
            ratio = rat[lab].get(r["tool"]) if r["tool"] != "medanon" else None
            # time ratios inverted: medanon files/s ÷ tool files/s (> 1: medanon is faster)
            cells.append(f"{1 / ratio['wall']:.2f}× / {1 / ratio['flow']:.2f}×" if ratio and ratio["flow"]
                         else f"{1 / ratio['wall']:.2f}×" if ratio else "")
        own = r.get("inner_seconds")
        rows.append(f"| {r['label']} | {r['status']} | {r['wall']:.2f} | {own if own is not None else ''} | "
                    f"{r['files_out']} | {r['files_per_s']} | {r.get('inner_files_per_s') or ''} |"
                    + "".join(f" {c} |" for c in cells))
    lines = [f"N = {report['n']} instances ({report['archive']['bytes'] / 2**20:.0f} MiB, "
             f"{report['archive']['patients']} patients), archive built in {report['archive']['seconds']} s", ""]
    lines += rows
    for m in (r for r in report["results"] if r["tool"] == "medanon" and r["status"] != "skipped"):
        lines += ["", f"{m['label']}: flow {m.get('inner_seconds')} s of {m['wall']} s wall "
                      f"(start-up/teardown {m['wall'] - (m.get('inner_seconds') or 0):.1f} s); "
                      f"CPU user {m['user_cpu']} s + sys {m['sys_cpu']} s; "
                      f"peak RSS main process {m.get('peak_rss_main_mb')} MB, process tree "
                      f"{m.get('peak_rss_tree_mb')} MB ({m.get('max_processes')} processes), "
                      f"wait4 ru_maxrss {m['maxrss_mb']} MB; summary{' (round 1)' if m.get('walls') else ''} "
                      f"{json.dumps(m.get('summary'))}"]
    spread = [r for r in report["results"] if r.get("walls")]
    if spread:
        lines += ["", f"Median of {report.get('repeat')} rounds; each round's wall seconds:"]
        lines += [f"- {r['label']}: " + ", ".join(f"{w:.2f}" for w in r["walls"]) for r in spread]
        lines += [f"- Prefect floor ({f['api']}): " + ", ".join(f"{w:.2f}" for w in f["walls"])
                  for f in report.get("floor", []) if f.get("walls")]
    spent = budget(report)
    if spent:
        lines += ["", "Budget and fixed costs:"] + [f"- {line}" for line in spent]
    f = report["machine"]
    lines += ["", f"machine: {f['nproc']} CPUs ({f['cpu']}), {f['memory']}, Python {f['python']}, "
                  + ", ".join(f"{k} {v}" for k, v in f["versions"].items() if v)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of instances in the archive (default 2000)")
    ap.add_argument("--workdir", help="where to build the archive and outputs (default: a temp dir under $TMPDIR)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma list among {','.join(ALL_TOOLS)}")
    ap.add_argument("--memory", action="store_true", help="run medanon only and report its peak RSS")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON line on stdout "
                                                        "(the table goes to stderr)")
    ap.add_argument("--key", default="bench-key-not-secret", help="MEDANON_KEY for the medanon run")
    ap.add_argument("--medanon-args", default="", help="extra arguments for every `medanon run` (e.g. '--layout series')")
    ap.add_argument("--medanon-runs", default="embedded",
                    help="';'-separated medanon runs, each 'embedded' (Prefect's ephemeral server, started and "
                         "stopped within the timed command), 'server' (a Prefect server started untimed before "
                         "the runs) or 'dask' (that server plus a Dask scheduler and 2 worker processes, started "
                         "untimed; the run gets --dask-address) followed by extra `medanon run` arguments; "
                         "e.g. 'embedded;server;server --workers 2;dask'")
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                    help="skip the untimed copy that touches the memory the outputs will use before the first tool")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip timing an empty Prefect flow run (the fixed cost of every medanon run)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every tool (and the floor) this many times, in rounds, and report the median "
                         "of each timing with every round's wall time (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (archive, outputs, logs)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep each tool's output folder")
    args = ap.parse_args(argv)

    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    tools = ["medanon"] if args.memory else [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad:
        ap.error(f"unknown tool(s): {', '.join(bad)}")
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medanon-bench-", dir=args.workdir))
    need = args.n * 530_000 * (2 if args.keep_outputs else 1) * 2
    free = shutil.disk_usage(work).free
    if free < need:
        log(f"warning: {free / 2**30:.1f} GiB free in {work}, the run needs about {need / 2**30:.1f} GiB")
    try:
        src = work / "archive"
        log(f"building archive of {args.n} instances in {src} ...")
        archive = build_archive(src, args.n)
        log(f"  done in {archive['seconds']} s ({archive['bytes'] / 2**20:.0f} MiB)")
        if args.warm_up:
            # On a VM, the first write into never-used guest memory is several times slower than any
            # later one; without this, whichever tool runs first pays for it (untimed, once).
            log("warm-up: copying the archive once and deleting the copy (untimed) ...")
            subprocess.run(["cp", "-r", str(src), str(work / "warm-up")], check=True)
            shutil.rmtree(work / "warm-up")
        runs = parse_runs(args.medanon_runs)
        floor_apis = dict.fromkeys("embedded" if api == "embedded" else "server" for api, _ in runs)
        with contextlib.ExitStack() as stack:
            server_url = None
            dask_address = None
            if "medanon" in tools and any(api in ("server", "dask") for api, _ in runs):
                # started before the timed runs, as a hospital's server would already be running
                from medanon.localserver import prefect_server

                home = work / "prefect-server-home"
                home.mkdir()
                server_url = stack.enter_context(prefect_server(home))
                log(f"Prefect server up at {server_url} (untimed)")
            if "medanon" in tools and any(api == "dask" for api, _ in runs):
                dask_address = stack.enter_context(dask_cluster(home))
                log(f"Dask cluster up at {dask_address}, 2 workers (untimed)")
            rounds, floor_rounds = [], []
            for k in range(args.repeat):
                if args.repeat > 1:
                    log(f"round {k + 1} of {args.repeat}")
                one = []
                for t in tools:
                    if t == "medanon":
                        one += [run_tool(t, src, work, args.n, args, api, extra, server_url, dask_address)
                                for api, extra in runs]
                    else:
                        one.append(run_tool(t, src, work, args.n, args))
                rounds.append(one)
                if "medanon" in tools and args.floor:
                    floor_rounds.append([run_floor(work, api, server_url) for api in floor_apis])
            results = median_of(rounds, ("wall", "inner_seconds", "user_cpu", "sys_cpu"))
            floors = median_of(floor_rounds, ("wall", "imports", "flow_call", "task_run_ms", "task_run_cpu_ms",
                                              "pool_task_run_ms"))
            for r in results:
                if r.get("walls"):  # timings aggregated over rounds
                    set_rates(r, args.n, r.get("inner_seconds"))
        report = {"n": args.n, "mode": "memory" if args.memory else "speed", "workdir": str(work),
                  "medanon_runs": args.medanon_runs, "medanon_args": args.medanon_args, "warm_up": args.warm_up,
                  "repeat": args.repeat,
                  "archive": archive, "results": results, "floor": floors, "ratios": ratios(results), "machine": machine_facts()}
        text = table(report)
        if args.json:
            print(text, file=sys.stderr)
            print(json.dumps(report))
        else:
            print(text)
        ok = all(r["status"] in ("ok", "skipped") for r in results) and all(f["status"] == "ok" for f in floors)
        return 0 if ok else 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
