"""What an operator asks for: the parameters of a run (a pydantic model, so the Prefect UI shows a
form) and the answer to a full target. No secrets here: keys are referenced by block name or file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class RunRequest(BaseModel):
    source: str = Field("", description="Folder (or s3://bucket/prefix) holding the archive, any structure; "
                                         "may be left empty when source_block is given")
    target: str = Field("", description="Output folder or s3://bucket/prefix; may be left empty when target_block "
                                         "is given")
    layout: Literal["flat", "patient", "study", "series"] = Field(
        "study", description="flat, <patient>/, <patient>/<study>/ or <patient>/<study>/<series>/")
    profile: Literal["basic", "research"] = Field("research", description="PS3.15 Annex E profile")
    label: str = Field("run", description="PHI-free name shown in flow run names", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    state_dir: str | None = Field(None, description="Local state store (PHI, never exported)")
    allow_burned_in: bool = Field(False, description="Export instances that may carry burned-in text")
    allow_recognizable_features: bool = Field(
        False, description="Export instances whose Recognizable Visual Features is YES (a face, a photo)")
    batch_size: int | None = Field(None, ge=1, le=100_000,
                                   description="Instances per scrub task; empty: automatic (500 in threads, 1 250 in "
                                               "worker processes or on Dask, where a task run costs about 0.1 s; "
                                               "a smaller run gets an even share per worker)")
    byte_budget: int | None = Field(None, ge=0, description="Stop (or suspend) after writing this many bytes")
    sync: bool = Field(True, description="Flush each batch to disk before recording it (off: safe against "
                                         "process kills, not against power loss)")
    key_file: str | None = Field(None, description="File holding the secret key")
    key_block: str | None = Field(None, description="Name of a Prefect Secret block holding the key")
    max_in_flight: int = Field(4, ge=1, le=256, description="Batches running at once")
    workers: int = Field(0, ge=0, le=256, description="Local worker processes for batch tasks; 0: automatic (one "
                                                      "per CPU for runs of 4 000 files or more, else threads); "
                                                      "1: threads")
    dask_address: str | None = Field(None, description="tcp://HOST:PORT of an existing Dask scheduler")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph...)")
    s3_region: str | None = Field(None, description="S3 region")
    source_block: str | None = Field(
        None, description="Name of a 'medanon S3 source' block: bucket/prefix (used when source is empty), "
                          "endpoint, region and credentials")
    target_block: str | None = Field(
        None, description="Name of a 'medanon S3 target' block: bucket/prefix (used when target is empty), "
                          "endpoint, region, credentials and byte budget")

    @model_validator(mode="after")
    def _locations(self) -> "RunRequest":
        if not (self.source or self.source_block):
            raise ValueError("give a source or a source_block")
        if not (self.target or self.target_block):
            raise ValueError("give a target or a target_block")
        return self

    def s3_options(self) -> dict:
        opts = {}
        if self.s3_endpoint_url:
            opts["endpoint_url"] = self.s3_endpoint_url
        if self.s3_region:
            opts["region_name"] = self.s3_region
        return opts


class TargetChoice(BaseModel):
    """Operator input when the target is full: leave new_target empty after adding space."""

    new_target: str | None = Field(None, description="Continue writing to this folder or s3:// location instead")
    byte_budget: int | None = Field(None, ge=0, description="A new byte budget per target (empty: keep the current one)")
