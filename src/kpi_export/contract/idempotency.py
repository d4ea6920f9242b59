"""The audit row's idempotency key: what makes a job delivered twice give one row.

Pure: the queue's qualified name, the job id and the job's creation timestamp in, a SHA-256 hex digest out.
"""

from __future__ import annotations

import hashlib
import json


def idempotency_key(queue: str, job_id: str, timestamp: int) -> str:
    """The audit row's unique key for one job: the same on every delivery of that job, and new for a new
    job that reuses an id (its creation timestamp differs)."""
    canonical = json.dumps([queue, job_id, timestamp], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
