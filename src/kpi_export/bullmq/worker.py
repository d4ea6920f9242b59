"""bullmq's Worker with the changes this project needs, each shown by a test (see KpiWorker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bullmq import UnrecoverableError, Worker

from kpi_export.bullmq.completion import CompletingBackend
from kpi_export.bullmq.job import JobHandler
from kpi_export.bullmq.unreadable import failing_job, unreadable_job_reason
from kpi_export.contract import check_job_data_text
from kpi_export.errors import InvalidJobData

# After Redis was lost, how long the worker loop waits before it asks for jobs again (bullmq's default: 15 s).
RUN_RETRY_DELAY_MS = 1000
_QUIESCE_POLL = 0.02


class KpiWorker(Worker):  # type: ignore[misc]
    """bullmq's Worker, with these differences, each shown by a test:

    - It runs a `JobHandler` (job in, `Completion` out); a handler's InvalidJobData becomes bullmq's
      UnrecoverableError (never retried), and the completion's progress goes to Redis with the completion,
      in one round trip, shared with the other completions of the same turn of the event loop (completion.py).
    - A job whose hash bullmq cannot decode (data that is not JSON, nested deeper than `json` recurses, not
      UTF-8; a damaged bullmq field) fails at once, never retried, with the reason, its data kept in the
      failed set. bullmq would move it to active, fail to build it, drop it, and take it again every
      LOCK_DURATION until it stalled out.
    - A graceful close() waits until no fetch and no job is in flight (`_quiesce`), and a Redis lost while
      run() names its connections is waited for instead of ending the loop.
    - Jobs are fetched only as fast as there are jobs to get. bullmq's run() starts a fetcher for every free
      slot at once, each running the moveToActive script: on a steady stream each new job set
      `concurrency - 1` fetchers running for nothing, and the latency climbed (docs/performance.md). As
      Node's Worker does, fetches here start at one at a time and double while they keep finding a backlog,
      back to one as soon as the queue is empty; no fetch runs while another waits for the queue's next job.
    - Completing a job fetches the next one in the same script call (moveToFinished's fetchNext), as Node's
      Worker does, instead of a moveToActive call of its own: one Redis round trip less per job on a backlog.
    - After a failover, `requeue_orphans` puts back to wait the jobs the new master holds as active under
      this worker's locks that this worker no longer processes (the old master took their completion, or
      their fetch, and lost it): they run again at once instead of waiting, active, for their lock to expire.

    Every bullmq method overridden here, and every bullmq attribute read, is listed in compat.py.
    """

    def __init__(self, name: str, handler: JobHandler, opts: dict[str, Any]) -> None:
        self._handler = handler
        super().__init__(name, self._process, opts)
        self.prefetched: dict[str, list[Any]] = {}  # token -> the next job's raw data, fetched on completion
        self.pending_progress: dict[str, Any] = {}  # token -> the progress to publish with the completion
        # Jobs fetched and not started yet, with their token: not orphans (see requeue_orphans).
        self._handing_over: set[tuple[str, str]] = set()
        self.backend = CompletingBackend(getattr(self, "backend"), self)  # noqa: B009 - bullmq is untyped
        self._slots = asyncio.Condition()
        self._fetching = 0
        self._window = 1
        self._max_window = max(int(self.opts.get("concurrency") or 1), 1)

    async def _process(self, job: Any, token: str) -> Any:
        """bullmq's processor: two parameters, so that bullmq passes no abort signal."""
        try:
            completion = await self._handler(job)
        except InvalidJobData as exc:
            raise UnrecoverableError(str(exc)) from exc
        if completion.progress is not None:
            self.pending_progress[token] = completion.progress
        return completion.result

    def _stop_fetching(self) -> bool:
        return bool(self.closing or self.paused or (self.drained and self.waiting is not None))

    async def getNextJob(self, token: str) -> Any:
        async with self._slots:
            await self._slots.wait_for(lambda: self._fetching < self._window or self.closing or self.paused)
            if self._stop_fetching():
                return None
            self._fetching += 1
        from_backlog = not self.drained  # else this fetch waits for the next job to be added
        job = None
        try:
            job = await super().getNextJob(token)
            if job is not None:
                self._handing_over.add((str(job.id), token))
            return job
        finally:
            async with self._slots:
                self._fetching -= 1
                if job is None or not from_backlog:
                    self._window = 1
                else:
                    self._window = min(self._window * 2, self._max_window)
                # Wake only as many parked fetchers as there are free slots: waking them all at every
                # fetch costs O(concurrency) task switches, which showed in the latency.
                # bullmq's close() and pause() wait for every fetcher: then all must return.
                if self.closing or self.paused:
                    self._slots.notify_all()
                else:
                    self._slots.notify(max(self._window - self._fetching, 0))

    def may_prefetch(self) -> bool:
        return not (self.closing or self.paused or self.forceClosing)

    async def processJob(self, job: Any, token: str) -> Any:
        """bullmq's, then the job fetched as this one completed: bullmq's run loop processes a job that a
        finished task returns as it does one a fetcher returns, in the same slot."""
        self._handing_over.discard((str(job.id), token))  # bullmq's processJob tracks it in `jobs` now
        try:
            await super().processJob(job, token)
        finally:
            self.pending_progress.pop(token, None)  # not published: the job failed, or a forced stop
            raw = self.prefetched.pop(token, None)
            if raw is not None and raw[0]:
                self._handing_over.add((str(raw[1]), token))
        if raw is None or not raw[0]:  # no job came with the completion: the fetchers take over
            return None
        job_data, job_id, limit_until, delay_until = raw
        # moveToFinished's reply may lack the limiter fields (None) that moveToActive's always has.
        following = await self.nextJobFromJobData(job_data, job_id, limit_until or 0, delay_until or 0, token)
        if following is None:
            self._handing_over.discard((str(job_id), token))
        else:
            self.emit("active", following, "waiting")
        return following

    async def requeue_orphans(self) -> list[str]:
        """After a failover: the jobs active on the new master under this worker's locks (bullmq's lock tokens
        are `<worker id>:<n>`; several jobs may share one), taken before this call, that this worker is neither
        processing nor about to process, go back to the front of the wait list (bullmq's retryJob: the lock is
        released, the attempt counted). A job taken during this call, whose fetch reply may still be on its
        way, is never one: it was taken after `started` (bullmq stamps processedOn with this worker's clock).
        Returns their ids."""
        started = int(time.time() * 1000)
        scripts = self.backend.scripts
        client = scripts.redisClient
        active = [str(job_id) for job_id in await client.lrange(scripts.keys["active"], 0, -1)]
        if not active:
            return []
        pipe = client.pipeline(transaction=False)
        for job_id in active:
            pipe.get(f"{scripts.toKey(job_id)}:lock")
            pipe.hget(scripts.toKey(job_id), "processedOn")
        replies = await pipe.execute()
        mine = f"{self.id}:"
        requeued = []
        for job_id, token, taken in zip(active, replies[::2], replies[1::2], strict=True):
            if not token or not str(token).startswith(mine) or not taken_before(taken, started):
                continue
            if self._busy(job_id, str(token)):
                continue
            try:
                await scripts.retryJob(job_id, True, token)  # lifo: to the front of the queue
            except TypeError:  # finished or taken over meanwhile (bullmq raises its error codes so)
                continue
            requeued.append(job_id)
        return requeued

    def _busy(self, job_id: str, token: str) -> bool:
        """Whether this worker processes `job_id` under `token`, or is about to: asked again before each
        requeue, since the answer changes while requeue_orphans awaits."""
        return (job_id, token) in self._handing_over or any(
            str(job.id) == job_id and held == token for job, held in self.jobs
        )

    async def nextJobFromJobData(
        self,
        job_data: dict[str, Any] | None = None,
        job_id: str | None = None,
        limit_until: int = 0,
        delay_until: int = 0,
        token: str | None = None,
    ) -> Any:
        if not job_data or not job_id:
            return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
        problem: str | None = None
        text = job_data.get("data")
        if isinstance(text, str):
            try:
                check_job_data_text(text)  # before bullmq decodes it: a huge text is not parsed at all
            except InvalidJobData as exc:
                problem = str(exc)
        if problem is None:
            try:
                return await super().nextJobFromJobData(job_data, job_id, limit_until, delay_until, token)
            except Exception as exc:
                problem = unreadable_job_reason(job_data, exc)
        # What bullmq's method records for a fetched job, then a job that fails as soon as it is processed.
        self.limitUntil = max(limit_until or 0, 0)
        if delay_until:
            self.blockUntil = max(int(delay_until), 0)
        self.drained = False
        return failing_job(self, job_data, job_id, token, problem)

    async def run(self) -> None:
        # bullmq's run() names its connections (CLIENT SETNAME) before its loop, unguarded: Redis lost at
        # that moment would end the loop, and the process. Wait for Redis there as the loop would.
        while not self.closing:
            try:
                await self._ensure_client_names()
                break
            except Exception as exc:
                if not self.isConnectionError(exc):
                    raise
                self.emit("error", exc)
                await asyncio.sleep(RUN_RETRY_DELAY_MS / 1000)
        await super().run()

    async def close(self, force: bool = False) -> None:
        if not force:
            await self._quiesce()
        await super().close(force)

    async def _quiesce(self) -> None:
        """Stop fetching, then wait until no fetch and no job is in flight.

        bullmq's close() waits only for the tasks in `processing` when it starts: a job that a fetch in flight
        hands over just then is started, not waited for, and left active when the connections close (another
        worker takes it over after LOCK_DURATION). Its loop may also end while jobs still run. The caller
        bounds this wait (SHUTDOWN_TIMEOUT) and cancels the tasks when it is over.
        """
        self.closing = True
        if self.waiting:
            self.waiting.cancel()
        quiet = 0
        while quiet < 2:  # twice in a row: a finished fetch's job is started by the loop a moment later
            pending = {task for task in self.processing if not task.done()}
            if pending:
                quiet = 0
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            elif self.jobs:
                quiet = 0
                await asyncio.sleep(_QUIESCE_POLL)
            else:
                quiet += 1
                await asyncio.sleep(_QUIESCE_POLL)


def taken_before(processed_on: object, moment: int) -> bool:
    """Whether a job's processedOn (milliseconds, as stored in its hash) is before `moment`; False when it is
    missing or not a number (a damaged hash is left to bullmq's stalled-job check)."""
    try:
        return int(str(processed_on)) < moment
    except ValueError:
        return False
