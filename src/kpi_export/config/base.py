"""What every settings group shares: read from the environment by pydantic-settings, each field named by its
variable (`validation_alias`) and described by its docstring, empty values ignored, finite numbers only,
frozen once read."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

# Finite numbers only: an `inf` timeout would pass here and fail later, where a supervisor restarts forever.
# A field's docstring is its description (the settings table of the documentation is made from it).
GROUP_CONFIG = SettingsConfigDict(
    env_ignore_empty=True,
    extra="ignore",
    frozen=True,
    allow_inf_nan=False,
    populate_by_name=True,
    use_attribute_docstrings=True,
)
HOUR = 3600.0
TEN_YEARS = 10 * 365 * 24 * 3600


def printable(value: str) -> bool:
    """Not empty, and no control character: a name that can be logged and used in a Redis key."""
    return bool(value.strip()) and value.isprintable()
