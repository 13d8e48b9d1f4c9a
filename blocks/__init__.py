"""Prefect blocks of medanon (register with ``prefect block register -m blocks.s3``)."""
