#!/usr/bin/env python
"""What a task run called in the flow process leaves in its memory, by what the task returns.

medanon's export task runs in the flow process once per scrub batch: 16 000 times for 20 M
instances. Prefect links every result a task returns there to a copy of the task run's state
(``FlowRunContext.run_results``, keyed by the ids of the result and its items) until the flow ends.
This runs a flow (embedded Prefect, its own PREFECT_HOME) that calls one task N times, returning a
dict of counts like the export task used to, or nothing as it does now, and prints the flow
process's resident memory (after ``gc.collect``) every 1 000 calls and the links Prefect holds.

    python bench/task_run_memory.py [--n 4000] [--returns dict|none] [--json]

Each call is a fresh process; run it once per ``--returns``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _rss  # noqa: E402  (the end-to-end bench's reading of a process's RSS)


def rss_mb() -> float:
    return _rss(os.getpid()) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--returns", choices=("dict", "none"), default="dict")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="medanon-task-memory-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import FlowRunContext

    @task(cache_policy=NO_CACHE, persist_result=False, task_run_name="export-batch-{n}")
    def record(n: int):
        counts = {"batch": n, "exported": 1000 + n, "skipped_identical": 0, "quarantined": 0,
                  "bytes_out": 525_000 * 1250 + n}
        return counts if args.returns == "dict" else None

    @flow(persist_result=False)
    def calls(count: int) -> dict:
        marks = []
        for n in range(count):
            record(n)
            if n % 1000 == 0:
                gc.collect()
                marks.append((n, round(rss_mb(), 1)))
        gc.collect()
        marks.append((count, round(rss_mb(), 1)))
        return {"rss_mb": marks, "links": len(FlowRunContext.get().run_results)}

    res = calls(args.n)
    (first, at_first), (last, at_last) = res["rss_mb"][1], res["rss_mb"][-1]  # after 1 000 calls: warmed up
    res.update(returns=args.returns, n=args.n,
               kb_per_call_after_warmup=round((at_last - at_first) * 1024 / max(last - first, 1), 2))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"returns {args.returns}: RSS MB by calls {res['rss_mb']}; {res['links']} links held; "
              f"{res['kb_per_call_after_warmup']} KB per call after the first 1 000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
