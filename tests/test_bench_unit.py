"""bench/bench.py's aggregation of repeated rounds (pure logic; the bench itself is run by hand)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(label, status, wall, inner=None):
    return {"tool": label.split()[0], "label": label, "status": status, "wall": wall, "inner_seconds": inner}


def test_median_of_rounds_takes_each_timing_median_and_keeps_every_wall():
    bench = _bench()
    rounds = [[_run("medanon (server)", "ok", 7.0, 4.0), _run("cp", "ok", 1.4)],
              [_run("medanon (server)", "ok", 9.0, 5.0), _run("cp", "ok", 0.5)],
              [_run("medanon (server)", "ok", 8.0, 6.0), _run("cp", "ok", 0.9)]]
    med = bench.median_of(rounds, ("wall", "inner_seconds"))
    assert [r["wall"] for r in med] == [8.0, 0.9]
    assert med[0]["inner_seconds"] == 5.0 and med[1]["inner_seconds"] is None
    assert med[0]["walls"] == [7.0, 9.0, 8.0] and med[1]["walls"] == [1.4, 0.5, 0.9]
    assert rounds[0][0]["wall"] == 7.0  # the rounds themselves are left as measured


def test_a_run_that_failed_in_any_round_is_reported_failed():
    bench = _bench()
    rounds = [[_run("dicognito", "ok", 9.0)], [_run("dicognito", "failed", 1.0)], [_run("dicognito", "ok", 9.5)]]
    (med,) = bench.median_of(rounds, ("wall",))
    assert med["status"] == "failed" and "walls" not in med


def test_a_skipped_tool_stays_skipped_and_the_table_prints():
    bench = _bench()
    skipped = {"tool": "deid", "label": "deid", "status": "skipped", "reason": "deid is not installed"}
    rounds = [[_run("cp", "ok", 1.4), dict(skipped)], [_run("cp", "ok", 0.5), dict(skipped)]]
    med = bench.median_of(rounds, ("wall",))
    assert med[1] == skipped
    report = {"n": 10, "repeat": 2, "results": med, "ratios": bench.ratios(med), "floor": [],
              "archive": {"bytes": 1 << 20, "patients": 1, "seconds": 0.1},
              "machine": {"nproc": 2, "cpu": "", "memory": "", "python": "3.11", "versions": {}}}
    for r in med:
        r.setdefault("files_out", 10)
        r.setdefault("files_per_s", None)
    text = bench.table(report)
    assert "- cp: 1.40, 0.50" in text and "skipped (deid is not installed)" in text


def test_one_round_is_reported_as_measured():
    bench = _bench()
    one = [[_run("cp", "ok", 1.23)]]
    assert bench.median_of(one, ("wall",)) == one[0]


def test_task_run_cost_counts_worker_process_task_runs_at_their_own_price():
    """Threads: 2 task runs per batch, 1 per INSPECT_BATCH_FACTOR batches (inspection) + 4 at the
    thread price. K processes: inspect and scrub task runs at the worker price shared by K (a small
    run: one even batch per worker), export and the 4 others at the thread price."""
    from medanon.pipeline import INSPECT_BATCH_FACTOR

    bench = _bench()
    floor = {"task_run_ms": 5.0, "task_run_cpu_ms": 4.0, "pool_task_run_ms": 100.0}
    threads = dict(_run("medanon (server)", "ok", 8.0, 5.0), summary={"batch_tasks": "threads"})
    line = bench.task_run_cost(2000, "", threads, floor)
    assert "13 task runs (batches of 500) take at most 0.07 s (1.3 % of its flow time)" in line
    pool = dict(_run("medanon (server --batch-size 1000)", "ok", 50.0, 40.0), summary={"batch_tasks": "2 processes"})
    line = bench.task_run_cost(20000, "", pool, floor)
    in_workers = -(-20000 // (1000 * INSPECT_BATCH_FACTOR)) + 20
    cost = in_workers * 0.1 / 2 + 24 * 0.005
    assert f"{in_workers} task runs on 2 worker processes" in line and f"about {cost:.2f} s" in line
    assert f"({100 * cost / 40:.1f} % of its flow time)" in line
    assert bench.task_run_cost(20000, "", dict(pool, summary={"batch_tasks": "dask"}), floor) is None
    # no --batch-size: the automatic size of worker processes (WORKER_BATCH_SIZE)
    from medanon.pipeline import WORKER_BATCH_SIZE

    auto = dict(pool, label="medanon (server)")
    batches = -(-20000 // WORKER_BATCH_SIZE)
    in_workers = -(-20000 // (WORKER_BATCH_SIZE * INSPECT_BATCH_FACTOR)) + batches
    assert f"{in_workers} task runs on 2 worker processes" in bench.task_run_cost(20000, "", auto, floor)
    # a small run on 2 processes: one even batch each for inspection and for the scrub (1 000, not 1 250 + 750)
    small = bench.task_run_cost(2000, "", auto, floor)
    assert "4 task runs on 2 worker processes" in small and "and 6 in the flow" in small
