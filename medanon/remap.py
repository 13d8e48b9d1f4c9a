"""remap: decide, from the state store's manifest, what each new instance becomes.

Pseudonyms are keyed HMACs, so this needs no global pass over the data: the
same patient/study/series/instance gets the same pseudonym in every batch,
worker and run. Here the flow records the crosswalk (original <-> pseudonym,
state store only), applies the export policy (burned-in guard, SR, encapsulated
documents) and assigns each instance its output path.
"""

from __future__ import annotations

import json

from .discover import Inspected, policy_reason
from .pipeline import WorkerConfig, remap_rows
from .state import REREAD_REASONS, StateStore

# re-evaluated every run: export policy, and failures that may have been transient
POLICY_REASONS = ("burned-in-annotation", "recognizable-visual-features", "structured-report", "encapsulated-document",
                  "duplicate-instance", "write-error") + REREAD_REASONS


def remap_pending(cfg: WorkerConfig, store: StateStore, run_id: str, batch_size: int) -> dict:
    pseudo = cfg.pseudonymizer()
    # policy decisions are re-evaluated each run (e.g. a later run with --allow-burned-in)
    with store.tx() as db:
        db.execute(
            f"UPDATE files SET status='new', reason='' WHERE source=? AND kind='dicom' AND status='quarantined' "
            f"AND reason IN ({','.join('?' * len(POLICY_REASONS))})",
            (cfg.source, *POLICY_REASONS),
        )
    counts = {"planned": 0, "held": 0}
    for rows in store.iter_unplanned_dicom(cfg.source, batch_size):
        held, ok = [], []
        for r in rows:
            item = Inspected(relpath="", size=0, token="", kind="dicom", sop_class=r["sop_class"] or "",
                             modality=r["modality"] or "", header=json.loads(r["header"] or "{}"))
            reason = policy_reason(item, cfg.profile.clean_structured_content, cfg.allow_burned_in,
                                   cfg.allow_recognizable_features)
            if reason:
                held.append((r["id"], reason))
            else:
                ok.append(r)
        plans, cross = remap_rows(ok, pseudo, cfg.layout, cfg.profile.retain_uids)
        # the same SOP Instance UID in two files: the first one wins, the others are held
        unique, owners = [], store.out_owners([path for _fid, path in plans])
        for fid, path in plans:
            owner = owners.setdefault(path, fid)
            if owner != fid:
                held.append((fid, "duplicate-instance"))
            else:
                unique.append((fid, path))
        store.plan(unique, cross, run_id)
        store.quarantine(held)
        counts["planned"] += len(unique)
        counts["held"] += len(held)
    return counts
