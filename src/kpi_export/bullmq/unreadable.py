"""Job hashes bullmq cannot decode (data that is not JSON, not UTF-8, nested too deep; a damaged bullmq
field): the reason, and a job that fails with it as soon as it is processed."""

from __future__ import annotations

import json
from typing import Any

from bullmq import Job

from kpi_export.contract import decode_job_data
from kpi_export.errors import InvalidJobData


def unreadable_job_reason(raw: dict[str, Any], error: BaseException) -> str:
    """Why bullmq could not build a job from its hash; never the hash's content."""
    text = raw.get("data")
    if isinstance(text, str):
        try:
            decode_job_data(text)
        except InvalidJobData as exc:
            return str(exc)
    return f"job ilegible en Redis: un campo de bullmq está dañado ({type(error).__name__})"


def failing_job(queue: Any, raw: dict[str, Any], job_id: str, token: str | None, reason: str) -> Job:
    """A job with no data that bullmq's processJob fails at once (its `deferredFailure`) with `reason`."""
    try:
        opts = json.loads(raw.get("opts") or "{}")
        job = Job(queue, str(raw.get("name") or ""), None, opts if isinstance(opts, dict) else {}, job_id)
    except Exception:  # the damaged field may be opts itself
        job = Job(queue, str(raw.get("name") or ""), None, {}, job_id)
    job.token = token
    job.timestamp = _int_field(raw.get("timestamp"))
    job.attemptsMade = _int_field(raw.get("atm") or raw.get("attemptsMade"))
    job.deferredFailure = reason
    return job


def _int_field(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
