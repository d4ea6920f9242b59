"""The interop suite needs Node.js and the npm packages of this folder (`npm ci`, which `make test` runs).

Missing, they are a skip on a laptop (with the reason) and a failure under CI (CI=true).
"""

from __future__ import annotations

import shutil

import pytest

from tests.interop.node import NODE_DIR
from tests.services import unavailable


@pytest.fixture(autouse=True, scope="session")
def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        problem = "Node.js (node) is not installed"
    elif not (NODE_DIR / "node_modules" / "bullmq" / "package.json").is_file():
        problem = "tests/interop/node_modules is missing: `make test` installs it (npm ci)"
    else:
        return binary
    unavailable(problem, in_ci=f"{problem}, and CI needs it for the interop suite")
