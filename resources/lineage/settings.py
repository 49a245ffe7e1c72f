"""Takedown settings: where request files are dropped, and how training recovers from one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TakedownSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inbox: str | None = Field(
        default=None,
        description="a folder or s3:// prefix watched by the takedown sensor: each file dropped there is a request "
        "(URL lines; optional '# reason:', '# match: url|content', '# requested_by:' header lines)",
    )
    storage_options: dict[str, object] = Field(default_factory=dict, description="fsspec options for the inbox")
    interval_seconds: int = Field(default=60, ge=1)
    sensor_running: bool = Field(
        default=True, description="the sensor also tells Dagster which crawl batches requests hit (CLI requests too)"
    )
    retrain_from: Literal["last_clean", "scratch"] = Field(
        default="last_clean",
        description="with training.continue_training: a generation that saw taken-down data is replaced by one "
        "continued from the last generation that did not (last_clean), or trained from scratch",
    )
