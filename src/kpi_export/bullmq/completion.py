"""A job's completion in one Redis round trip: its progress (bullmq's updateProgress script) and its
completion (moveToFinished, which also fetches the next job), sent in one pipeline, with those of the other
jobs that finish in the same turn of the event loop (shared_round_trip.py). The scripts' keys and
arguments are bullmq's own: its Scripts methods are run against a recorder that keeps the calls they would
make (`recorded_calls`) instead of building them here by hand."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from bullmq.scripts import raw2NextJobData
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from kpi_export.bullmq.shared_round_trip import SharedRoundTrip


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of a bullmq Lua script: its name in `Scripts.commands`, its keys and its arguments."""

    name: str
    keys: list[Any]
    args: list[Any]


class _ScriptRecorder:
    """Stands in for bullmq's registered scripts (`Scripts.commands`): records each call instead of
    sending it, and answers None, as a script that returns nothing."""

    def __init__(self) -> None:
        self.calls: list[ScriptCall] = []

    def __getitem__(self, name: str) -> Callable[..., Awaitable[None]]:
        async def record(keys: Any = None, args: Any = None, client: Any = None) -> None:
            self.calls.append(ScriptCall(name, list(keys or ()), list(args or ())))

        return record


async def recorded_calls(scripts: Any, run: Callable[[Any], Awaitable[Any]]) -> list[ScriptCall]:
    """The script calls `run(scripts)` makes, made against a copy of bullmq's `Scripts` that only records."""
    dry = copy.copy(scripts)
    dry.commands = recorder = _ScriptRecorder()
    await run(dry)
    return recorder.calls


# What the pipeline sends, in this order (compat.py checks that bullmq's methods still make these calls).
PROGRESS_AND_COMPLETION = ("updateProgress", "moveToFinished")


class CompletingWorker(Protocol):
    """What the backend below needs of the worker it serves (KpiWorker)."""

    prefetched: dict[str, list[Any]]
    pending_progress: dict[str, Any]
    opts: dict[str, Any]
    forceClosing: bool

    def may_prefetch(self) -> bool: ...

    def isConnectionError(self, error: Exception) -> bool: ...

    def emit(self, event: str, *args: Any) -> Any: ...


# Between two tries at a completion that Redis did not take (a failover, a lost connection).
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A job's completion as bullmq's moveToCompleted is asked for it, and the progress published with it."""

    job: Any
    return_value: Any
    remove_on_complete: Any
    token: str
    progress: Any  # None: no progress to publish
    fetch_next: bool  # the reply brings the next job

    async def move_to_completed(self, by: Any) -> Any:
        """`by.moveToCompleted` for this job: bullmq's backend, or its Scripts (which take the same arguments)."""
        return await by.moveToCompleted(
            self.job, self.return_value, self.remove_on_complete, self.token, self.fetch_next
        )


class CompletingBackend:
    """bullmq's backend, except for moveToCompleted: it asks for the next job (fetchNext) while the worker may
    take one, and keeps it for the worker (bullmq's processJob passes fetch_next=False and drops the reply);
    it publishes the job's progress (`Completion.progress`) in the same round trip; and it tries again while
    Redis is unreachable, for as long as the job's lock lasts, so that a job in flight during a failover is
    completed on the new master as soon as there is one (its lock was replicated), instead of failing its
    attempt and waiting, active, for its lock to expire."""

    def __init__(self, backend: Any, worker: CompletingWorker) -> None:
        self._backend = backend
        self._worker = worker
        self._round_trip = SharedRoundTrip()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def moveToCompleted(
        self, job: Any, return_value: Any, remove_on_complete: Any, token: str, fetch_next: bool = False
    ) -> Any:
        """Mirrors bullmq 3.4 `RedisBackend.moveToCompleted` (its reply: the next job and finishedOn)."""
        request = CompletionRequest(
            job,
            return_value,
            remove_on_complete,
            token,
            progress=self._worker.pending_progress.pop(token, None),
            fetch_next=fetch_next or self._worker.may_prefetch(),
        )
        try:
            outcome = await self._complete(request)
        except Exception as exc:
            request = replace(request, fetch_next=False)  # a try after the first fetches no job
            outcome = await self._after_failure(exc, request)
        if request.fetch_next and outcome.get("result"):
            self._worker.prefetched[token] = outcome["result"]
        return outcome

    async def _after_failure(self, exc: Exception, request: CompletionRequest) -> Any:
        """The completion after a first try that failed: done if Redis has it already, else tried again while
        Redis is unreachable and the job's lock lasts."""
        worker = self._worker
        deadline = time.monotonic() + worker.opts["lockDuration"] / 1000
        for delay in itertools.chain(_RETRY_DELAYS, itertools.repeat(_RETRY_DELAYS[-1])):
            unreachable = worker.isConnectionError(exc)
            if not unreachable and (finished_on := await self._finished_on(request.job)):
                # A try whose reply was lost with its connection completed it (redis-py retries a command on
                # a lost connection too), or another worker did: the job is done either way. Had that try
                # fetched a job too, that job waits for its lock to expire.
                return {"result": None, "finishedOn": finished_on}
            if not unreachable or worker.forceClosing or time.monotonic() > deadline:
                raise exc
            worker.emit("error", exc)  # what Redis is doing is the RedisWatch's to say, once
            await asyncio.sleep(delay)
            try:
                return await self._complete(request)
            except Exception as again:
                exc = again
        raise AssertionError("unreachable: the delays never end")

    async def _finished_on(self, job: Any) -> int | None:
        """When the job was completed, if it is in the completed set; None otherwise (or Redis unreachable)."""
        scripts = self._backend.scripts
        try:
            score = await scripts.redisClient.zscore(scripts.keys["completed"], job.id)
        except Exception:
            return None
        return None if score is None else int(score)

    async def _complete(self, request: CompletionRequest) -> Any:
        if request.progress is None:
            return await request.move_to_completed(by=self._backend)
        return await self._progress_and_complete(request)

    async def _progress_and_complete(self, request: CompletionRequest) -> Any:
        """Both scripts in one pipeline: not a transaction, so that a progress refused does not stop the
        completion. (redis-py's cluster pipeline refuses EVALSHA: on a Cluster they go one after the other.)"""
        scripts = self._backend.scripts
        if isinstance(scripts.redisClient, RedisCluster):
            return await self._one_by_one(request)
        job = request.job

        async def progress_then_complete(dry: Any) -> None:
            await dry.updateProgress(job.id, request.progress)
            await request.move_to_completed(by=dry)

        calls = await recorded_calls(scripts, progress_then_complete)
        if tuple(call.name for call in calls) != PROGRESS_AND_COMPLETION:  # a bullmq this was not made for
            return await self._one_by_one(request)
        commands = [("EVALSHA", scripts.commands[c.name].sha, len(c.keys), *c.keys, *c.args) for c in calls]
        progressed, finished = await self._round_trip.send(scripts.redisClient, commands)
        await self._progress_outcome(request, progressed)
        # A restarted Redis has lost the scripts: bullmq's own calls load them again.
        if isinstance(finished, NoScriptError):
            return await request.move_to_completed(by=self._backend)
        if isinstance(finished, Exception):
            raise finished
        if isinstance(finished, int) and finished < 0:  # what bullmq's Scripts.moveToFinished raises
            raise scripts.finishedErrors(
                {"code": finished, "jobId": job.id, "command": "moveToFinished", "state": "active"}
            )
        finished_on = calls[1].args[1]
        return {"result": None if finished is None else raw2NextJobData(finished), "finishedOn": finished_on}

    async def _progress_outcome(self, request: CompletionRequest, progressed: Any) -> None:
        """What updateProgress answered in the pipeline; a refusal is reported, the job completes anyway."""
        # Scripts lost by a restarted Redis: bullmq's own call loads them again. (Should a failing job have
        # loaded moveToFinished again meanwhile, but not updateProgress, this progress follows the completion.)
        if isinstance(progressed, NoScriptError):
            try:
                progressed = await self._publish_progress(request)
            except Exception as exc:  # the completion is done: what remains is only to report it
                progressed = exc
        if isinstance(progressed, int) and progressed < 0:
            progressed = self._backend.scripts.finishedErrors(
                {"code": progressed, "jobId": request.job.id, "command": "updateProgress"}
            )
        if isinstance(progressed, Exception):
            self._worker.emit("progress_failed", request.job, request.progress, progressed)

    async def _publish_progress(self, request: CompletionRequest) -> Exception | None:
        """bullmq's own updateProgress: the error a refused progress gives. Redis unreachable is raised: the
        completion is then tried again, progress first."""
        try:
            await self._backend.updateProgress(request.job.id, request.progress)
        except Exception as exc:
            if self._worker.isConnectionError(exc):
                raise
            return exc
        return None

    async def _one_by_one(self, request: CompletionRequest) -> Any:
        failure = await self._publish_progress(request)
        if failure is not None:
            self._worker.emit("progress_failed", request.job, request.progress, failure)
        return await request.move_to_completed(by=self._backend)
