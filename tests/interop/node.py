"""Running the Node side of the interop tests: npm bullmq as the producer, a Node consumer, the original."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpi_export.config import Settings
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess

NODE_DIR = Path(__file__).parent
JOB_NAME = "kpi-export"


async def run_node(
    script: str, payload: Any, *, env: dict[str, str] | None = None, timeout: float = 60
) -> Any:
    """`node script` with `payload` as JSON on stdin; returns the JSON it prints."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(json.dumps(payload).encode()), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise AssertionError(f"node {script} exited with {process.returncode}:\n{err.decode()}")
    return json.loads(out)


async def node_streams(script: str, payload: Any, *, timeout: float = 30) -> tuple[list[str], list[str]]:
    """`node script` with `payload` as JSON on stdin; the lines it printed on stdout and on stderr."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(payload).encode()), timeout)
    if process.returncode != 0:
        raise AssertionError(f"node {script} exited with {process.returncode}:\n{err.decode()}")
    return out.decode().splitlines(), err.decode().splitlines()


@dataclass
class Produced:
    """What the Node producer saw: ids in the order added, waitUntilFinished outcomes, events, jobs."""

    added: list[str]
    finished: dict[str, dict[str, Any]]
    events: dict[str, list[dict[str, Any]]]
    jobs: dict[str, dict[str, Any] | None]
    workers: list[str]  # npm bullmq's queue.getWorkers(): the workers' connection names

    def job(self, job_id: str) -> dict[str, Any]:
        snapshot = self.jobs[job_id]
        assert snapshot is not None, f"job {job_id} is gone from Redis"
        return snapshot

    def event_names(self, job_id: str) -> list[str]:
        return [event["event"] for event in self.events.get(job_id, [])]


def add(data: Any, opts: dict[str, Any] | None = None, name: str = JOB_NAME) -> dict[str, Any]:
    return {"add": {"name": name, "data": data, "opts": opts or {}}}


def added_while_paused(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    """Add everything while the queue is paused, then resume: waitUntilFinished listens before any job can
    finish, and the consumer sees all the jobs at once (priorities)."""
    return [{"pause": True}, *steps, {"resume": True}, {"wait": True}]


async def produce(settings: Settings, steps: list[dict[str, Any]], timeout: float = 30) -> Produced:
    """Run the steps with npm bullmq (`producer.mjs`) against the settings' Redis (one server or a Cluster),
    prefix and queue."""
    payload: dict[str, Any] = {"prefix": settings.queue.prefix}
    if settings.redis.cluster_nodes:
        payload["clusterNodes"] = [
            {"host": host, "port": port} for host, port in settings.redis.cluster_nodes
        ]
    else:
        assert settings.redis.url is not None
        payload["redisUrl"] = settings.redis.url.get_secret_value()
    payload |= {
        "queue": settings.queue.name,
        "timeoutMs": int(timeout * 1000),
        "steps": steps,
    }
    result = await run_node("producer.mjs", payload, timeout=timeout + 15)
    return Produced(**result)


@contextlib.asynccontextmanager
async def original_worker(settings: Settings, **env: str) -> AsyncIterator[WorkerProcess]:
    """The Node original (`original-worker.mjs`) on the settings' queue and database; SIGTERM at the end."""
    with WorkerProcess(
        worker_env(settings, **env), command=["node", str(NODE_DIR / "original-worker.mjs")]
    ) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        yield worker
        worker.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(worker.wait, 15)
        assert status == 0, worker.output
