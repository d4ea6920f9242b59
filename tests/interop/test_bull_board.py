"""bull-board (npm, pinned in package-lock.json) over a queue this worker processes, read in headless
Chromium (Debian's): a completed job shows {"idExport": N} as its progress and its result, a failed one its
Spanish reason, and the queue's connected workers list this worker by its name.

`make screenshots` runs this test with BULL_BOARD_SCREENSHOTS=docs, which writes the README's pictures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kpi_export.bullmq import opened_queue, worker_name
from kpi_export.config import Settings
from tests.interop.node import run_node
from tests.services import require_tool
from tests.support import audit_rows, job_events, running_worker


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_bull_board_shows_this_workers_jobs_and_the_worker_itself(
    migrated: Settings, tmp_path: Path
) -> None:
    browser = require_tool("chromium", "chromium")
    pictures = Path(os.environ.get("BULL_BOARD_SCREENSHOTS") or tmp_path)
    queue_name = migrated.queue.name
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        good = await queue.add("kpi-export", {"usuarioId": 42, "ip": "203.0.113.7", "format": "xlsx"})
        bad = await queue.add("kpi-export", {"usuarioId": "cuarenta y dos"})
        outcomes = await events.finished(good.id), await events.finished(bad.id)
        name = worker_name()  # this process runs the worker (running_worker)
        shown = await run_node(
            "bull-board-check.mjs",
            {
                "redisUrl": migrated.redis.url.get_secret_value() if migrated.redis.url else "",
                "queue": queue_name,
                "chromium": browser,
                "pages": [
                    {
                        "path": f"/queue/{queue_name}/{good.id}",
                        "steps": [{"click": "Progress"}, {"waitFor": "idExport"}],
                        "screenshot": str(pictures / "bull-board-job.png"),
                    },
                    {
                        "path": f"/queue/{queue_name}/{good.id}",
                        "steps": [{"waitFor": "returnValue"}],
                        "screenshot": str(pictures / "bull-board-result.png"),
                    },
                    {"path": f"/queue/{queue_name}/{bad.id}", "steps": [{"waitFor": "inválido"}]},
                    {
                        "path": f"/queue/{queue_name}?status=completed",
                        "steps": [
                            {"click": "Queue info"},
                            {"waitFor": "Connected workers"},
                            {"click": "Connected workers"},
                            {"waitFor": name},
                        ],
                        "screenshot": str(pictures / "bull-board-workers.png"),
                    },
                ],
            },
            timeout=180,
        )
    (row,) = await audit_rows(migrated)
    assert outcomes == (
        ("completed", {"idExport": row.idExport}),
        ("failed", "usuarioId inválido en job.data"),
    )
    progress, result, failed, workers = (page["text"] for page in shown["pages"])
    assert f"idExport:{row.idExport}" in progress.replace(" ", "").replace("\n", "")
    assert f"returnValue:{{idExport:{row.idExport}}}" in result.replace(" ", "").replace("\n", "")
    assert "usuarioId inválido en job.data" in failed
    assert "Connected workers" in workers and name in workers
    for picture in ("bull-board-job.png", "bull-board-result.png", "bull-board-workers.png"):
        assert (pictures / picture).stat().st_size > 10_000, picture
