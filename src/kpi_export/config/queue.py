"""The queue as bullmq is told of it: its name and key prefix, how long a job's lock lasts, and how long
finished jobs stay in Redis."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from kpi_export.config.base import GROUP_CONFIG, HOUR, TEN_YEARS, printable

# A hash tag: the part of a key between the first { and the next } decides its Redis Cluster slot.
HASH_TAG = re.compile(r"\{[^}]+\}")


class QueueSettings(BaseSettings):
    model_config = GROUP_CONFIG

    name: str = Field("kpi-export-queue", validation_alias="QUEUE_NAME")
    """The BullMQ queue the worker takes its jobs from (the original's variable)."""
    prefix: str = Field("bull", validation_alias="QUEUE_PREFIX")
    """bullmq's key `prefix`, as the Node producers set it; on a Cluster a hash tag such as `{kpi}`."""
    lock_duration: float = Field(30.0, ge=1, le=HOUR, validation_alias="LOCK_DURATION")
    """Seconds after which a job whose worker died is given to another worker (bullmq's `lockDuration`
    and `stalledInterval`)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if ":" in value or not printable(value):
            raise ValueError("must be a non-empty name without ':' or control characters")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not printable(value):
            raise ValueError("must be a non-empty prefix without control characters")
        return value

    @property
    def hash_tagged(self) -> bool:
        """The prefix starts with a hash tag: the queue's keys share one Cluster slot."""
        return HASH_TAG.match(self.prefix) is not None


class RetentionSettings(BaseSettings):
    """Finished jobs kept in Redis (bullmq's removeOnComplete/removeOnFail, for jobs that carry none of their
    own): up to AGE seconds, and at most COUNT jobs when COUNT is set. Failed jobs are kept long enough to be
    acted on. No count by default: a count trims results that Node readers still poll for."""

    model_config = GROUP_CONFIG

    completed_age: int = Field(24 * 3600, ge=1, le=TEN_YEARS, validation_alias="KEEP_COMPLETED_AGE")
    """Seconds a completed job (its result) stays in Redis, for jobs that carry no `removeOnComplete`
    of their own."""
    completed_count: int | None = Field(None, ge=0, le=1_000_000_000, validation_alias="KEEP_COMPLETED_COUNT")
    """At most this many completed jobs kept, when set; unset by default, since a count trims results
    that Node readers still poll for."""
    failed_age: int = Field(30 * 24 * 3600, ge=1, le=TEN_YEARS, validation_alias="KEEP_FAILED_AGE")
    """Seconds a failed job stays in Redis, long enough to be looked at and retried."""
    failed_count: int | None = Field(None, ge=0, le=1_000_000_000, validation_alias="KEEP_FAILED_COUNT")
    """At most this many failed jobs kept, when set."""

    def keep_completed(self) -> dict[str, int]:
        return _keep(self.completed_age, self.completed_count)

    def keep_failed(self) -> dict[str, int]:
        return _keep(self.failed_age, self.failed_count)


def _keep(age: int, count: int | None) -> dict[str, int]:
    return {"age": age} if count is None else {"age": age, "count": count}
