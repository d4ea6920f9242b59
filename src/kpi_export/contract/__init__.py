"""The job contract, pure: `job.data` to an `AuditEntry`, and the key that makes a job give one row.

Nothing here does I/O or knows of bullmq; the bullmq adapter maps `InvalidJobData` to bullmq's
"never retry" at its boundary.
"""

from kpi_export.contract.fields import (
    DEFAULT_FORMAT,
    FILTERS_MAX_BYTES,
    FILTERS_MAX_DEPTH,
    FORMAT_MAX_LENGTH,
    USUARIO_ID_ERROR,
    USUARIO_ID_MAX,
    JsonContainer,
    parse_filters,
    parse_format,
    parse_ip,
    parse_usuario_id,
)
from kpi_export.contract.idempotency import idempotency_key
from kpi_export.contract.job_data import (
    JOB_DATA_MAX_BYTES,
    AuditEntry,
    check_job_data_text,
    decode_job_data,
    parse_job_data,
)

__all__ = [
    "DEFAULT_FORMAT",
    "FILTERS_MAX_BYTES",
    "FILTERS_MAX_DEPTH",
    "FORMAT_MAX_LENGTH",
    "JOB_DATA_MAX_BYTES",
    "USUARIO_ID_ERROR",
    "USUARIO_ID_MAX",
    "AuditEntry",
    "JsonContainer",
    "check_job_data_text",
    "decode_job_data",
    "idempotency_key",
    "parse_filters",
    "parse_format",
    "parse_ip",
    "parse_job_data",
    "parse_usuario_id",
]
