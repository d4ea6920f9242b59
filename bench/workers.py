"""The contenders, each as the process(es) an operator would run, and what they cost the machine."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import psutil

from bench.targets import Place

NODE_BASELINE = Path(__file__).parent / "node-baseline"
START_LINE = "Worker escuchando cola"


@dataclass(frozen=True)
class Contender:
    name: str  # "python", "python-2p", "node", "noop"
    runtime: str  # "python" or "node"
    processes: int = 1
    noop: bool = False  # npm bullmq completing each job with nothing done: the queue's ceiling
    python: str | None = None  # another commit's interpreter (--baseline); None: this checkout's
    revision: str | None = None

    @property
    def label(self) -> str:
        if self.revision is not None:
            return f"this worker at {self.revision}"
        if self.noop:
            return "npm bullmq, no-op"
        if self.runtime == "node":
            return "Node original"
        return "this worker" + (f", {self.processes} processes" if self.processes > 1 else "")


CONTENDERS = {
    "python": Contender("python", "python"),
    "python-2p": Contender("python-2p", "python", processes=2),
    "node": Contender("node", "node"),
    "noop": Contender("noop", "node", noop=True),
}


class RunningWorker:
    """A worker started for one run; its output goes to `log`. One left running when the bench exits (an
    error, SIGTERM) is killed then."""

    running: ClassVar[set[subprocess.Popen[bytes]]] = set()

    def __init__(
        self, contender: Contender, place: Place, concurrency: int, log: Path, wrap: tuple[str, ...] = ()
    ) -> None:
        self.contender = contender
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "WORKER_"))}
        env |= {
            "QUEUE_NAME": place.queue,
            "WORKER_CONCURRENCY": str(concurrency),
            "DATABASE_URL": place.database_url,
        }
        if contender.runtime == "node":
            parts = urlsplit(place.redis_url)
            env |= {"REDIS_HOST": parts.hostname or "127.0.0.1", "REDIS_PORT": str(parts.port or 6379)}
            script = "noop-worker.js" if contender.noop else "worker.js"
            command = ["node", str(NODE_BASELINE / "dist" / script)]
        else:
            env |= {
                "REDIS_URL": place.redis_url,
                "WORKER_PROCESSES": str(contender.processes),
                # Keep every completed job, as the original does: the check reads each one back.
                "KEEP_COMPLETED_COUNT": "100000000",
            }
            command = [contender.python or sys.executable, "-m", "kpi_export", "worker"]
        with log.open("wb") as out:
            self.process = subprocess.Popen([*wrap, *command], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.running.add(self.process)
        self.root = psutil.Process(self.process.pid)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every process has printed the start line."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(START_LINE) < self.contender.processes:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.contender.name} did not start: see {self.log}")
            time.sleep(0.05)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU of the worker's process(es) so far."""
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of resident memory (VmHWM), summed over the process(es)."""
        total_kb = 0
        for proc in self._tree():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        return total_kb / 1024

    def stop(self, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
            self.running.discard(self.process)
            return status
        except subprocess.TimeoutExpired:
            for proc in reversed(self._tree()):
                proc.kill()
            self.process.wait()
            raise RuntimeError(
                f"{self.contender.name} did not stop within {timeout} s: see {self.log}"
            ) from None


@atexit.register
def _kill_leftovers() -> None:
    for process in RunningWorker.running:
        if process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(process.pid)
                for proc in [*root.children(recursive=True), root]:
                    proc.kill()


def node_baseline_ready() -> bool:
    return (NODE_BASELINE / "dist" / "worker.js").is_file()
