"""When the pipeline runs by itself: the settings behind the automation sensor and the training
policy (jobs/automation.py turns them into Dagster automation conditions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from resources.common.config import Section


class TrainingPolicy(Section):
    """When a new checkpoint is trained: after every `every_n_batches` new crawl batches
    (`new_batches`; at once when batches it was trained on changed), at the times of `cron` when
    the data changed since the last checkpoint (`cron`), or only when someone materializes it
    (`manual`). A missing checkpoint, or changed training settings, train at once under the first
    two policies."""

    policy: Literal["new_batches", "cron", "manual"] = "new_batches"
    every_n_batches: int = Field(default=1, ge=1, description="new_batches: how many new crawl batches start one")
    cron: str | None = Field(default=None, description="cron: a five-field cron schedule, e.g. '0 3 * * *'")
    timezone: str = Field(default="UTC", description="cron: the schedule's time zone")

    @model_validator(mode="after")
    def _cron_when_needed(self) -> TrainingPolicy:
        if self.policy == "cron" and not self.cron:
            raise ValueError("automation.training: policy cron needs `cron` (e.g. '0 3 * * *')")
        return self

    def describe(self) -> str:
        return {
            "new_batches": f"every {self.every_n_batches} new crawl batches",
            "cron": f"on cron {self.cron} {self.timezone}",
            "manual": "by hand",
        }[self.policy]


class AutomationSettings(Section):
    """`enabled`: the automation sensor runs from the start (off: it is stopped; start it in the UI
    under Automation, or materialize by hand). It evaluates every asset's condition every
    `interval_seconds`."""

    enabled: bool = False
    interval_seconds: int = Field(default=30, ge=1)
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
