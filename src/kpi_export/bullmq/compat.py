"""Everything this adapter relies on in bullmq, in one place: the releases it was written for, and each
internal it overrides, calls or reads, with the shape it expects.

bullmq for Python is an alpha library whose internals change between releases (3.0.4 → 3.4.4 changed
`Worker.run`, `getNextJob`, `close()` and some scripts' key lists). `problems()` checks every entry below
against the bullmq installed; tests/unit/test_bullmq_compat.py fails on any, so that a release that changes one
fails a unit test (`make test-latest` runs it against the newest release) instead of a production job.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import bullmq
from bullmq.backends.redis_backend import RedisBackend
from bullmq.error_code import ErrorCode
from bullmq.lock_manager import LockManager
from bullmq.redis_connection import SCRIPT_DEFINITIONS
from bullmq.scripts import Scripts
from redis.asyncio import Redis

from kpi_export.bullmq.completion import PROGRESS_AND_COMPLETION, recorded_calls
from kpi_export.bullmq.events import LOCK_LOST, RENEWAL_FAILED

# The releases this adapter was written and tested for; pyproject.toml declares the same range.
BULLMQ_MIN = "3.4.4"
BULLMQ_BELOW = "3.5"

# Methods overridden (o) or called (c), with their parameter names, `self` first.
WORKER_METHODS: dict[str, tuple[str, ...]] = {
    "getNextJob": ("self", "token"),  # o: fetch pacing
    "processJob": ("self", "job", "token"),  # o: the job fetched with a completion
    "nextJobFromJobData": (
        "self",
        "job_data",
        "job_id",
        "limit_until",
        "delay_until",
        "token",
    ),  # o: unreadable
    "run": ("self",),  # o: Redis lost while naming the connections
    "close": ("self", "force"),  # o: quiesce; c
    "_ensure_client_names": ("self",),  # c
    "isConnectionError": ("self", "error"),  # c
    "cancelAllJobs": ("self", "reason"),  # c: the forced close
    "cancelProcessing": ("self",),  # c: the forced close
    "emit": ("self", "event_name", "args"),  # c
    "on": ("self", "event_name", "function"),  # c
}
# Attributes read or written on a Worker (`id` begins each of its lock tokens).
WORKER_ATTRIBUTES = (
    "id",
    "opts",
    "backend",
    "clientName",
    "closing",
    "paused",
    "drained",
    "waiting",
    "jobs",
    "processing",
    "forceClosing",
    "limitUntil",
    "blockUntil",
)
# The backend's methods that the adapter replaces (moveToCompleted) or calls.
BACKEND_METHODS: dict[str, tuple[str, ...]] = {
    "moveToCompleted": ("self", "job", "return_value", "remove_on_complete", "token", "fetch_next"),
    "updateProgress": ("self", "job_id", "progress"),
    "addJobs": ("self", "jobs"),
    "getJobData": ("self", "job_id"),
    "retryJobs": ("self", "state", "count", "timestamp"),
}
# Scripts methods run against a recorder (completion.py) or called.
SCRIPTS_METHODS: dict[str, tuple[str, ...]] = {
    "updateProgress": ("self", "job_id", "progress"),
    "moveToCompleted": ("self", "job", "val", "removeOnComplete", "token", "fetchNext"),
    "finishedErrors": ("self", "opts"),
    "retryJob": ("self", "job_id", "lifo", "token"),  # requeue_orphans
    "toKey": ("self", "name"),
    "getJobs": ("self", "types", "start", "end", "asc"),  # queue_reads: the raw hashes, decoded one by one
}
SCRIPTS_ATTRIBUTES = ("redisClient", "commands", "keys")
# Keys of `Scripts.keys` read directly.
QUEUE_KEYS = ("active", "completed", "events", "meta")
# How Worker.run makes the token of each fetch, which is the value of the job's lock key (`<job key>:lock`).
TOKEN_FORMAT = "f'{self.id}:{token_postfix}'"
# Lua scripts sent by the adapter itself (EVALSHA in a pipeline), and their number of keys.
SCRIPT_KEYS = {"updateProgress": 3, "moveToFinished": 14}
JOB_INIT = ("self", "queue", "name", "data", "opts", "job_id")
JOB_ATTRIBUTES = ("token", "timestamp", "attemptsMade", "deferredFailure", "processedOn", "progress", "delay")
JOB_FROM_JSON = ("queue", "rawData", "jobId")
QUEUE_METHODS: dict[str, tuple[str, ...]] = {
    "getJob": ("self", "job_id"),
    "getJobState": ("self", "job_id"),
    "getJobCounts": ("self", "types"),
    "getJobs": ("self", "types", "start", "end", "asc"),
    "toKey": ("self", "type"),
    "close": ("self",),
}
QUEUE_ATTRIBUTES = ("name", "prefix", "client", "backend", "qualifiedName", "keys")
# bullmq's events the adapter listens to, as its Worker emits them.
WORKER_EMITS = ('emit("completed", job, result)', 'emit("failed", job, err)', 'emit("stalled", jobId)')


def version_problem(installed: str | None = None) -> str | None:
    """Why the installed bullmq is not one this adapter was written for, or None."""
    found = installed or version("bullmq")
    if _release(BULLMQ_MIN) <= _release(found) < _release(BULLMQ_BELOW):
        return None
    return f"bullmq {found} is not in the range this worker was written for (>={BULLMQ_MIN},<{BULLMQ_BELOW})"


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


async def problems() -> list[str]:
    """Every internal listed above that the installed bullmq lacks, or has with another shape."""
    found: list[str] = []
    # A client that never connects: building a Worker, a Queue or a Job does no I/O.
    client = Redis(host="127.0.0.1", port=1, decode_responses=True)
    try:
        worker = bullmq.Worker("compat-check", _two_parameters, {"autorun": False, "connection": client})
        queue = bullmq.Queue("compat-check", {"connection": client})
        found += _methods(bullmq.Worker, WORKER_METHODS)
        found += _attributes(worker, WORKER_ATTRIBUTES)
        found += _methods(RedisBackend, BACKEND_METHODS)
        found += _attributes(worker.backend, ("scripts",))
        found += _methods(Scripts, SCRIPTS_METHODS)
        found += _attributes(worker.backend.scripts, SCRIPTS_ATTRIBUTES)
        found += _methods(bullmq.Queue, QUEUE_METHODS)
        found += _attributes(queue, QUEUE_ATTRIBUTES)
        found += _parameters(bullmq.Job.__init__, JOB_INIT, "Job.__init__")
        found += _parameters(bullmq.Job.fromJSON, JOB_FROM_JSON, "Job.fromJSON")
        job = bullmq.Job(worker, "compat-check", {}, {}, "1")
        found += _attributes(job, JOB_ATTRIBUTES)
        found += _script_files()
        found += await _recorded_script_calls(worker, job)
        found += _messages(worker.backend.scripts)
        found += _emits()
        found += await _locks(worker)
    finally:
        await client.aclose()
    return found


async def _two_parameters(job: Any, token: str) -> None:
    """A processor as KpiWorker's: two parameters, so that bullmq passes no abort signal."""


def _parameters(function: Callable[..., Any], expected: tuple[str, ...], where: str) -> list[str]:
    try:
        names = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return [f"{where}: no signature to inspect"]
    if names[: len(expected)] != expected:
        return [f"{where}{names} is not {where}{expected}"]
    return []


def _methods(owner: type, expected: dict[str, tuple[str, ...]]) -> list[str]:
    found = []
    for name, parameters in expected.items():
        method = getattr(owner, name, None)
        if not callable(method):
            found.append(f"{owner.__name__}.{name} is missing")
        else:
            found += _parameters(method, parameters, f"{owner.__name__}.{name}")
    return found


def _attributes(instance: Any, names: tuple[str, ...]) -> list[str]:
    return [f"{type(instance).__name__}.{name} is missing" for name in names if not hasattr(instance, name)]


def _script_files() -> list[str]:
    """bullmq names each script's file after its number of keys: `moveToFinished-14.lua`."""
    found = []
    for name, keys in SCRIPT_KEYS.items():
        file = SCRIPT_DEFINITIONS.get(name)
        if file != f"{name}-{keys}.lua":
            found.append(f"script {name}: {file or 'missing'}, expected {name}-{keys}.lua")
    return found


async def _recorded_script_calls(worker: Any, job: Any) -> list[str]:
    """completion.py's pipeline: bullmq's methods, run against the recorder, make the calls it sends."""

    async def progress_then_complete(dry: Any) -> None:
        await dry.updateProgress(job.id, {"idExport": 1})
        await dry.moveToCompleted(job, {"idExport": 1}, False, "token", True)

    try:
        calls = await recorded_calls(worker.backend.scripts, progress_then_complete)
    except Exception as exc:
        return [f"Scripts.updateProgress/moveToCompleted failed against the recorder: {exc!r}"]
    names = tuple(call.name for call in calls)
    if names != PROGRESS_AND_COMPLETION:
        return [f"Scripts.updateProgress + moveToCompleted call {names}, not {PROGRESS_AND_COMPLETION}"]
    found = [
        f"script {call.name} called with {len(call.keys)} keys, not {SCRIPT_KEYS[call.name]}"
        for call in calls
        if len(call.keys) != SCRIPT_KEYS[call.name]
    ]
    if not isinstance(calls[1].args[1], int):
        found.append("moveToFinished's second argument is no longer the finishedOn timestamp")
    found += [
        f"Scripts.commands[{name!r}] has no sha"
        for name in PROGRESS_AND_COMPLETION
        if not isinstance(getattr(worker.backend.scripts.commands.get(name), "sha", None), str)
    ]
    return found


def _messages(scripts: Any) -> list[str]:
    """The texts events.py tells a lost lock and a failed renewal by."""
    found = []
    for code, prefix in zip((ErrorCode.JobLockNotExist, ErrorCode.JobLockMismatch), LOCK_LOST, strict=True):
        message = str(scripts.finishedErrors({"code": code.value, "jobId": "1", "command": "moveToFinished"}))
        if not message.startswith(prefix):
            found.append(f"finishedErrors({code.name}) says {message!r}, not {prefix!r}…")
    if RENEWAL_FAILED not in inspect.getsource(LockManager):
        found.append(f"LockManager no longer emits {RENEWAL_FAILED!r}")
    return found


def _emits() -> list[str]:
    source = inspect.getsource(bullmq.Worker)
    return [f"Worker no longer does {call}" for call in WORKER_EMITS if call not in source]


async def _locks(worker: Any) -> list[str]:
    """requeue_orphans reads a job's lock (its key, its token) and hands the job back with retryJob."""
    scripts = worker.backend.scripts
    found = [f"Scripts.keys has no {name!r}" for name in QUEUE_KEYS if name not in scripts.keys]
    if TOKEN_FORMAT not in inspect.getsource(bullmq.Worker.run):
        found.append(f"Worker.run no longer makes its lock tokens as {TOKEN_FORMAT}")
    try:
        extend = await recorded_calls(scripts, lambda dry: dry.extendLock("1", "token", 1000))
        retry = await recorded_calls(scripts, lambda dry: dry.retryJob("1", True, "token"))
        fetch = await recorded_calls(scripts, lambda dry: dry.moveToActive("token", {"lockDuration": 1000}))
    except Exception as exc:
        return [*found, f"Scripts.extendLock/retryJob/moveToActive failed against the recorder: {exc!r}"]
    # A job's processedOn is the timestamp the worker sends with moveToActive: its own clock.
    if not fetch or abs(int(fetch[0].args[1]) - time.time() * 1000) > 60_000:
        found.append(f"moveToActive no longer sends the worker's clock as the job's processedOn: {fetch}")
    if not extend or extend[0].keys[0] != f"{scripts.toKey('1')}:lock" or extend[0].args[0] != "token":
        found.append(f"a job's lock is no longer `<job key>:lock` holding its token: {extend}")
    if [call.name for call in retry] != ["retryJob"] or scripts.keys["active"] not in retry[0].keys:
        found.append(f"Scripts.retryJob no longer takes a job from active with one script: {retry}")
    for code in (ErrorCode.JobNotExist, ErrorCode.JobLockNotExist, ErrorCode.JobNotInState):
        if not isinstance(scripts.finishedErrors({"code": code.value, "jobId": "1"}), TypeError):
            found.append(
                f"finishedErrors({code.name}) is no longer a TypeError (requeue_orphans catches those)"
            )
    return found
