"""One trace from the click to the audit row: a Node web application adds jobs inside a span of its own with
npm bullmq and bullmq-otel; this worker (a process, OTLP over http/protobuf to a receiver in the test)
continues the trace as a Node worker with bullmq-otel does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from kpi_export.config import Settings
from tests.docs import Page
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.interop.node import NODE_DIR, run_node
from tests.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, invoke, job_events

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SERVICE = "kpi-export-worker-test"
# What a Node worker with bullmq-otel gives each attempt (bullmq 6, worker.ts processJob); this worker the same.
JOB_SPAN_KEYS = {
    "bullmq.queue.name",
    "bullmq.queue.operation",
    "bullmq.worker.id",
    "bullmq.worker.name",
    "bullmq.job.id",
    "bullmq.job.name",
    "bullmq.job.attempts.made",
    "bullmq.job.processed.timestamp",
    "bullmq.job.attempt_finished_timestamp",
}
IPS = ("203.0.113.7", "198.51.100.4")


def traced_env(settings: Settings, receiver_url: str, **extra: str) -> dict[str, str]:
    return worker_env(
        settings,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url,
        OTEL_SERVICE_NAME="kpi-export-worker-test",
        OTEL_BSP_SCHEDULE_DELAY="100",  # the batch goes out within 0.1 s: the test waits less
        LOG_FORMAT="json",
        **extra,
    )


async def produce(settings: Settings, receiver: OtlpReceiver, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    payload = {
        "redisUrl": settings.redis.url.get_secret_value() if settings.redis.url else "",
        "queue": settings.queue.name,
        "otlpUrl": f"{receiver.url}/v1/traces",
        "jobs": jobs,
    }
    produced: dict[str, Any] = await run_node("otel-producer.mjs", payload | {"serviceName": "kpi-web-app"})
    return produced


def job_spans(spans: list[ReceivedSpan], settings: Settings, service: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == f"process {settings.queue.name}" and s.service == service]


@sqlite_only
async def test_the_worker_continues_the_producers_trace(migrated: Settings) -> None:
    async with otlp_receiver() as receiver, job_events(migrated) as events:
        with WorkerProcess(traced_env(migrated, receiver.url)) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING, 30)
            jobs: list[dict[str, Any]] = [
                {"data": {"usuarioId": 42, "ip": IPS[0], "filters": {"area": "ventas"}}},
                {"data": {"usuarioId": "not a number", "ip": IPS[1]}},
            ]
            produced = await produce(migrated, receiver, jobs)
            good, bad = produced["added"]
            outcomes = [await events.finished(good), await events.finished(bad)]
            service = "kpi-export-worker-test"
            spans = await receiver.wait_for(
                lambda found: (
                    len(job_spans(found, migrated, service)) == 2
                    and len([s for s in found if s.service == service]) >= 4
                ),
                what="the worker's spans",
            )

    rows = await audit_rows(migrated)
    assert outcomes == [
        ("completed", {"idExport": rows[0].idExport}),
        ("failed", "usuarioId inválido en job.data"),
    ]
    adds = {
        s.attributes["bullmq.job.id"]: s for s in spans if s.name == f"add {migrated.queue.name}.kpi-export"
    }
    by_job = {s.attributes["bullmq.job.id"]: s for s in job_spans(spans, migrated, service)}
    for job_id in (good, bad):
        span, producer = by_job[job_id], adds[job_id]
        assert span.trace_id == produced["traceId"] == producer.trace_id
        assert span.parent_span_id == producer.span_id  # the add span, child of the click
        assert producer.parent_span_id == produced["clickSpanId"]
        assert span.kind == "CONSUMER"
        assert set(span.attributes) == JOB_SPAN_KEYS, set(span.attributes) ^ JOB_SPAN_KEYS
        assert span.attributes["bullmq.queue.operation"] == "process"
        assert span.attributes["bullmq.job.attempts.made"] == 1
    completed, failed = by_job[good], by_job[bad]
    assert completed.events == [
        ("job completed", {"bullmq.job.result": json.dumps({"idExport": rows[0].idExport})})
    ]
    assert completed.status_code == 0
    assert failed.events == [("job failed", {"bullmq.job.failed.reason": "usuarioId inválido en job.data"})]
    assert (failed.status_code, failed.status_message) == (2, "usuarioId inválido en job.data")
    children = {s.name: s for s in spans if s.parent_span_id == completed.span_id}
    assert set(children) == {"INSERT kpi_auditoria_export", f"moveToFinished {migrated.queue.name}"}
    assert children["INSERT kpi_auditoria_export"].attributes["db.system"] == "sqlite"
    assert all(s.trace_id == completed.trace_id for s in children.values())
    # No job data in any attribute or event of the worker's spans: the ips are personal data.
    text = json.dumps([(s.attributes, s.events) for s in spans if s.service == service])
    assert not any(ip in text for ip in IPS) and "ventas" not in text
    # JSON log lines of a job carry its trace and span ids.
    lines = [json.loads(line) for line in worker.lines if line.startswith("{")]
    done = next(line for line in lines if line.get("event") == "job.completed")
    assert (done["trace_id"], done["span_id"]) == (completed.trace_id, completed.span_id)


@sqlite_only
async def test_a_node_worker_and_this_worker_give_the_same_span(migrated: Settings) -> None:
    """The same producer, two workers one after the other: the job spans' name, kind and attribute keys."""
    async with otlp_receiver() as receiver:
        produced = await produce(migrated, receiver, [{"data": {"usuarioId": 7}}])
        node = await run_node(
            "otel-worker.mjs",
            {
                "redisUrl": migrated.redis.url.get_secret_value() if migrated.redis.url else "",
                "queue": migrated.queue.name,
                "otlpUrl": f"{receiver.url}/v1/traces",
                "count": 1,
                "name": "node-worker",
                "serviceName": "kpi-node-worker",
            },
        )
        assert node["completed"] == produced["added"]
        produced_again = await produce(migrated, receiver, [{"data": {"usuarioId": 8}}])
        async with job_events(migrated) as events:
            with WorkerProcess(traced_env(migrated, receiver.url)):
                await events.finished(produced_again["added"][0])
                spans = await receiver.wait_for(
                    lambda found: len(job_spans(found, migrated, "kpi-export-worker-test")) == 1
                )
    (node_span,) = job_spans(spans, migrated, "kpi-node-worker")
    (this_span,) = job_spans(spans, migrated, "kpi-export-worker-test")
    table = {
        "name": (node_span.name, this_span.name),
        "kind": (node_span.kind, this_span.kind),
        "attribute keys": (sorted(node_span.attributes), sorted(this_span.attributes)),
        "event names": ([e[0] for e in node_span.events], [e[0] for e in this_span.events]),
        "event attribute keys": (
            [sorted(e[1]) for e in node_span.events],
            [sorted(e[1]) for e in this_span.events],
        ),
    }
    assert all(node == this for node, this in table.values()), json.dumps(table, indent=1)
    assert node_span.trace_id == produced["traceId"] and this_span.trace_id == produced_again["traceId"]


@sqlite_only
@pytest.mark.parametrize(
    "tm",
    [None, "not json", json.dumps({"traceparent": "00-zz-yy-01"}), json.dumps(["traceparent"])],
    ids=["none", "not-json", "bad-traceparent", "not-an-object"],
)
async def test_a_job_without_a_readable_context_starts_a_new_trace(
    migrated: Settings, tm: str | None
) -> None:
    async with otlp_receiver() as receiver, job_events(migrated) as events:
        with WorkerProcess(traced_env(migrated, receiver.url)) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING, 30)
            opts = {} if tm is None else {"tm": tm}
            ids = [await _add(migrated, {"usuarioId": n}, opts) for n in (1, 2)]
            outcomes = [await events.finished(job_id) for job_id in ids]
            spans = await receiver.wait_for(
                lambda found: len(job_spans(found, migrated, "kpi-export-worker-test")) == 2
            )
    assert [outcome for outcome, _ in outcomes] == ["completed", "completed"]
    for span in job_spans(spans, migrated, "kpi-export-worker-test"):
        assert span.parent_span_id == "" and len(span.trace_id) == 32  # a root: a new trace
    warnings = [line for line in worker.lines if "trace context (opts.tm)" in line]
    assert len(warnings) == (0 if tm is None else 1), warnings  # one a minute, not one a job


@sqlite_only
async def test_with_the_collector_down_jobs_complete_and_one_warning_says_so(migrated: Settings) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    env = traced_env(migrated, nobody, OTEL_EXPORTER_OTLP_TIMEOUT="1")
    async with job_events(migrated) as events:
        with WorkerProcess(env) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING, 30)
            ids = [await _add(migrated, {"usuarioId": n}, {}) for n in range(1, 41)]
            outcomes = [await events.finished(job_id, timeout=30) for job_id in ids]
            await asyncio.to_thread(worker.wait_for_line, "Spans not exported", 30)
            worker.process.send_signal(signal.SIGTERM)  # the spans left cannot go out: the stop does not wait
            status = await asyncio.to_thread(worker.wait, 20)
    assert status == 0 and "Not closed cleanly" not in worker.output, worker.output
    assert {outcome for outcome, _ in outcomes} == {"completed"}
    assert len(await audit_rows(migrated)) == 40
    assert sum("Spans not exported" in line for line in worker.lines) == 1, worker.output
    assert "Traceback" not in worker.output


@sqlite_only
async def test_enqueue_starts_a_trace_the_worker_continues(migrated: Settings) -> None:
    async with otlp_receiver() as receiver, job_events(migrated) as events:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "kpi-export-cli"}
        added = await invoke(migrated, "enqueue", "--usuario-id", "5", env=env)
        job_id = added.stdout.strip()
        with WorkerProcess(traced_env(migrated, receiver.url)):
            await events.finished(job_id)
            spans = await receiver.wait_for(
                lambda found: len(job_spans(found, migrated, "kpi-export-worker-test")) == 1
            )
    (producer,) = [s for s in spans if s.service == "kpi-export-cli"]
    (consumer,) = job_spans(spans, migrated, "kpi-export-worker-test")
    assert (producer.name, producer.kind) == (f"add {migrated.queue.name}.kpi-export", "PRODUCER")
    assert consumer.trace_id == producer.trace_id and consumer.parent_span_id == producer.span_id


async def _add(settings: Settings, data: dict[str, Any], opts: dict[str, Any]) -> str:
    from kpi_export.bullmq import opened_queue

    async with opened_queue(settings.redis, settings.queue) as queue:
        return str((await queue.add("kpi-export", data, opts)).id)


@sqlite_only
async def test_the_processing_time_histogram_carries_trace_ids_as_exemplars(migrated: Settings) -> None:
    port = free_port()
    async with otlp_receiver() as receiver, job_events(migrated) as events:
        with WorkerProcess(
            traced_env(migrated, receiver.url, HEALTH_PORT=str(port), HEALTH_HOST="127.0.0.1")
        ) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING, 30)
            job_id = await _add(migrated, {"usuarioId": 3}, {})
            await events.finished(job_id)
            spans = await receiver.wait_for(lambda found: len(job_spans(found, migrated, SERVICE)) == 1)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/metrics"
                async with session.get(url, headers={"Accept": "application/openmetrics-text"}) as response:
                    openmetrics = await response.text()
                async with session.get(url) as response:
                    plain = await response.text()
    (span,) = job_spans(spans, migrated, SERVICE)
    exemplars = [
        line
        for line in openmetrics.splitlines()
        if line.startswith("kpi_export_job_duration_seconds_bucket") and " # " in line
    ]
    assert exemplars and all(f'trace_id="{span.trace_id}"' in line for line in exemplars), openmetrics
    assert openmetrics.rstrip().endswith("# EOF")
    assert " # {" not in plain  # Prometheus' text format has no exemplars


def documented_producer() -> str:
    """The producer.mjs of the tracing page's example, as written there."""
    text = Page.of("operating/tracing.md").text
    start = text.index("cat > producer.mjs <<'JS'\n") + len("cat > producer.mjs <<'JS'\n")
    return text[start : text.index("\nJS\n", start) + 1]


@sqlite_only
async def test_the_documented_tracing_example_runs_on_the_redis_of_redis_url(
    migrated: Settings, tmp_path: Path
) -> None:
    """The example's producer takes REDIS_URL (here a private Redis, not 6379) and QUEUE_NAME; the worker
    then continues its trace."""
    script = (
        NODE_DIR / f"documented-producer-{migrated.queue.name}.mjs"
    )  # beside node_modules, to import them
    script.write_text(documented_producer())
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = migrated.replace(redis_url=SecretStr(server.url))
        async with otlp_receiver() as receiver, job_events(settings) as events:
            try:
                with WorkerProcess(traced_env(settings, receiver.url)) as worker:
                    await asyncio.to_thread(worker.wait_for_line, LISTENING, 30)
                    env = {
                        **os.environ,
                        "REDIS_URL": server.url,
                        "QUEUE_NAME": settings.queue.name,
                        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                    }
                    ran = await asyncio.to_thread(
                        subprocess.run,
                        ["node", script.name],
                        cwd=NODE_DIR,
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    assert ran.returncode == 0, ran.stderr
                    job_id = ran.stdout.split()[2]
                    assert ran.stdout == f"added job {job_id} to {settings.queue.name}\n"
                    outcome = await events.finished(job_id)
                    spans = await receiver.wait_for(
                        lambda found: len(job_spans(found, settings, SERVICE)) == 1, what="the worker's span"
                    )
            finally:
                script.unlink()
    assert outcome[0] == "completed"
    add = next(s for s in spans if s.name == f"add {settings.queue.name}.kpi-export")
    assert job_spans(spans, settings, SERVICE)[0].parent_span_id == add.span_id
