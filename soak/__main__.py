"""`make soak` (`python -m soak`): the production shape on this machine for SOAK_MINUTES, a fault every 30 s in
rotation, and the ledger at the end (soak/ledger.py), written with a report and a picture (soak/report.py).
Exit status 0 when the ledger is whole, 1 when it is not."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from tests.topology import SentinelGroup, wait_for

from soak import faults, ledger, report
from soak.plant import KPI_EXPORT, Databases, Producer, WorkerService, is_valid

QUEUE = "kpi-soak"
PAGE = 5000
RSS_EVERY = 5.0  # seconds between two samples of the workers' memory


def main() -> int:
    args = _arguments()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="kpi-soak-"))
    # A SIGTERM (a CI job's timeout) stops the servers too, as Control-C does.
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(143))
    status = run(args, folder, out)
    if status == 0:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        say(f"the servers' and processes' files are kept in {folder}")
    return status


def run(args: argparse.Namespace, folder: Path, out: Path) -> int:
    say(f"starting Redis (master, replica, 3 sentinels) and PostgreSQL (primary, standby) in {folder}")
    redis_group = SentinelGroup(folder / "redis")
    databases: Databases | None = None
    worker: WorkerService | None = None
    producer: Producer | None = None
    try:
        databases = Databases(folder / "pg")
        env = _worker_env(redis_group, databases, args)
        upgraded = subprocess.run(
            [str(KPI_EXPORT), "db", "upgrade"], env=env, capture_output=True, text=True, check=False
        )
        if upgraded.returncode != 0:
            raise RuntimeError(f"kpi-export db upgrade: {upgraded.stderr.strip()}")
        worker = WorkerService(env, folder)
        wait_for(lambda: _listening(folder, args.processes), 120, "the worker processes to listen")
        plant = faults.Plant(redis_group, databases, worker)
        producer = Producer(
            redis_group, QUEUE, rate=args.rate, burst=args.burst, burst_every=args.burst_every, folder=folder
        )
        timeline = _soak(plant, producer, args)
        say("draining: the producer stopped, waiting for every job it added to finish")
        added = timeline["producer"].batches()
        _wait_drained(redis_group, args.drain_timeout)
        status = worker.stop()
        verified = subprocess.run(
            [str(KPI_EXPORT), "audit", "verify"], env=env, capture_output=True, text=True, check=False
        )
        result = ledger.account(_jobs(redis_group, added), *_rows(databases), timeline["faults"])
        result.seal_chain_verifies = verified.returncode == 0
        summary = {
            "minutes": args.minutes,
            "rate": args.rate,
            "faults": [vars(fault) for fault in timeline["faults"]],
            "rss_mb": timeline["rss"],
            "worker_starts": worker.starts,
            "worker_exit_status": status,
            "worker_errors": _errors(folder),
            "producer_connections_remade": timeline["producer"].remade(),
            "ledger": result.to_json(),
        }
        (out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
        report.write(summary, _throughput(redis_group, added), out, picture=args.picture)
        say(f"ledger {'whole' if result.whole else 'NOT whole'}: {out / 'soak.md'}")
        return 0 if result.whole else 1
    finally:
        if producer is not None and producer.process.poll() is None:
            producer.process.kill()
        if worker is not None and worker.process is not None and worker.process.poll() is None:
            worker.stop()
        if databases is not None:
            databases.close()
        redis_group.close()


def _soak(plant: faults.Plant, producer: Producer, args: argparse.Namespace) -> dict[str, Any]:
    rss: list[tuple[float, float]] = []
    started = time.time()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_EVERY):
            rss.append((round(time.time() - started, 1), round(plant.worker.rss_mb(), 1)))

    threading.Thread(target=sample, daemon=True).start()
    struck: list[ledger.Fault] = []
    rotation = faults.rotation()
    end = started + args.minutes * 60
    next_fault = started + args.fault_every
    while next_fault < end:
        time.sleep(max(0.0, next_fault - time.time()))  # pacing the rotation
        fault = next(rotation)
        begun = time.time()
        say(f"{begun - started:7.1f} s  {faults.name(fault)}")
        fault(plant)
        struck.append(ledger.Fault(faults.name(fault), int(begun * 1000), int(time.time() * 1000)))
        next_fault = max(next_fault + args.fault_every, time.time() + 1)
    time.sleep(max(0.0, end - time.time()))
    producer.stop()
    done.set()
    return {"producer": producer, "faults": struck, "rss": rss}


def _worker_env(redis_group: SentinelGroup, databases: Databases, args: argparse.Namespace) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUEUE_", "DATABASE_", "AUDIT_"))
    }
    env.update(
        REDIS_SENTINELS=",".join(sentinel.address for sentinel in redis_group.sentinels),
        REDIS_SENTINEL_MASTER=redis_group.name,
        QUEUE_NAME=QUEUE,
        DATABASE_URL=databases.url,
        WORKER_PROCESSES=str(args.processes),
        WORKER_CONCURRENCY=str(args.concurrency),
        AUDIT_SEAL_KEY=secrets.token_hex(32),
        AUDIT_SEAL_INTERVAL="10",
        AUDIT_SEAL_MIN_AGE="5",
        PYTHONUNBUFFERED="1",
    )
    return env


def _listening(folder: Path, processes: int) -> bool:
    text = (folder / "worker.out").read_text(errors="replace")
    return text.count("Worker escuchando") >= processes


def _master(redis_group: SentinelGroup) -> redis.Redis:
    return redis_group.master_client()


def _ids(added: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
    return [
        (n, batch["kind"], batch["at"])
        for batch in added
        for n in range(batch["first"], batch["first"] + batch["count"])
    ]


def _wait_drained(redis_group: SentinelGroup, timeout: float) -> None:
    def drained() -> bool:
        key = f"bull:{QUEUE}"
        with _master(redis_group) as client:
            pipe = client.pipeline(transaction=False)
            pipe.llen(f"{key}:wait").llen(f"{key}:active").zcard(f"{key}:delayed").zcard(f"{key}:prioritized")
            return sum(int(count) for count in pipe.execute()) == 0

    try:
        wait_for(drained, timeout, "every job to finish")
    except RuntimeError as exc:
        say(f"{exc}: the ledger names what is left")


def _jobs(redis_group: SentinelGroup, added: list[dict[str, Any]]) -> list[ledger.Job]:
    jobs: list[ledger.Job] = []
    numbers = _ids(added)
    fields = ("data", "timestamp", "finishedOn", "returnvalue", "failedReason")
    with _master(redis_group) as client:
        for page in range(0, len(numbers), PAGE):
            chunk = numbers[page : page + PAGE]
            pipe = client.pipeline(transaction=False)
            for n, _kind, _at in chunk:
                pipe.hmget(f"bull:{QUEUE}:s-{n}", fields)
            for (n, kind, at), values in zip(chunk, pipe.execute(), strict=True):
                found = {name: value for name, value in zip(fields, values, strict=True) if value is not None}
                jobs.append(ledger.Job(f"s-{n}", n, kind, is_valid(n), at, found or None))
    return jobs


def _rows(databases: Databases) -> tuple[dict[int, ledger.Row], Counter[str]]:
    found = databases.rows(
        'SELECT "idExport", "idempotencyKey", "usuarioId", "format", "filters" FROM kpi_auditoria_export'
    )
    rows = {
        r["idExport"]: ledger.Row(
            r["idExport"], r["idempotencyKey"], r["usuarioId"], r["format"], json.loads(r["filters"])
        )
        for r in found
    }
    return rows, Counter(r["idempotencyKey"] for r in found)


def _throughput(redis_group: SentinelGroup, added: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(added, finished) ms of every finished job, for the picture."""
    numbers = _ids(added)
    times: list[tuple[int, int]] = []
    with _master(redis_group) as client:
        for page in range(0, len(numbers), PAGE):
            pipe = client.pipeline(transaction=False)
            for n, _kind, _at in numbers[page : page + PAGE]:
                pipe.hmget(f"bull:{QUEUE}:s-{n}", ("timestamp", "finishedOn"))
            times += [(int(a), int(f)) for a, f in pipe.execute() if a is not None and f is not None]
    return times


def _errors(folder: Path) -> list[str]:
    """The worker's tracebacks and ERROR lines other than the invalid jobs' `Job N failed: …`."""
    lines = (folder / "worker.err").read_text(errors="replace").splitlines()
    return [line for line in lines if ("Traceback" in line or "ERROR" in line) and " failed: " not in line][
        :50
    ]


def say(text: str) -> None:
    print(f"[soak] {text}", flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "60")))
    parser.add_argument("--rate", type=int, default=int(os.environ.get("SOAK_RATE", "300")), help="jobs/s")
    parser.add_argument("--burst", type=int, default=20000, help="jobs added at once, every --burst-every s")
    parser.add_argument("--burst-every", type=float, default=600)
    parser.add_argument("--fault-every", type=float, default=30)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--out", default="docs/soak", help="where soak.md, soak.json and soak.png go")
    parser.add_argument("--no-picture", dest="picture", action="store_false")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
