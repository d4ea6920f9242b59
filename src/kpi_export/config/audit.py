"""The audit trail's own settings: tamper-evident seals (off, and free, while AUDIT_SEAL_KEY is unset) and
how much of the client address a new row keeps."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from kpi_export.config.base import GROUP_CONFIG, HOUR
from kpi_export.contract.ip_privacy import IpMode
from kpi_export.integrity.digests import KEY_MIN_LENGTH, SealKey


class AuditSettings(BaseSettings):
    model_config = GROUP_CONFIG

    seal_key: SecretStr | None = Field(None, validation_alias="AUDIT_SEAL_KEY")
    """The secret (32 characters or more: `openssl rand -hex 32`) that seals the audit rows; sealing is
    off without it. Never logged, never stored in the database."""
    seal_interval: float = Field(60.0, ge=1, le=24 * HOUR, validation_alias="AUDIT_SEAL_INTERVAL")
    """Seconds between two sealing rounds (one worker of the fleet seals at a time)."""
    seal_min_age: float = Field(60.0, ge=0, le=30 * 24 * HOUR, validation_alias="AUDIT_SEAL_MIN_AGE")
    """Seconds a row must have existed before it is sealed: time for the exporting application to be
    done with it."""
    ip_mode: IpMode = Field("full", validation_alias="AUDIT_IP_MODE")
    """What a new row keeps of the client address: `full`, `truncated` (IPv4 /24, IPv6 /48) or `none`."""

    @field_validator("seal_key")
    @classmethod
    def _seal_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < KEY_MIN_LENGTH:
            raise ValueError(
                f"must be at least {KEY_MIN_LENGTH} characters of a random secret (openssl rand -hex 32)"
            )
        return value

    @field_validator("ip_mode", mode="before")
    @classmethod
    def _ip_mode_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def key(self) -> SealKey | None:
        """The sealing key, None when sealing is off."""
        if self.seal_key is None:
            return None
        # Stripped: a key read from a file with its newline must seal as the same key everywhere.
        return SealKey(self.seal_key.get_secret_value().strip())

    def secrets(self) -> list[str]:
        return [self.seal_key.get_secret_value()] if self.seal_key is not None else []
