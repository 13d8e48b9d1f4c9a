"""The ``medanon`` command line.

    medanon run SOURCE TARGET [--layout study] [--profile research] [--json] ...
    medanon demo [--dir DIR]
    medanon profiles

Exit codes: 0 the run completed (quarantined files are a normal outcome),
2 the run could not start (bad option, missing source, unwritable target),
75 the target is full (see the message for how to continue), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TARGET_FULL = 0, 1, 2, 75


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    from .pipeline import LAYOUTS
    from .profile import DEFAULT_PROFILE, PROFILES

    p = argparse.ArgumentParser(prog="medanon", description="De-identify DICOM archives (PS3.15 Annex E).")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_run_options(sp):
        sp.add_argument("--layout", choices=LAYOUTS, default="study",
                        help="flat | patient (<patient>/) | study (<patient>/<study>/) | series (default: study)")
        sp.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help=f"de-identification profile (default: {DEFAULT_PROFILE})")
        sp.add_argument("--state-dir", help="local state store (PHI; never exported). "
                        "Default: $MEDANON_STATE_DIR or ~/.medanon/state")
        sp.add_argument("--key-file", help="file holding the secret key (else $MEDANON_KEY, --key-block, "
                        "or a key generated once in the state dir)")
        sp.add_argument("--key-block", help="name of a Prefect Secret block holding the key")
        sp.add_argument("--allow-burned-in", action="store_true",
                        help="export instances that may carry burned-in text (quarantined by default)")
        sp.add_argument("--allow-recognizable-features", action="store_true",
                        help="export instances whose Recognizable Visual Features is YES (quarantined by default)")
        sp.add_argument("--label", default="run", help="a PHI-free name for this run (shown in Prefect)")
        sp.add_argument("--batch-size", type=int, default=None,
                        help="instances per scrub task (default: 500 in threads, 1 250 in worker processes or on "
                             "Dask; a smaller run gets an even share per worker)")
        sp.add_argument("--byte-budget", type=int, help="stop when this run has written this many bytes")
        sp.add_argument("--no-sync", dest="sync", action="store_false",
                        help="do not flush each batch to disk (safe against kills, not against power loss)")
        sp.add_argument("--workers", type=int, default=0,
                        help="local worker processes for batch tasks (default 0: one per CPU when the run has "
                             "4 000 files or more to look at, threads otherwise; 1: threads)")
        sp.add_argument("--dask-address", help="run batch tasks on an existing Dask cluster (tcp://HOST:PORT)")
        sp.add_argument("--endpoint-url", help="S3-compatible endpoint URL for s3:// sources and targets")
        sp.add_argument("--region", help="S3 region")
        sp.add_argument("--source-block", help="name of a 'medanon S3 source' Prefect block (endpoint, region, "
                        "credentials) for an s3:// SOURCE")
        sp.add_argument("--target-block", help="name of a 'medanon S3 target' Prefect block (endpoint, region, "
                        "credentials, byte budget) for an s3:// TARGET")
        sp.add_argument("--json", action="store_true", help="print the run summary as one JSON object")

    run = sub.add_parser("run", help="de-identify SOURCE into TARGET")
    run.add_argument("source")
    run.add_argument("target")
    add_run_options(run)

    demo = sub.add_parser("demo", help="build a messy sample archive from pydicom's test files and anonymize it")
    demo.add_argument("--dir", default="medanon-demo", help="where to put sample/ and output/ (default ./medanon-demo)")
    add_run_options(demo)

    serve = sub.add_parser("serve", help="serve the on-demand deployment (and a scheduled incremental one)")
    serve.add_argument("--source", help="source of the scheduled incremental deployment")
    serve.add_argument("--target", help="target of the scheduled incremental deployment")
    serve.add_argument("--cron", help="cron schedule of the incremental deployment, e.g. '0 2 * * *'")
    serve.add_argument("--interval", type=int, help="or: run the incremental deployment every N seconds")
    add_run_options(serve)

    sub.add_parser("profiles", help="list the profiles and their Annex E options")
    return p


def _check_paths(source: str, target: str, state_dir: str) -> None:
    if not source.startswith("s3://") and not Path(source).is_dir():
        raise UsageError("source folder not found")
    if not target.startswith("s3://"):
        t = Path(target).resolve()
        try:
            t.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise UsageError("target folder cannot be created") from None
        if not os.access(t, os.W_OK):
            raise UsageError("target folder is not writable")
        s = Path(state_dir).expanduser().resolve()
        if s == t or t in s.parents:
            raise UsageError("the state dir must not be inside the target (it holds PHI)")
        if not source.startswith("s3://"):
            src = Path(source).resolve()
            if t == src or src in t.parents:
                raise UsageError("the target must not be inside the source")


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    print(f"medanon run '{summary['label']}' ({summary['profile']} profile, {summary['layout']} layout)")
    for k in ("discovered", "dicom", "reports", "exported", "reports_exported", "skipped_existing",
              "skipped_identical", "bytes_out"):
        print(f"  {k:18} {summary.get(k, 0)}")
    for rule, n in sorted((summary.get("reports_paired") or {}).items()):
        print(f"    paired by {rule:17} {n}")
    if summary.get("unlisted_dirs"):
        print(f"  {'unlisted_dirs':18} {summary['unlisted_dirs']}   (folders that could not be read: not in this run)")
    q = summary.get("quarantined", {})
    print(f"  {'quarantined':18} {sum(q.values())}")
    for reason, n in sorted(q.items()):
        print(f"    {reason:26} {n}")


def _request(args, source: str, target: str, state_dir: str):
    from pydantic import ValidationError

    from .request import RunRequest

    try:
        return RunRequest(
            source=source, target=target, layout=args.layout, profile=args.profile, label=args.label,
            state_dir=state_dir, allow_burned_in=args.allow_burned_in,
            allow_recognizable_features=args.allow_recognizable_features, batch_size=args.batch_size,
            key_file=args.key_file, key_block=args.key_block, byte_budget=args.byte_budget, workers=args.workers,
            sync=args.sync,
            dask_address=args.dask_address, s3_endpoint_url=args.endpoint_url, s3_region=args.region,
            source_block=args.source_block, target_block=args.target_block,
        )
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
        raise UsageError(f"invalid option value: {fields}") from None


def serve_command(args) -> int:
    from .pipeline import default_state_dir

    incremental = None
    if args.source or args.target:
        if not (args.source and args.target and (args.cron or args.interval)):
            raise UsageError("the incremental deployment needs --source, --target and --cron or --interval")
        state_dir = args.state_dir or default_state_dir()
        _check_paths(args.source, args.target, state_dir)
        incremental = _request(args, args.source, args.target, state_dir)
    from deployments.serve import serve

    serve(incremental, cron=args.cron, interval_seconds=args.interval)
    return EXIT_OK


def run_command(args, source: str, target: str) -> int:
    from .pipeline import default_state_dir

    state_dir = args.state_dir or default_state_dir()
    _check_paths(source, target, state_dir)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the embedded server's first start in a new Prefect home migrates its database: Prefect's 20 s
    # default was too short once on a busy machine (the run failed before it began)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.anonymize import TargetFullStop, anonymize

    request = _request(args, source, target, state_dir)
    try:
        summary = anonymize(request)
    except TargetFullStop as stop:
        _print_summary(stop.summary, args.json)
        print(f"medanon: {stop}. Add space and run the same command again, or run it with a new TARGET "
              "to continue there (finished instances are not redone).", file=sys.stderr)
        return EXIT_TARGET_FULL
    _print_summary(summary, args.json)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "profiles":
            from .profile import PROFILES

            for name, prof in PROFILES.items():
                print(f"{name}: Basic Profile" + "".join(f" + {o}" for o in prof.enabled_options()))
            return EXIT_OK
        if args.cmd == "demo":
            from .samples import build_sample_archive

            base = Path(args.dir).resolve()
            build_sample_archive(base / "sample")
            if not args.state_dir:
                args.state_dir = str(base / "state")
            if not args.json:
                print(f"sample archive: {base / 'sample'}")
            code = run_command(args, str(base / "sample"), str(base / "output"))
            if not args.json:
                print(f"de-identified copy: {base / 'output'}")
            return code
        if args.cmd == "serve":
            return serve_command(args)
        return run_command(args, args.source, args.target)
    except UsageError as exc:
        print(f"medanon: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - one PHI-free line, never a traceback with values
        from .keys import KeyError_
        from .state import StoreInUse

        if isinstance(exc, (KeyError_, StoreInUse)):
            print(f"medanon: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"medanon: error: the run failed ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
