"""Helpers for the integration tests: wait on the queue's events, read the audit table, run a worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, Self

import asyncpg
from bullmq import QueueEvents
from click.testing import CliRunner, Result
from sqlalchemy import select

from kpi_export.bullmq import node_client_name, opened_queue, redis_client
from kpi_export.cli import cli
from kpi_export.config import Settings
from kpi_export.logs import START_LINE
from kpi_export.runtime.lifecycle import run_worker
from kpi_export.runtime.signals import StopSignals
from kpi_export.store import audit_table, opened_engine
from tests.services import worker_env

# What the tests wait for before they give a worker jobs: the beginning of the original's start line, which a
# worker prints once it listens on the queue (each process under a supervisor prints its own).
LISTENING = "Worker escuchando"


def start_line(settings: Settings, concurrency: int | None = None) -> str:
    """The original's start line, in full, for `settings`' queue: `Worker escuchando cola "…" (concurrency=N)`
    (its text is held against the Node original's in tests/interop/test_original_lines.py and written out in
    tests/unit/test_logs.py)."""
    return START_LINE % (
        settings.queue.name,
        settings.worker.concurrency if concurrency is None else concurrency,
    )


class JobEvents:
    """Follows the queue's event stream from its start, so that no event can be missed."""

    def __init__(self, settings: Settings) -> None:
        self._events = QueueEvents(
            settings.queue.name,
            {
                "connection": redis_client(settings.redis, max_connections=2),
                "lastEventId": "0-0",
                "blockingTimeout": 1000,
            },
        )
        self._finished: dict[str, asyncio.Future[tuple[str, Any]]] = {}
        self._events.on("completed", self._on_completed)
        self._events.on("failed", self._on_failed)

    def _future(self, job_id: str) -> asyncio.Future[tuple[str, Any]]:
        if job_id not in self._finished:
            self._finished[job_id] = asyncio.get_running_loop().create_future()
        return self._finished[job_id]

    def _on_completed(self, args: dict[str, Any], _id: str) -> None:
        future = self._future(args["jobId"])
        if not future.done():
            future.set_result(("completed", args.get("returnvalue")))

    def _on_failed(self, args: dict[str, Any], _id: str) -> None:
        future = self._future(args["jobId"])
        if not future.done():
            future.set_result(("failed", args.get("failedReason")))

    async def finished(self, job_id: str, timeout: float = 15) -> tuple[str, Any]:
        """("completed", returnvalue) or ("failed", failedReason) once the job has finished for good."""
        return await asyncio.wait_for(asyncio.shield(self._future(job_id)), timeout)

    async def close(self) -> None:
        await self._events.close()


@contextlib.asynccontextmanager
async def job_events(settings: Settings) -> AsyncIterator[JobEvents]:
    events = JobEvents(settings)
    try:
        yield events
    finally:
        await events.close()


async def run_numbered_jobs(settings: Settings, count: int) -> list[tuple[str, Any]]:
    """Jobs with usuarioId 1 … count, added at once; each one's (outcome, result or reason), in that order."""
    async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
        jobs = await queue.addBulk(
            [{"name": "kpi-export", "data": {"usuarioId": n}} for n in range(1, count + 1)]
        )
        return [await events.finished(job.id) for job in jobs]


async def audit_rows(settings: Settings) -> list[Any]:
    async with opened_engine(settings.database.target) as engine, engine.connect() as conn:
        return list((await conn.execute(select(audit_table).order_by(audit_table.c.idExport))).all())


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10, what: str = "the condition"
) -> None:
    """Check `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)  # the polling interval


async def wait_for_workers(settings: Settings, count: int = 1, timeout: float = 20) -> None:
    """Wait until `count` workers (Python or Node) listen on the queue, found as npm bullmq's `getWorkers()`
    finds them: by the names of their Redis connections."""
    prefix = node_client_name(settings.queue.prefix, settings.queue.name, "").removesuffix(":w:")
    client = redis_client(settings.redis, max_connections=1)

    async def listening() -> bool:
        names = {c["name"] for c in await client.client_list()}
        return len({n for n in names if n == prefix or n.startswith(f"{prefix}:w:")}) >= count

    try:
        await wait_until(listening, timeout, what=f"{count} worker(s) on queue {settings.queue.name}")
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def table_locked(settings: Settings) -> AsyncIterator[None]:
    """Hold an exclusive lock on the audit table (PostgreSQL, `?schema=` URL): inserts wait, so jobs stay in
    flight until the lock is released."""
    base, schema = settings.database.url.get_secret_value().split("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE kpi_auditoria_export IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        await transaction.rollback()
        await conn.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[StopSignals]:
    """The real worker (`run_worker`) in this event loop; stopped gracefully at the end."""
    stop = StopSignals(install=False)
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield stop
    finally:
        stop.request("test over")
        outcome = await asyncio.wait_for(task, timeout=settings.worker.shutdown_timeout + 10)
        assert outcome == 0


def cpu_wait_seconds(schedstat: str | Path = "/proc/thread-self/schedstat") -> float:
    """How long a thread (by default the calling one) has waited for a CPU so far: ready to run while other
    processes had the CPUs; the second field of its /proc/…/schedstat, in nanoseconds. 0 where the kernel
    keeps no such count, or the thread is gone."""
    try:
        return int(Path(schedstat).read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class WorkerProcess:
    """`kpi-export worker` (or `command`) as a child process; its output is collected line by line: `lines`
    in the order they arrived from both streams, `stdout` and `stderr` each stream's own.

    `with WorkerProcess(env) as worker:` the process is gone and its pipes closed at the end of the block
    (`kill()`), whatever happens in it; what a test asserts on its output or its rows comes after the block.
    `kill()` itself is for a test that needs the process gone before the end of its block."""

    def __init__(self, env: dict[str, str], *args: str, command: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "kpi_export", *(args or ("worker",))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, own), daemon=True)
            for pipe, own in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str] | None, own: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            with self._changed:
                own.append(line.rstrip("\n"))
                self.lines.append(own[-1])
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _reading(self) -> bool:
        return self.process.poll() is None or any(reader.is_alive() for reader in self._readers)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 20) -> str:
        """The first output line that contains `text`, waiting for it to be printed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reading():
                    raise AssertionError(f"no line with {text!r} in the worker's output:\n{self.output}")
                self._changed.wait(remaining)

    def wait_for_count(self, text: str, count: int, timeout: float = 20) -> None:
        """Until `count` output lines contain `text` (a supervisor's processes each print their start)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reading():
                    raise AssertionError(f"{text!r} not printed {count} times:\n{self.output}")
                self._changed.wait(remaining)

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user + system), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def busy_seconds(self) -> float:
        """How long the process has been busy so far: its CPU time, plus the time its threads have waited for
        a CPU (ready to run, the CPUs taken by others). A process that spins is busy all the time, however
        loaded the machine (it gets less CPU time, and waits for it the rest); one that waits on a timer or a
        socket is busy only when it wakes up."""
        waited = 0.0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            waited += cpu_wait_seconds(task / "schedstat")
        return self.cpu_seconds() + waited

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
        """Send `signum` and wait for the process to end: (its exit status, the seconds it took of its own
        doing). Those are the wall time from the signal to its exit less the time its main thread waited for a
        CPU meanwhile: a wait on a timer, a socket or a lock counts, a busy machine's delays do not."""
        pid = self.process.pid
        waited = cpu_wait_seconds(f"/proc/{pid}/schedstat")
        started = time.monotonic()
        self.process.send_signal(signum)
        # Until it has exited, without reaping it (WNOWAIT): its /proc entry stays, to be read once more.
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() - started > timeout:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            time.sleep(0.005)  # polling for the exit, as Popen.wait does
        elapsed = time.monotonic() - started
        waited = max(cpu_wait_seconds(f"/proc/{pid}/schedstat") - waited, 0.0)  # 0: no count, the wall time
        return self.wait(timeout), elapsed - waited

    def wait(self, timeout: float) -> int:
        status = self.process.wait(timeout)
        self._join()
        return status

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()

    def kill(self) -> None:
        """Make sure the process is gone and its pipes closed (kill -9 if it is still running)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def run_kpi_export(
    env: dict[str, str], *args: str, timeout: float = 60, command: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`kpi-export ARGS` run once as a process of its own, to its end (killed after `timeout` seconds), its
    output captured as text; `command`: what runs instead of `python -m kpi_export` (a probe around it)."""
    return subprocess.run(
        [*(command or (sys.executable, "-m", "kpi_export")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def invoke(
    settings: Settings, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """The CLI in a thread of its own (it runs its own event loop); `env` adds to the settings' variables."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke,
        cli,
        list(args),
        input=stdin,
        env=worker_env(settings) | (env or {}),
        catch_exceptions=False,
    )
