"""The documentation site: built strictly (a broken link, a missing page or an unknown anchor fails it), with
every setting, command and metric the code has on its page, every code block that can be checked valid, and
a README that is read once and leads into it."""

from __future__ import annotations

import ast
import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from prometheus_client import generate_latest

from kpi_export.cli import cli
from kpi_export.config import VARIABLES
from kpi_export.runtime.metrics import WorkerMetrics
from tests.docs import README, ROOT, Page, code_blocks, pages

README_MAX_LINES = 150
# The README's sections before it was cut down to what is read once; each lives on a page of the site now.
FORMER_README_SECTIONS = (
    "Try it by hand",
    "Configuration",
    "The job contract",
    "Logs",
    "How it differs from the Node original",
    "Redis behind Sentinel",
    "A managed Redis whose endpoint moves (READONLY)",
    "Redis Cluster",
    "Health, readiness and metrics",
    "JSON logs",
    "Tracing",
    "Operator commands",
    "bull-board",
    "Runbook",
    "Audit integrity",
    "Redis memory",
    "Deployment files",
    "Kubernetes",
    "Migrating from the Node worker",
    "Performance",
    "The floor",
    "What tracing costs",
    "Dependencies: locked, and upgraded on purpose",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`mkdocs build --strict` into a folder of the test's; the build's output is checked for warnings."""
    folder = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice of its end of life, not ours
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING -" not in built.stderr, built.stderr
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def page_text(site: Path, name: str) -> str:
    """A built page's text, markup stripped, entities decoded."""
    markup = (site / name / "index.html").read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def test_every_setting_is_on_the_configuration_page(site: Path) -> None:
    text = page_text(site, "configuration")
    missing = [variable for variable in VARIABLES if variable not in text]
    assert not missing, missing


def commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def test_every_command_and_option_is_in_the_cli_reference(site: Path) -> None:
    text = page_text(site, "cli")
    found = list(commands(cli, "kpi-export"))
    assert len(found) > 15
    for path, command in found:
        assert path in text, path
        for parameter in command.params:
            for option in getattr(parameter, "opts", []):
                if not getattr(parameter, "hidden", False) and option.startswith("--"):
                    assert option in text, (path, option)


def test_every_metric_is_on_the_metrics_page(site: Path) -> None:
    metrics = WorkerMetrics("kpi-export-queue")
    metrics.watch_seals()
    exposed = re.findall(
        r"^# TYPE (kpi_export_\w+) (\w+)$", generate_latest(metrics.registry).decode(), re.MULTILINE
    )
    assert len(exposed) > 10
    text = page_text(site, "operating/metrics")
    for family, kind in exposed:
        shown = family + {"counter": "_total", "info": "_info"}.get(kind, "")
        assert shown.replace("_total_total", "_total") in text, family


def test_every_page_is_in_the_navigation_and_every_former_readme_section_on_a_page() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = set(re.findall(r"([\w/-]+\.md)", json.dumps(nav)))
    on_disk = {str(page.path.relative_to(ROOT / "docs")) for page in pages()}
    assert listed == on_disk, listed ^ on_disk
    titles = {heading.lstrip("#").strip() for page in pages() for heading in page.headings()}
    assert not [section for section in FORMER_README_SECTIONS if section not in titles]


def test_the_readme_is_read_once_and_leads_into_the_site() -> None:
    readme = Page(README)
    assert len(readme.text.splitlines()) <= README_MAX_LINES
    targets = [target for target in re.findall(r"\]\(([^)\s]+)\)", readme.text) if "://" not in target]
    assert any(target.startswith("docs/") for target in targets)
    for target in targets:
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in readme.anchors(), target
            continue
        assert (ROOT / path).exists(), target
        if anchor and path.startswith("docs/") and path.endswith(".md"):
            assert anchor in Page(ROOT / path).anchors(), target


def every_block(language: str) -> list[tuple[str, str]]:
    found = []
    for page in [Page(README), *pages()]:
        found += [(str(page.path.relative_to(ROOT)), block) for block in code_blocks(page.text, language)]
    return found


@pytest.mark.parametrize("language", ["sh", "bash", "shell"])
def test_every_shell_block_is_valid_shell(language: str) -> None:
    for where, block in every_block(language):
        checked = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{where}: {checked.stderr}\n{block}"


def test_every_python_block_parses() -> None:
    for where, block in every_block("python"):
        try:
            ast.parse(block)
        except SyntaxError as exc:
            raise AssertionError(f"{where}: {exc}\n{block}") from None


def test_every_yaml_block_loads() -> None:
    for where, block in every_block("yaml"):
        try:
            list(yaml.safe_load_all(block))
        except yaml.YAMLError as exc:
            raise AssertionError(f"{where}: {exc}\n{block}") from None
