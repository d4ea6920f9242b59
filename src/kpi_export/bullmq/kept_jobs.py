"""The completed jobs Redis keeps (for KEEP_COMPLETED_AGE), read in pages: what `audit reconcile` holds the
audit rows against, and where the worker's id guard finds the highest idExport a result names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from bullmq import Queue

from kpi_export.integrity.reconcile import KeptJob

PAGE = 1000
_FIELDS = ("data", "returnvalue", "timestamp", "processedOn", "finishedOn")


async def count_kept(queue: Queue, since_ms: int | None = None) -> int:
    """Completed jobs kept, finished since `since_ms` (all by default)."""
    return int(await queue.client.zcount(queue.toKey("completed"), _bound(since_ms), "+inf"))


async def kept_jobs(
    queue: Queue, *, since_ms: int | None = None, page: int = PAGE
) -> AsyncIterator[list[KeptJob]]:
    """Every completed job kept, in the order they finished, a page at a time: a range by score from the last
    one read (jobs that retention removes meanwhile shift nothing), then one pipelined HMGET for the page.
    Memory holds one page."""
    key = queue.toKey("completed")
    low = since_ms
    seen_at_low = 0  # members at score `low` already read: many jobs can finish in the same millisecond
    while True:
        members: list[tuple[str, float]] = await queue.client.zrangebyscore(
            key, _bound(low), "+inf", start=seen_at_low, num=page, withscores=True
        )
        if not members:
            return
        jobs = await read_kept(queue, [member for member, _ in members])
        if jobs:
            yield jobs
        last = int(members[-1][1])
        at_last = sum(1 for _, score in members if int(score) == last)
        seen_at_low = seen_at_low + at_last if last == low else at_last
        low = last
        if len(members) < page:
            return


async def newest_kept(queue: Queue, count: int = PAGE) -> list[KeptJob]:
    """The `count` jobs that finished last."""
    ids: list[str] = await queue.client.zrevrange(queue.toKey("completed"), 0, count - 1)
    return await read_kept(queue, ids)


async def read_kept(queue: Queue, job_ids: list[str]) -> list[KeptJob]:
    """The jobs' hashes in one round trip; a job removed meanwhile is left out."""
    pipe = queue.client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(queue.toKey(job_id), _FIELDS)
    replies: list[list[Any]] = await pipe.execute()
    return [
        KeptJob(
            job_id=job_id,
            queue=queue.qualifiedName,
            data=data,
            returnvalue=returnvalue,
            timestamp=_int(timestamp),
            processed_on=_int(processed_on),
            finished_on=_int(finished_on),
        )
        for job_id, (data, returnvalue, timestamp, processed_on, finished_on) in zip(
            job_ids, replies, strict=True
        )
        if returnvalue is not None or data is not None
    ]


def _bound(ms: int | None) -> str:
    return "-inf" if ms is None else str(int(ms))


def _int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
