"""Prefect flows of medanon."""
