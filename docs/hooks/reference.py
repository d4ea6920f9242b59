"""MkDocs hook: the parts of the site that the code already knows, generated at build time from it.

A page holds a marker on a line of its own, replaced by its table:
    <!-- settings -->   every setting: its variable, default, bounds and description (kpi_export.config)
    <!-- metrics -->    every metric /metrics serves: name, type, labels, help (kpi_export.runtime.metrics)
    <!-- modules -->    every module of the package, with the first sentence of its docstring
The CLI reference is mkdocs-click's (`::: mkdocs-click`), from the click commands themselves.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

import kpi_export
from kpi_export.config import Settings
from kpi_export.runtime.metrics import WorkerMetrics

MARKER = re.compile(r"^<!-- (settings|metrics|modules) -->$", re.MULTILINE)
PACKAGE = Path(kpi_export.__file__).parent


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda found: TABLES[found.group(1)](), markdown)


def settings_table() -> str:
    """One table per group of settings, in the order Settings composes them."""
    parts = []
    for group, info in Settings.model_fields.items():
        model = info.annotation
        assert model is not None
        parts += [
            f"## {group.capitalize()}\n",
            "| variable | default | accepted | description |",
            "|---|---|---|---|",
        ]
        for field in model.model_fields.values():
            variable = field.validation_alias
            row = (f"`{variable}`", _default(field), _accepted(field), _cell(field.description or ""))
            parts.append("| " + " | ".join(row) + " |")
        parts.append("")
    return "\n".join(parts)


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == ():
        return "unset"
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "`1`" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _accepted(field: Any) -> str:
    """What the field's type and bounds allow, as a reader would write it."""
    bounds = {
        type(item).__name__: getattr(item, type(item).__name__.lower())
        for item in field.metadata
        if type(item).__name__ in ("Ge", "Gt", "Le", "Lt")
    }
    annotation = str(field.annotation)
    choices = re.findall(r"'([^']+)'", annotation) if "Literal" in annotation else []
    if choices:
        return ", ".join(f"`{choice}`" for choice in choices)
    low = bounds.get("Ge", bounds.get("Gt"))
    high = bounds.get("Le", bounds.get("Lt"))
    if low is not None and high is not None:
        unit = "seconds, " if "float" in annotation else ""
        return f"{unit}{'> ' if 'Gt' in bounds else ''}{_number(low)} … {_number(high)}"
    if "bool" in annotation:
        return "`1`, `true`, `0`, `false`"
    if "tuple" in annotation:
        return "`host:port`, comma-separated"
    if "SecretStr" in annotation:
        return "text, kept secret"
    return "text"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else str(value)


def metrics_table() -> str:
    """The worker's own metrics (those of the sealer too, which exist with AUDIT_SEAL_KEY set)."""
    metrics = WorkerMetrics("kpi-export-queue")
    metrics.watch_seals()
    rows = ["| metric | type | labels | description |", "|---|---|---|---|"]
    # The registry's collectors are the metrics themselves, whose labels are known before any sample exists.
    for metric in list(metrics.registry._collector_to_names):
        if not isinstance(metric, MetricWrapperBase):
            continue  # the process and platform collectors' standard series
        # A family's samples name its labels only once it has values: the metric's own names them always.
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        name = metric._name + SUFFIXES.get(str(metric._type), "")
        rows.append(f"| `{name}` | {metric._type} | {labels} | {_cell(metric._documentation)} |")
    return "\n".join(rows) + "\n"


# The sample names Prometheus shows for a counter and an info metric.
SUFFIXES = {"counter": "_total", "info": "_info"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def modules_table() -> str:
    """One table per package (the top level first), a row per module, in the order of the files."""
    parts = []
    folders = sorted({path.parent for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts})
    for folder in folders:
        name = "kpi_export" if folder == PACKAGE else f"{folder.relative_to(PACKAGE)}/"
        parts += [f"### `{name}`\n", "| module | what it is |", "|---|---|"]
        for path in sorted(folder.glob("*.py")):
            if path.name != "__main__.py":
                parts.append(f"| `{path.name}` | {_cell(_summary(path))} |")
        parts.append("")
    return "\n".join(parts)


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    found = re.match(r"(.+?[.:;])(\s|$)", paragraph)
    return (found.group(1) if found else paragraph).rstrip(".:;")


TABLES = {"settings": settings_table, "metrics": metrics_table, "modules": modules_table}
