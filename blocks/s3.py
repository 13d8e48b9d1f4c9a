"""Prefect blocks for S3-compatible sources and targets (AWS S3, MinIO, Ceph RGW...).

Register them once per Prefect server so the UI can create and pick them::

    prefect block register -m blocks.s3

A block holds a bucket and prefix, the endpoint and region, and optionally
credentials (kept as secrets: encrypted by the Prefect server, masked in the
UI, never part of a flow run's parameters). A run names a block in
``RunRequest.source_block`` / ``target_block`` (``--source-block`` /
``--target-block`` on the CLI); the flow loads it at run time. Without
credentials in the block, boto3's standard chain is used (environment,
shared config/credentials files, instance or task roles).
"""

from __future__ import annotations

from abc import ABC
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["MedanonS3Source", "MedanonS3Target", "resolve_location", "CONNECTION_KEYS"]

# The keyword arguments of S3Source/S3Target that describe how to reach a bucket.
CONNECTION_KEYS = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "session_token")


class _MedanonS3Location(Block, ABC):
    """Shared fields: where the objects are and how to reach them (not registered itself)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # validation errors never echo a credential

    bucket: str = Field(..., description="Bucket name.")
    prefix: str = Field("", description="Key prefix inside the bucket (a 'folder'); empty for the whole bucket.")
    endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible service, e.g. https://minio.example.org:9000. "
                          "Empty for AWS S3.")
    region_name: str | None = Field(None, description="Region, e.g. eu-west-1. Empty: from the AWS config chain.")
    aws_access_key_id: SecretStr | None = Field(
        None, description="Access key ID. Leave both keys empty to use the standard AWS credential chain "
                          "(environment, ~/.aws, instance or task role).")
    aws_secret_access_key: SecretStr | None = Field(None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(None, description="Session token of temporary credentials.")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, v: str) -> str:
        v = v.strip()
        if not v or "/" in v or ":" in v or "@" in v:
            raise ValueError("give the bare bucket name (no s3://, slash, port or credentials)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return (v or "").strip().strip("/")

    @field_validator("endpoint_url", "region_name")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return (v or "").strip() or None

    @model_validator(mode="after")
    def _both_keys_or_neither(self):
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("give both aws_access_key_id and aws_secret_access_key, or neither")
        return self

    def url(self) -> str:
        """``s3://bucket/prefix`` (never holds credentials)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def s3_options(self) -> dict[str, Any]:
        """Keyword arguments for ``open_source`` / ``open_target`` (plain credential values: keep private)."""
        opts: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            opts["region_name"] = self.region_name
        if self.aws_access_key_id is not None and self.aws_secret_access_key is not None:
            opts["aws_access_key_id"] = self.aws_access_key_id.get_secret_value()
            opts["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
            if self.aws_session_token is not None:
                opts["session_token"] = self.aws_session_token.get_secret_value()
        return opts

    def location(self) -> tuple[str, dict[str, Any]]:
        """(url, s3 options) for ``open_source(url, **options)`` / ``open_target(url, **options)``."""
        return self.url(), self.s3_options()


class MedanonS3Source(_MedanonS3Location):
    """An S3-compatible bucket (and prefix) holding a DICOM archive for medanon to de-identify."""

    _block_type_name = "medanon S3 source"
    _block_type_slug = "medanon-s3-source"
    _description = ("Where medanon reads a DICOM archive from: an S3-compatible bucket and prefix, its endpoint, "
                    "region and (optional) credentials. Object keys may hold PHI; they are never logged.")
    _documentation_url = "https://github.com/medanon/medanon#s3-compatible-storage"


class MedanonS3Target(_MedanonS3Location):
    """An S3-compatible bucket (and prefix) that receives medanon's de-identified copy."""

    _block_type_name = "medanon S3 target"
    _block_type_slug = "medanon-s3-target"
    _description = ("Where medanon writes the de-identified copy: an S3-compatible bucket and prefix, its "
                    "endpoint, region, (optional) credentials and byte budget.")
    _documentation_url = "https://github.com/medanon/medanon#s3-compatible-storage"

    byte_budget: int | None = Field(
        None, ge=0, description="At most this many bytes of instances in this target (the run stops, or a "
                                "deployment run suspends for the operator, when it is reached). A byte budget "
                                "given with the run takes precedence.")


def resolve_location(url: str | None, block_name: str | None, side: Literal["source", "target"],
                     defaults: dict[str, Any]) -> tuple[str, dict[str, Any], int | None]:
    """The location, S3 options and block byte budget of a run's source or target.

    - With a block and no URL, the block's bucket/prefix are the location.
    - With a block and an ``s3://`` URL (e.g. a new target given when a run is
      suspended), the URL is the location and the block gives the endpoint,
      region and credentials. A local folder ignores the block.
    - ``defaults`` (the run's endpoint/region) apply where the block says nothing.
    """
    from medanon.storage.s3 import parse_s3_url

    url = url or ""
    options = dict(defaults)
    budget: int | None = None
    if block_name:
        cls = MedanonS3Source if side == "source" else MedanonS3Target
        block = cls.load(block_name)
        block_url, block_opts = block.location()
        url = url or block_url
        if url.startswith("s3://"):
            options.update(block_opts)
            budget = getattr(block, "byte_budget", None)
    if not url:
        raise ValueError(f"no {side}: give a {side} location or the name of a {side} block")
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    else:
        options = {}
    return url, options, budget
