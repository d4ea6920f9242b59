"""bullmq's Worker with the changes this project needs, each shown by a test (see KpiWorker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bullmq import Job, Worker
from bullmq.scripts import raw2NextJobData
from redis.exceptions import NoScriptError

from kpi_export.errors import InvalidJobData
from kpi_export.payload import check_job_data_text, decode_job_data

# After Redis was lost, how long the worker loop waits before it asks for jobs again (bullmq's default: 15 s).
RUN_RETRY_DELAY_MS = 1000
_QUIESCE_POLL = 0.02
_PENDING_PROGRESS = "kpi_pending_progress"  # a Job attribute: see publish_on_completion


def publish_on_completion(job: Any, progress: Any) -> None:
    """The processor's last step: `progress` is published by KpiWorker in the Redis round trip that
    completes the job, just before it, instead of in a round trip of its own (bullmq's updateProgress).
    A progress that cannot be published does not fail the job: the worker emits "progress_failed"."""
    job.progress = progress
    setattr(job, _PENDING_PROGRESS, progress)


class KpiWorker(Worker):  # type: ignore[misc]
    """bullmq's Worker, with four differences, each shown by a test:

    - A job whose hash bullmq cannot decode (data that is not JSON, nested deeper than `json` recurses, not
      UTF-8; a damaged bullmq field) fails at once, never retried, with the reason, its data kept in the
      failed set. bullmq would move it to active, fail to build it, drop it, and take it again every
      LOCK_DURATION until it stalled out.
    - A graceful close() waits until no fetch and no job is in flight (`_quiesce`), and a Redis lost while
      run() names its connections is waited for instead of ending the loop.
    - Jobs are fetched only as fast as there are jobs to get. bullmq's run() starts a fetcher for every free
      slot at once, each running the moveToActive script: on a steady stream each new job set
      `concurrency - 1` fetchers running for nothing (about 50 scripts per job at concurrency 50, counted
      with INFO commandstats) and the p99 latency of a 200 jobs/s stream climbed to 150 ms. As Node's Worker
      does, fetches here start at one at a time and double while they keep finding a backlog, back to one as
      soon as the queue is empty; no fetch runs while another waits for the queue's next job.
    - Completing a job fetches the next one in the same script call (moveToFinished's fetchNext), as Node's
      Worker does, instead of a moveToActive call of its own: one Redis round trip less per job on a backlog.
    - A job's progress set by `publish_on_completion` goes to Redis with its completion, in one round trip.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prefetched: dict[str, list[Any]] = {}  # token -> the next job's raw data, fetched on completion
        self.backend = _PrefetchingBackend(getattr(self, "backend"), self)  # noqa: B009 - bullmq is untyped
        self._slots = asyncio.Condition()
        self._fetching = 0
        self._window = 1
        self._max_window = max(int(self.opts.get("concurrency") or 1), 1)

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
            return job
        finally:
            async with self._slots:
                self._fetching -= 1
                if job is None or not from_backlog:
                    self._window = 1
                else:
                    self._window = min(self._window * 2, self._max_window)
                # Wake only as many parked fetchers as there are free slots: waking them all at every
                # fetch costs O(concurrency) task switches, and at concurrency 100 that showed in latency.
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
        await super().processJob(job, token)
        raw = self._prefetched.pop(token, None)
        if raw is None or not raw[0]:  # no job came with the completion: the fetchers take over
            return None
        job_data, job_id, limit_until, delay_until = raw
        # moveToFinished's reply may lack the limiter fields (None) that moveToActive's always has.
        following = await self.nextJobFromJobData(job_data, job_id, limit_until or 0, delay_until or 0, token)
        if following is not None:
            self.emit("active", following, "waiting")
        return following

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
        return _failing_job(self, job_data, job_id, token, problem)

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


class _PrefetchingBackend:
    """bullmq's backend, except that moveToCompleted asks for the next job (fetchNext) while the worker may
    take one, and keeps it for KpiWorker.processJob (bullmq's processJob passes fetch_next=False and drops
    the reply); and that it publishes the job's pending progress in the same round trip."""

    def __init__(self, backend: Any, worker: KpiWorker) -> None:
        self._backend = backend
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def moveToCompleted(
        self, job: Any, return_value: Any, remove_on_complete: Any, token: str, fetch_next: bool = False
    ) -> Any:
        fetch = fetch_next or self._worker.may_prefetch()
        progress = job.__dict__.pop(_PENDING_PROGRESS, None)
        if progress is None:
            outcome = await self._backend.moveToCompleted(job, return_value, remove_on_complete, token, fetch)
        else:
            outcome = await self._progress_and_complete(
                job, progress, return_value, remove_on_complete, token, fetch
            )
        if fetch and outcome.get("result"):
            self._worker._prefetched[token] = outcome["result"]
        return outcome

    async def _progress_and_complete(
        self, job: Any, progress: Any, return_value: Any, remove_on_complete: Any, token: str, fetch: bool
    ) -> Any:
        """bullmq's updateProgress and moveToFinished scripts with bullmq's own keys and arguments, sent in
        one pipeline: not a transaction, so that a progress refused does not stop the completion."""
        scripts = self._backend.scripts
        keys, args = scripts.moveToCompletedArgs(job, return_value, remove_on_complete, token, fetch)
        progress_keys = [scripts.toKey(job.id), scripts.keys["events"], scripts.keys["meta"]]
        progress_args = [job.id, json.dumps(progress, separators=(",", ":"), allow_nan=False)]
        pipe = scripts.redisClient.pipeline(transaction=False)
        for name, call_keys, call_args in (
            ("updateProgress", progress_keys, progress_args),
            ("moveToFinished", keys, args),
        ):
            pipe.evalsha(scripts.commands[name].sha, len(call_keys), *call_keys, *call_args)
        progressed, finished = await pipe.execute(raise_on_error=False)

        # A restarted Redis has lost the scripts: bullmq's own calls load them again. (Should a failing job
        # have loaded moveToFinished again meanwhile, but not updateProgress, this progress follows the completion.)
        if isinstance(progressed, NoScriptError):
            try:
                progressed = await self._backend.updateProgress(job.id, progress)
            except Exception as exc:
                progressed = exc
        if isinstance(progressed, int) and progressed < 0:
            progressed = scripts.finishedErrors(
                {"code": progressed, "jobId": job.id, "command": "updateProgress"}
            )
        if isinstance(progressed, Exception):
            self._worker.emit("progress_failed", job, progressed)

        if isinstance(finished, NoScriptError):
            return await self._backend.moveToCompleted(job, return_value, remove_on_complete, token, fetch)
        if isinstance(finished, Exception):
            raise finished
        if isinstance(finished, int) and finished < 0:  # what bullmq's Scripts.moveToFinished raises
            raise scripts.finishedErrors(
                {"code": finished, "jobId": job.id, "command": "moveToFinished", "state": "active"}
            )
        return {"result": None if finished is None else raw2NextJobData(finished), "finishedOn": args[1]}


def unreadable_job_reason(raw: dict[str, Any], error: BaseException) -> str:
    """Why bullmq could not build a job from its hash; never the hash's content."""
    text = raw.get("data")
    if isinstance(text, str):
        try:
            decode_job_data(text)
        except InvalidJobData as exc:
            return str(exc)
    return f"job ilegible en Redis: un campo de bullmq está dañado ({type(error).__name__})"


def _failing_job(worker: Worker, raw: dict[str, Any], job_id: str, token: str | None, reason: str) -> Any:
    """A job with no data that bullmq's processJob fails at once (its `deferredFailure`) with `reason`."""
    try:
        opts = json.loads(raw.get("opts") or "{}")
        job = Job(worker, str(raw.get("name") or ""), None, opts if isinstance(opts, dict) else {}, job_id)
    except Exception:  # the damaged field may be opts itself
        job = Job(worker, str(raw.get("name") or ""), None, {}, job_id)
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
