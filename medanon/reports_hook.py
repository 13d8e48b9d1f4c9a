"""Report recognition hook for discovery (reports are paired and scrubbed by their own stage)."""

from __future__ import annotations


def report_sniffer():
    try:
        from .reports import sniff_report
    except ImportError:  # reports stage not installed
        return None
    return lambda head: sniff_report(head) is not None
