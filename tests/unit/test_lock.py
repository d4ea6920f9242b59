"""The lock files in requirements/ are what gets installed: they hold every dependency pyproject.toml
declares, at versions its ranges allow, with hashes; the Dockerfile and make install from them; and this
environment is the locked one (except under `make test-latest`, which upgrades bullmq and redis on purpose)."""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"runtime": [], "dev": ["dev", "demo"], "bench": ["dev", "demo", "bench"]}
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", re.MULTILINE)


def locked(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    return {canonicalize_name(package): pinned for package, pinned in _PIN.findall(text)}


def declared(extras: list[str]) -> list[Requirement]:
    found = [Requirement(text) for text in PYPROJECT["dependencies"]]
    for extra in extras:
        found += [Requirement(text) for text in PYPROJECT["optional-dependencies"][extra]]
    return [req for req in found if canonicalize_name(req.name) != "kpi-export-worker"]


@pytest.mark.parametrize("lock", LOCKS)
def test_each_declared_dependency_is_locked_at_a_version_its_range_allows(lock: str) -> None:
    pins = locked(lock)
    for requirement in declared(LOCKS[lock]):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not in requirements/{lock}.txt: run make lock"
        assert requirement.specifier.contains(pinned), (
            f"{requirement.name}=={pinned} is outside {requirement}"
        )


def test_the_build_backend_is_locked_at_a_version_the_build_system_allows() -> None:
    """requirements/build.txt: what the image builds the package with, as [build-system] requires it."""
    pins = locked("build")
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    for requirement in map(Requirement, build_system["requires"]):
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None and requirement.specifier.contains(pinned), (requirement, pinned)


@pytest.mark.parametrize("lock", [*LOCKS, "build"])
def test_every_pin_has_hashes(lock: str) -> None:
    text = (ROOT / "requirements" / f"{lock}.txt").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.split("\n", 2)[2]):
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_image_and_make_install_from_the_locks() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "install --require-hashes -r requirements/runtime.txt" in dockerfile
    assert "install --require-hashes -r requirements/build.txt" in dockerfile  # the build backend too
    assert "install --no-deps /tmp/dist/*.whl" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r $(2)" in makefile
    assert "$(call install_locked,$(VENV),requirements/dev.txt)" in makefile


@pytest.mark.skipif(os.environ.get("KPI_TEST_LATEST") == "1", reason="make test-latest upgrades on purpose")
def test_this_environment_has_the_locked_versions() -> None:
    for package, pinned in locked("dev").items():
        try:
            installed = version(package)
        except (
            PackageNotFoundError
        ):  # a platform-only package (colorama on Windows) is locked, not installed here
            continue
        assert installed == pinned, f"{package} {installed} is installed, {pinned} is locked: run make test"
