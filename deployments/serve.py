"""Build and serve medanon's deployments.

- ``anonymize/on-demand``: no defaults; the Prefect UI shows the RunRequest form
  (source, target, layout, profile, label, ...). Triggered from the UI or with
  ``prefect deployment run anonymize/on-demand --param request='{...}'``.
- ``anonymize/incremental``: a fixed RunRequest on a cron or interval schedule.
  Each run anonymizes only what is new since the last one (the ledger in the
  state store), with the same pseudonyms for the same patients.

``medanon serve`` runs both in one long-lived process (Prefect's ``serve``);
``deployments/prefect.yaml`` does the same through a work pool and workers.
"""

from __future__ import annotations

from datetime import timedelta

from flows.anonymize import anonymize
from medanon.request import RunRequest

TAGS = ["medanon"]


def on_demand():
    return anonymize.to_deployment(
        name="on-demand",
        description="De-identify a DICOM archive into a target folder or bucket (fill in the request form).",
        tags=TAGS,
    )


def incremental(request: RunRequest, cron: str | None = None, interval_seconds: int | None = None):
    if cron and interval_seconds:
        raise ValueError("choose a cron schedule or an interval, not both")
    kwargs = {}
    if cron:
        kwargs["cron"] = cron
    elif interval_seconds:
        kwargs["interval"] = timedelta(seconds=interval_seconds)
    return anonymize.to_deployment(
        name="incremental",
        description="Scheduled incremental run: only new or changed instances are de-identified.",
        parameters={"request": request.model_dump(mode="json")},
        tags=TAGS,
        **kwargs,
    )


def serve(incremental_request: RunRequest | None = None, cron: str | None = None,
          interval_seconds: int | None = None, limit: int | None = None) -> None:
    from prefect import serve as prefect_serve

    deployments = [on_demand()]
    if incremental_request is not None:
        deployments.append(incremental(incremental_request, cron, interval_seconds))
    prefect_serve(*deployments, limit=limit)
