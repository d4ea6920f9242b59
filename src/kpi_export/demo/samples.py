"""Realistic export jobs, as the Node web application sends them, for the demo and the benchmark.

Pure: the same seed gives the same jobs.
"""

from __future__ import annotations

import json
import random
from typing import Any

AREAS = ["ventas", "finanzas", "operaciones", "rrhh", "logistica", "marketing"]
KPIS = ["margen", "ventas", "ticket_medio", "rotacion", "nps", "churn", "cobranza", "costo_unitario"]
FORMATS = ["xlsx", "csv", "pdf", "XLSX ", " Csv"]

# Jobs the worker must refuse, each with the reason it gives.
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"usuarioId": "abc", "ip": "203.0.113.9", "format": "xlsx"}, "usuarioId inválido en job.data"),
    ({"usuarioId": -5, "format": "csv"}, "usuarioId inválido en job.data"),
    ({"usuarioId": True, "format": "csv"}, "usuarioId inválido en job.data"),
    ({"usuarioId": "0x1A"}, "usuarioId inválido en job.data"),
    ({"ip": "198.51.100.4", "format": "pdf"}, "usuarioId inválido en job.data"),
    ({"usuarioId": 7, "format": "xlsx; DROP TABLE kpi"}, "format inválido en job.data"),
]


def _ip(rng: random.Random) -> Any:
    choice = rng.randrange(8)
    v4 = (
        f"{rng.choice([10, 172, 192, 203])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )
    return [
        v4,
        v4,
        f"{v4}, 10.0.0.1",  # X-Forwarded-For
        f"::ffff:{v4}",  # Node on a dual-stack socket
        f"{v4}:{rng.randrange(1024, 65535)}",
        f"2001:db8::{rng.randrange(1, 0xFFFF):x}",
        f"[2001:db8::{rng.randrange(1, 0xFFFF):x}]:443",
        None,
    ][choice]


def _filters(rng: random.Random) -> Any:
    year = rng.choice([2025, 2026])
    quarter = rng.randrange(4)
    filters = {
        "desde": f"{year}-{quarter * 3 + 1:02d}-01",
        "hasta": f"{year}-{quarter * 3 + 3:02d}-{30 if quarter in (1, 2) else 31}",
        "area": rng.choice(AREAS),
        "kpis": rng.sample(KPIS, rng.randrange(1, 4)),
    }
    return json.dumps(filters) if rng.random() < 0.2 else filters  # some producers send a JSON string


def valid_job(rng: random.Random) -> dict[str, Any]:
    usuario = rng.randrange(1, 5000)
    data: dict[str, Any] = {
        "usuarioId": rng.choice([usuario, usuario, str(usuario), f" {usuario} ", float(usuario)]),
        "filters": _filters(rng),
        "format": rng.choice(FORMATS),
    }
    ip = _ip(rng)
    if ip is not None:
        data["ip"] = ip
    return data


def sample_jobs(count: int, *, seed: int = 7, invalid_every: int = 0) -> list[dict[str, Any]]:
    """`count` jobs; with `invalid_every=n`, every n-th job is one the worker must refuse."""
    rng = random.Random(seed)
    jobs = []
    for index in range(1, count + 1):
        if invalid_every and index % invalid_every == 0:
            jobs.append(dict(INVALID[(index // invalid_every) % len(INVALID)][0]))
        else:
            jobs.append(valid_job(rng))
    return jobs
