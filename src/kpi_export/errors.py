"""The exceptions of kpi_export, split by whether a retry can help.

    KpiExportError
     ├── ConfigError          bad settings: the program stops at start with exit status 2
     ├── StartupError         the worker cannot run (exit status 1): credentials refused, …
     │    ├── SchemaNotReady  the audit table is missing or behind: run `kpi-export db upgrade`
     │    └── DatabaseMissing no SQLite file where DATABASE_URL says: the worker and the commands that only
     │                        read create none
     ├── MigrationLockTimeout another `db upgrade` held the migration lock too long
     ├── SealingError         the seal chain cannot be extended or read: another key, a newer format
     │    └── SealFormatTooNew
     ├── InvalidJobData       permanent: the job fails and is never retried (the bullmq adapter tells bullmq)
     └── AuditWriteError      the database refused the row; the producer's attempts/backoff apply
          └── TransientDatabaseError   connection lost, failover, deadlock: retried inside the job first

Messages never hold a secret: they are logged and stored in Redis as the job's `failedReason`.
"""

from __future__ import annotations


class KpiExportError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(KpiExportError):
    """A setting is invalid; `variable` names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"invalid {variable}: {problem}")
        self.variable = variable
        self.problem = problem


class StartupError(KpiExportError):
    """A service refuses the worker for a reason that waiting will not cure."""


class SchemaNotReady(StartupError):
    """The database lacks the audit table, or its migrations are not at head."""


class DatabaseMissing(StartupError):
    """The SQLite file DATABASE_URL names does not exist, and the worker or command must not create it."""


class MigrationLockTimeout(KpiExportError):
    """`kpi-export db upgrade` waited too long for another one, migrating the same database, to finish."""


class SealingError(KpiExportError):
    """The seal chain cannot be extended or read by this worker with this key."""


class SealFormatTooNew(SealingError):
    """The seal table holds seals of a format newer than this worker's."""


class InvalidJobData(KpiExportError):
    """`job.data` breaks the job contract: the job fails and is never retried."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class AuditWriteError(KpiExportError):
    """The audit row could not be written."""


class TransientDatabaseError(AuditWriteError):
    """A database fault that a retry can cure."""
