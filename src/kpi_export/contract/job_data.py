"""The job contract: `job.data` in, one validated `AuditEntry` out.

Pure functions only (no I/O, no clock, no logging), so that every rule is a row of a unit table (the field
rules are in fields.py). Problems that do not fail the job come back as `AuditEntry.warnings` for the caller
to log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kpi_export.contract.fields import (
    JsonContainer,
    parse_filters,
    parse_format,
    parse_ip,
    parse_usuario_id,
)
from kpi_export.errors import InvalidJobData

# job.data's JSON text as stored in Redis. Every field the contract reads is far smaller; the rest is ignored,
# so a larger text is refused before it is decoded rather than parsed into memory.
JOB_DATA_MAX_BYTES = 1024 * 1024
# Text read from Redis with the `surrogateescape` error handler holds a lone surrogate exactly where the stored
# bytes were not UTF-8; JSON escapes such as \udc80 are not affected (they are decoded later, by json).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row's values, normalised."""

    usuario_id: int
    ip: str | None
    filters: JsonContainer
    format: str
    warnings: tuple[str, ...] = field(default=(), compare=False)


def check_job_data_text(text: str) -> None:
    """The limits on job.data's JSON text, checked before it is decoded. Raises InvalidJobData."""
    # A character is at most 4 bytes: the encoding (a copy of the text) is needed only near the limit.
    if len(text) * 4 > JOB_DATA_MAX_BYTES and len(text.encode("utf-8", "surrogatepass")) > JOB_DATA_MAX_BYTES:
        raise InvalidJobData("data", f"job.data inválido: ocupa más de {JOB_DATA_MAX_BYTES} bytes")
    if _LONE_SURROGATE.search(text):
        raise InvalidJobData("data", "job.data inválido: no es texto UTF-8 válido")


def decode_job_data(text: str) -> object:
    """job.data's JSON text, as stored in Redis, to its value. Raises InvalidJobData."""
    check_job_data_text(text)
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidJobData("data", "job.data inválido: anidado a demasiados niveles para leerlo") from None
    except json.JSONDecodeError:
        raise InvalidJobData("data", "job.data inválido: no es JSON") from None
    except ValueError:  # an integer of more digits than int() converts
        raise InvalidJobData("data", "job.data inválido: contiene un número demasiado largo") from None


def parse_job_data(data: object) -> AuditEntry:
    """Validate and normalise one job's data. Raises InvalidJobData."""
    if not isinstance(data, Mapping):
        raise InvalidJobData("data", "job.data inválido: se esperaba un objeto JSON")
    warnings: list[str] = []
    usuario_id = parse_usuario_id(data.get("usuarioId"))
    ip, ip_warning = parse_ip(data.get("ip"), present="ip" in data)
    filters, filters_warning = parse_filters(data.get("filters"))
    fmt = parse_format(data.get("format"))
    warnings.extend(w for w in (ip_warning, filters_warning) if w)
    return AuditEntry(usuario_id, ip, filters, fmt, tuple(warnings))
