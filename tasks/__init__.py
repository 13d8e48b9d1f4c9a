"""Prefect tasks: thin wrappers around medanon's pure stage functions."""
