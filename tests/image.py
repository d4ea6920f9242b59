"""The worker's image for the tests: deploy/Dockerfile built with podman (as root, runc), on the base image it
names, which is made here from Debian 12 by debootstrap when no registry has it (none answers on these
machines). The base is kept in podman's storage and the build's layers are cached, so only the first run on a
machine pays for them."""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.services import require_tool, unavailable

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEBIAN_MIRROR = os.environ.get("KPI_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a stand-in base holds of python:3.11-slim-bookworm: Debian 12's Python 3.11, venv, CA certificates.
BASE_PACKAGES = "python3,python3-venv,ca-certificates"


@functools.cache
def podman() -> str:
    """podman, able to run containers here: as root (rootless podman needs subordinate ids and more)."""
    binary = require_tool("podman", "podman")
    problem = None
    if os.geteuid() != 0:
        problem = "the image tests run podman as root"
    elif (info := run(binary, "info", check=False)).returncode != 0:
        problem = f"podman cannot run here: {info.stderr.strip()[-300:]}"
    if problem is not None:
        unavailable(problem)
    return binary


def limits() -> list[str]:
    """runc sets every process limit explicitly (crun refuses this VM's cgroups), within the host's."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} … exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def base_image() -> str:
    """The image the Dockerfile builds FROM (its PYTHON_IMAGE argument), as podman names it."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found, "deploy/Dockerfile names no PYTHON_IMAGE"
    name = found.group(1)
    return name if "/" in name.split(":")[0] else f"docker.io/library/{name}"


def ensure_base(name: str) -> None:
    """The base from podman's storage, else from its registry, else made from Debian 12."""
    if run(podman(), "image", "exists", name, check=False).returncode == 0:
        return
    if run(podman(), "pull", "--quiet", name, timeout=300, check=False).returncode == 0:
        return
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        unavailable(
            f"no registry has {name}, and debootstrap (Debian's debootstrap) is not installed to make it"
        )
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        rootfs = Path(folder) / "rootfs"
        run(
            debootstrap,
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
            timeout=900,
        )
        for path in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / path, ignore_errors=True)
        for name_in_base in ("python", "python3"):  # where the official image has them
            (rootfs / "usr/local/bin" / name_in_base).symlink_to("/usr/bin/python3")
        # pip inside a build reaches PyPI through this machine's TLS-intercepting proxy: its CAs, from the host.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        changes = [
            "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "LABEL org.kpi-export.stand-in=debootstrap",
            'CMD ["python3"]',
        ]
        imported = subprocess.run(
            [podman(), "import", *(arg for change in changes for arg in ("--change", change)), "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        tar.stdout.close()
        assert (tar.wait(), imported.returncode) == (0, 0), imported.stderr


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def build(tag: str) -> float:
    """Build the image as `tag` from the repository's root; returns the seconds the build took."""
    ensure_base(base_image())
    revision = run("git", "-C", str(ROOT), "rev-parse", "HEAD", check=False).stdout.strip() or "unknown"
    started = time.monotonic()
    run(
        podman(),
        "build",
        "--format",
        "docker",  # keeps the HEALTHCHECK
        "--network",
        "host",
        *limits(),
        "--file",
        str(DOCKERFILE),
        "--tag",
        tag,
        "--build-arg",
        f"VERSION={project_version()}",
        "--build-arg",
        f"REVISION={revision}",
        "--build-arg",
        "SOURCE=https://example.invalid/kpi-export-worker",
        str(ROOT),
        timeout=900,
    )
    return time.monotonic() - started


def container(tag: str, *args: str, name: str | None = None, options: Sequence[str] = ()) -> list[str]:
    """`podman run` of the image on the host's network (Redis, the databases and the health port are the
    host's), as its own unprivileged user, read-only, with no capability."""
    return [
        podman(),
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--cap-drop=ALL",
        *limits(),
        *(["--name", name] if name else []),
        *options,
        tag,
        *args,
    ]


@pytest.fixture(scope="session")
def built() -> Iterator[str]:
    """The image, built once a run and tagged for it; its build time and size are printed (pytest -s)."""
    tag = f"localhost/kpi-export-worker:test-{uuid.uuid4().hex[:8]}"
    seconds = build(tag)
    size = int(run(podman(), "image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"\n[image] {tag}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    yield tag
    run(podman(), "rmi", "--force", tag, check=False)
