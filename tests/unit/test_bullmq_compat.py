"""The bullmq internals the adapter relies on (kpi_export/bullmq/compat.py) are there, with the shape it
expects, in the bullmq installed: a release that changes one fails here, not in a production job."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from bullmq import Worker
from bullmq.scripts import Scripts

from kpi_export.bullmq import compat

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


async def test_every_bullmq_internal_the_adapter_relies_on_is_there_with_its_shape() -> None:
    assert await compat.problems() == []


def test_the_range_declared_in_pyproject_is_the_one_the_adapter_was_written_for() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert f"bullmq>={compat.BULLMQ_MIN},<{compat.BULLMQ_BELOW}" in dependencies


@pytest.mark.parametrize(
    ("installed", "problem"),
    [("3.4.4", False), ("3.4.9", False), ("3.4.3", True), ("3.5.0", True), ("4.0.0", True)],
)
def test_a_bullmq_outside_the_range_is_named(installed: str, problem: bool) -> None:
    assert (compat.version_problem(installed) is not None) is problem


# The checker itself, against the changes an upgrade could bring: each must be found.


async def test_a_renamed_parameter_of_an_overridden_method_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nextJobFromJobData(self: Any, job_data: Any, job_id: Any, limit: int = 0) -> None: ...

    monkeypatch.setattr(Worker, "nextJobFromJobData", nextJobFromJobData)
    found = await compat.problems()
    assert any(problem.startswith("Worker.nextJobFromJobData(") for problem in found), found


async def test_a_script_that_takes_one_more_key_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    async def updateProgress(self: Any, job_id: str, progress: Any) -> None:
        await self.commands["updateProgress"](keys=[self.toKey(job_id), "one-more"], args=[job_id, "{}"])

    monkeypatch.setattr(Scripts, "updateProgress", updateProgress)
    found = await compat.problems()
    assert "script updateProgress called with 2 keys, not 3" in found


async def test_a_missing_worker_attribute_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    original_init = Worker.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        del self.drained

    monkeypatch.setattr(Worker, "__init__", init)
    assert "Worker.drained is missing" in await compat.problems()


async def test_a_changed_lock_message_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Scripts.finishedErrors

    def finishedErrors(self: Any, opts: dict[str, Any]) -> Exception:
        if opts["code"] == -6:  # JobLockMismatch
            return TypeError(f"Lock not held for job {opts.get('jobId')}")
        found: Exception = original(self, opts)
        return found

    monkeypatch.setattr(Scripts, "finishedErrors", finishedErrors)
    found = await compat.problems()
    assert any(problem.startswith("finishedErrors(JobLockMismatch)") for problem in found), found
